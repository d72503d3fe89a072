"""``/health`` (open, without the API key: for load balancers) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from gemma_chat.server.dependencies import state_of
from gemma_chat.server.protocol import HealthReport

__all__ = ["attach_router", "router"]

router = APIRouter(tags=["Health"])


def attach_router(app: FastAPI) -> None:
    app.include_router(router)


@router.get(
    "/health",
    response_model=None,
    responses={
        200: {"model": HealthReport, "description": "Healthy or degraded."},
        503: {"model": HealthReport, "description": "Loading, or unhealthy."},
    },
)
async def health(request: Request) -> JSONResponse:
    current = state_of(request)
    if current.loading is None or not current.loading.done():
        return JSONResponse({"status": "loading"}, status_code=503)
    if not current.ready:
        return JSONResponse({"status": "unhealthy", "error": "the model failed to load"}, 503)
    # The service's report as it is (its keys vary: backend_error only when there is one).
    report = await current.service.health_check()
    return JSONResponse(report, status_code=200 if report["status"] != "unhealthy" else 503)


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
