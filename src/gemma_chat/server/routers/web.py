"""``/``: the chat page, plain HTML, CSS and JavaScript from the package (server/static), no
build step and nothing from another origin. It uses the sessions API like any other client.
``GEMMA_SERVER__WEB_UI=false`` leaves it out."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from gemma_chat.server.dependencies import ServerState

__all__ = ["PAGE_HEADERS", "STATIC", "attach_router", "router"]

STATIC = Path(__file__).resolve().parent.parent / "static"

# The page (a document: where these headers count) runs only its own files: no inline script,
# no other origin, never in a frame. The model's text is put into the page as text anyway;
# this is the second line of defence.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def attach_router(app: FastAPI) -> None:
    state: ServerState = app.state.gemma
    if not state.settings.server.web_ui:
        return
    app.mount("/ui", StaticFiles(directory=STATIC), name="web-ui")
    app.include_router(router)


@router.get("/")
async def chat_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)
