"""What ``/metrics`` tells Prometheus: requests, latency, time to first token, tokens, cache
and batching.

Each app has its own registry, so several apps (tests) never share counters.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from gemma_chat.application.inference import InferenceService

__all__ = ["ServerMetrics", "install_metrics"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _ServiceCollector(Collector):
    """Figures the service already keeps, read at scrape time."""

    def __init__(self, service: InferenceService) -> None:
        self._service = service

    def collect(self) -> Iterator[Any]:
        stats = self._service.statistics()
        tokens = CounterMetricFamily("gemma_tokens_generated", "Completion tokens generated")
        tokens.add_metric([], stats["total_completion_tokens"])
        yield tokens
        hits = CounterMetricFamily("gemma_cache_hits", "Answers served from the response cache")
        hits.add_metric([], stats["cache_hits"])
        yield hits
        llm = self._service.llm
        scheduler: dict[str, Any] = {}
        if llm.is_loaded:
            scheduler = llm.get_model_info().get("scheduler", {})
        queue = GaugeMetricFamily("gemma_queue_depth", "Requests waiting for a batch slot")
        queue.add_metric([], scheduler.get("queued", 0))
        yield queue
        active = GaugeMetricFamily("gemma_active_batch_size", "Requests decoding together")
        active.add_metric([], scheduler.get("active", 0))
        yield active


class ServerMetrics:
    def __init__(self, service: InferenceService) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gemma_requests", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "gemma_request_seconds",
            "HTTP request latency (streams: until the response starts)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "gemma_time_to_first_token_seconds",
            "Streamed requests: time until the first text",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_ServiceCollector(service))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def install_metrics(app: FastAPI, metrics: ServerMetrics) -> None:
    """Count and time every request by its route (``/metrics`` serves them: routers/health.py)."""

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response
