"""``/docs``: Swagger UI from the fastapi-offline package's copy of its files, served here, so
the API's documentation works without internet (FastAPI's own page loads them from a CDN).
No ``/redoc``: ReDoc's page still loads its logo from ReDoc's CDN."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS", "attach_router", "router"]

ASSETS = "/docs/assets"

router = APIRouter(include_in_schema=False)


def attach_router(app: FastAPI) -> None:
    directory = str(files("fastapi_offline") / "static")
    app.mount(ASSETS, StaticFiles(directory=directory), name="api-docs-assets")
    app.include_router(router)


def _root(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - API",
        swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
        # The key given to "Authorize" survives a reload of the page.
        swagger_ui_parameters={"persistAuthorization": True},
    )
