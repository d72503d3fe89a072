"""Counters of the service: requests, errors, latency, cache hits and throughput."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ServiceStatistics"]

_RECENT = 20  # outcomes that decide whether the service is degraded


@dataclass
class ServiceStatistics:
    request_count: int = 0
    error_count: int = 0
    rejected_count: int = 0  # requests refused for their input
    cancelled_count: int = 0
    cache_hits: int = 0
    total_request_time: float = 0.0
    completion_tokens: int = 0
    generation_time: float = 0.0  # time spent generating tokens (cache hits excluded)
    recent_failures: deque[bool] = field(default_factory=lambda: deque(maxlen=_RECENT))

    def record_success(self, seconds: float, completion_tokens: int, *, cached: bool) -> None:
        self.request_count += 1
        self.total_request_time += seconds
        self.recent_failures.append(False)
        if cached:
            self.cache_hits += 1
        else:
            self.completion_tokens += completion_tokens
            self.generation_time += seconds

    def record_error(self, *, client_error: bool = False) -> None:
        """A failed request; a client's mistake (bad input) says nothing of the service's health."""
        if client_error:
            self.rejected_count += 1
            return
        self.error_count += 1
        self.recent_failures.append(True)

    def record_cancelled(self) -> None:
        self.cancelled_count += 1

    @property
    def recent_error_rate(self) -> float:
        if not self.recent_failures:
            return 0.0
        return sum(self.recent_failures) / len(self.recent_failures)

    def snapshot(self, cache_size: int) -> dict[str, Any]:
        requests = self.request_count
        return {
            "request_count": requests,
            "error_count": self.error_count,
            "rejected_count": self.rejected_count,
            "cancelled_count": self.cancelled_count,
            "avg_request_time": self.total_request_time / requests if requests else 0.0,
            "cache_hits": self.cache_hits,
            "cache_hit_rate": self.cache_hits / requests if requests else 0.0,
            "cache_size": cache_size,
            "total_completion_tokens": self.completion_tokens,
            "tokens_per_second": (
                self.completion_tokens / self.generation_time if self.generation_time else 0.0
            ),
        }
