"""What ``/metrics`` tells Prometheus: requests, latency, time to first token, tokens, cache
and batching.

Each app has its own registry, so several apps (tests) never share counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
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
        cancelled = CounterMetricFamily(
            "gemma_requests_cancelled",
            "Generations stopped before their end (the client disconnected, streamed or not)",
        )
        cancelled.add_metric([], stats["cancelled_count"])
        yield cancelled
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
    app.add_middleware(_RequestMetrics, metrics=metrics)


class _RequestMetrics:
    """Pure ASGI, not ``@app.middleware``: Starlette's BaseHTTPMiddleware wraps ``receive`` so
    that an endpoint waiting for the client's disconnect never hears of it."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an app that raised without answering

        async def observed(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
