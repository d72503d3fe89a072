"""The server's shape: real response schemas in /openapi.json, and imports that go one way
(app -> routers -> dependencies/protocol), so no module but the entry points imports app.py."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

import gemma_chat.server
from gemma_chat import InferenceService, get_settings
from gemma_chat.server import create_app
from gemma_chat.testing import FakeLLM

SERVER = Path(gemma_chat.server.__file__).parent


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    settings = get_settings()
    app = create_app(settings, InferenceService(settings, llm=FakeLLM(model_name="m")))
    return app.openapi()


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


@pytest.mark.parametrize(
    ("method", "path", "status", "fields"),
    [
        ("post", "/v1/chat/completions", "200", {"id", "object", "choices", "usage"}),
        ("post", "/v1/completions", "200", {"id", "object", "choices", "usage"}),
        ("get", "/v1/models", "200", {"object", "data"}),
        ("get", "/v1/sessions", "200", {"object", "data"}),
        ("post", "/v1/sessions", "201", {"id", "messages", "token_usage"}),
        ("get", "/v1/sessions/{session_id}", "200", {"id", "messages", "token_usage"}),
        ("delete", "/v1/sessions/{session_id}", "200", {"id", "deleted"}),
        ("post", "/v1/sessions/{session_id}/messages", "200", {"message", "usage", "cached"}),
        ("patch", "/v1/sessions/{session_id}", "200", {"id", "title", "system_prompt"}),
        ("post", "/v1/sessions/{session_id}/regenerate", "200", {"message", "usage", "cached"}),
        ("get", "/health", "200", {"status"}),
    ],
)
def test_every_api_route_documents_its_success_body(
    openapi: dict[str, Any], method: str, path: str, status: str, fields: set[str]
) -> None:
    response = openapi["paths"][path][method]["responses"][status]
    schema = resolve(openapi, response["content"]["application/json"]["schema"])
    assert fields <= set(schema["properties"])


def test_errors_are_documented_in_openais_error_shape(openapi: dict[str, Any]) -> None:
    responses = openapi["paths"]["/v1/chat/completions"]["post"]["responses"]
    for status in ("400", "401", "422", "429", "503"):
        schema = resolve(openapi, responses[status]["content"]["application/json"]["schema"])
        error = resolve(openapi, schema["properties"]["error"])
        assert {"message", "type", "param", "code"} <= set(error["properties"])


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports made absolute."""
    package = "gemma_chat." + ".".join(path.relative_to(SERVER.parent).with_suffix("").parts)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_only_the_entry_points_import_the_app_module() -> None:
    allowed = {SERVER / "__init__.py", SERVER / "main.py"}
    importers = [
        path.relative_to(SERVER).as_posix()
        for path in SERVER.rglob("*.py")
        if path not in allowed and "gemma_chat.server.app" in imported_modules(path)
    ]
    assert importers == []
    assert "gemma_chat.server.app" in imported_modules(SERVER / "__init__.py")


def test_routers_import_neither_the_app_nor_each_other() -> None:
    for path in (SERVER / "routers").glob("*.py"):
        imports = imported_modules(path)
        assert "gemma_chat.server.app" not in imports, path.name
        others = {m for m in imports if m.startswith("gemma_chat.server.routers")}
        assert others == set(), path.name


def test_no_server_module_is_over_300_lines() -> None:
    long = [p.name for p in SERVER.rglob("*.py") if len(p.read_text().splitlines()) > 300]
    assert long == []
