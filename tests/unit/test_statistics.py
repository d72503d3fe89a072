"""The service's counters and the snapshot it reports."""

from __future__ import annotations

import pytest

from gemma_chat.application.inference.statistics import ServiceStatistics


def test_a_fresh_snapshot_is_all_zeros_without_dividing_by_zero() -> None:
    assert ServiceStatistics().snapshot(cache_size=0) == {
        "request_count": 0,
        "error_count": 0,
        "rejected_count": 0,
        "cancelled_count": 0,
        "avg_request_time": 0.0,
        "cache_hits": 0,
        "cache_hit_rate": 0.0,
        "cache_size": 0,
        "total_completion_tokens": 0,
        "tokens_per_second": 0.0,
    }


def test_successes_give_the_average_time_and_the_throughput() -> None:
    stats = ServiceStatistics()
    stats.record_success(2.0, 40, cached=False)
    stats.record_success(1.0, 20, cached=False)
    snapshot = stats.snapshot(cache_size=5)
    assert snapshot["request_count"] == 2
    assert snapshot["avg_request_time"] == pytest.approx(1.5)
    assert snapshot["total_completion_tokens"] == 60
    assert snapshot["tokens_per_second"] == pytest.approx(20.0)
    assert snapshot["cache_size"] == 5


def test_cache_hits_count_as_requests_but_not_as_generation() -> None:
    stats = ServiceStatistics()
    stats.record_success(4.0, 100, cached=False)
    stats.record_success(0.001, 100, cached=True)
    snapshot = stats.snapshot(cache_size=1)
    assert snapshot["request_count"] == 2
    assert snapshot["cache_hits"] == 1
    assert snapshot["cache_hit_rate"] == pytest.approx(0.5)
    assert snapshot["total_completion_tokens"] == 100
    assert snapshot["tokens_per_second"] == pytest.approx(25.0)
    assert snapshot["avg_request_time"] == pytest.approx(4.001 / 2)


def test_only_cache_hits_give_no_throughput() -> None:
    stats = ServiceStatistics()
    stats.record_success(0.01, 10, cached=True)
    assert stats.snapshot(cache_size=1)["tokens_per_second"] == 0.0


def test_errors_and_cancellations_are_counted_apart_from_requests() -> None:
    stats = ServiceStatistics()
    stats.record_error()
    stats.record_error()
    stats.record_cancelled()
    snapshot = stats.snapshot(cache_size=0)
    assert (snapshot["request_count"], snapshot["error_count"]) == (0, 2)
    assert snapshot["cancelled_count"] == 1


def test_the_recent_error_rate_is_zero_with_no_outcome() -> None:
    assert ServiceStatistics().recent_error_rate == 0.0


def test_the_recent_error_rate_is_the_share_of_failures() -> None:
    stats = ServiceStatistics()
    stats.record_success(1.0, 1, cached=False)
    stats.record_error()
    stats.record_success(1.0, 1, cached=True)
    stats.record_error()
    assert stats.recent_error_rate == pytest.approx(0.5)


def test_cancellations_do_not_change_the_error_rate() -> None:
    stats = ServiceStatistics()
    stats.record_error()
    stats.record_cancelled()
    assert stats.recent_error_rate == 1.0


def test_the_error_rate_only_looks_at_the_last_twenty_outcomes() -> None:
    stats = ServiceStatistics()
    for _ in range(30):
        stats.record_error()
    for _ in range(15):
        stats.record_success(0.1, 1, cached=False)
    assert stats.recent_error_rate == pytest.approx(5 / 20)
    for _ in range(5):
        stats.record_success(0.1, 1, cached=False)
    assert stats.recent_error_rate == 0.0
    assert stats.error_count == 30  # the totals keep everything


def test_each_statistics_object_has_its_own_history() -> None:
    first, second = ServiceStatistics(), ServiceStatistics()
    first.record_error()
    assert second.recent_error_rate == 0.0


def test_a_clients_mistake_is_counted_apart_and_does_not_degrade_health() -> None:
    stats = ServiceStatistics()
    for _ in range(5):
        stats.record_error(client_error=True)
    assert stats.snapshot(cache_size=0)["rejected_count"] == 5
    assert stats.error_count == 0
    assert stats.recent_error_rate == 0.0
