"""The service's health report: is the model serving, does its backend answer, do requests
fail."""

from __future__ import annotations

from gemma_chat.application.inference.statistics import ServiceStatistics
from gemma_chat.domain.errors import GemmaChatError
from gemma_chat.domain.interfaces import HealthCheckProtocol, LLMProtocol

__all__ = ["health_status", "probe"]


def health_status(serving: bool, backend_error: str | None, stats: ServiceStatistics) -> str:
    """Unhealthy when the model is not serving (or its backend does not answer), degraded when
    at least half of the recent requests failed, healthy otherwise."""
    if not serving or backend_error is not None:
        return "unhealthy"
    if len(stats.recent_failures) >= 2 and stats.recent_error_rate >= 0.5:
        return "degraded"
    return "healthy"


async def probe(llm: LLMProtocol) -> str | None:
    """What is wrong with the model's backend, if it can tell (``HealthCheckProtocol``)."""
    if not isinstance(llm, HealthCheckProtocol):
        return None
    try:
        await llm.check_health()
    except GemmaChatError as exc:
        return str(exc)
    return None
