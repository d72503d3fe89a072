"""What the chat page needs from the server, on a FakeLLM: the page and its files (with a strict
CSP, nothing from another origin, off with GEMMA_SERVER__WEB_UI=false), PATCH and regenerate on
sessions, and /docs that works offline with a bearer scheme and OpenAI's error body."""

from __future__ import annotations

import fnmatch
import json
import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gemma_chat import InferenceService, get_settings
from gemma_chat.server import create_app
from gemma_chat.server.routers.web import STATIC
from gemma_chat.testing import FakeLLM


def client_for(llm: FakeLLM | None = None, **server: Any) -> TestClient:
    settings = get_settings(server=server, storage={"url": "memory://"})
    service = InferenceService(settings, llm=llm or FakeLLM(["one two", "three four"]))
    return TestClient(create_app(settings, service))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with client_for() as test_client:
        deadline = time.monotonic() + 5
        while test_client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield test_client


def events(body: str) -> list[dict[str, Any]]:
    data = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


# -- the page --------------------------------------------------------------------------------


def test_the_page_and_its_files_are_served_with_a_strict_csp(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    for name in re.findall(r'(?:src|href)="ui/([^"]+)"', page.text):
        asset = client.get(f"/ui/{name}")
        assert asset.status_code == 200, name
    assert client.get("/ui/chat.js").headers["content-type"].startswith("text/javascript")


def test_the_page_loads_nothing_from_another_origin() -> None:
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(src|href)=\"(https?:)?//", text), path.name
        assert "<script>" not in text, path.name  # no inline script (the CSP forbids it)
        assert "innerHTML" not in text, path.name  # model text never becomes markup


def test_the_page_can_be_turned_off_for_api_only_servers() -> None:
    with client_for(web_ui=False) as off:
        assert off.get("/").status_code == 404
        assert off.get("/ui/chat.js").status_code == 404
        assert off.get("/docs").status_code == 200


# -- the sessions API the page uses -----------------------------------------------------------


def test_patch_renames_and_sets_the_system_prompt_and_metadata(client: TestClient) -> None:
    session_id = client.post("/v1/sessions", json={"title": "a"}).json()["id"]
    change = {"title": "Crêpes 🥞", "system_prompt": "be brief", "metadata": {"web_ui": {"x": 1}}}
    patched = client.patch(f"/v1/sessions/{session_id}", json=change)
    assert patched.status_code == 200
    stored = client.get(f"/v1/sessions/{session_id}").json()
    for field, value in change.items():
        assert patched.json()[field] == stored[field] == value
    cleared = client.patch(f"/v1/sessions/{session_id}", json={"system_prompt": ""}).json()
    assert cleared["system_prompt"] is None
    assert cleared["title"] == "Crêpes 🥞"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"title": "bad\x00"}, 400, "title"),
        ({"title": 3}, 422, "title"),
        ({"name": "x"}, 400, "name"),  # a field the server does not implement
        ({"metadata": []}, 422, "metadata"),
    ],
)
def test_a_bad_patch_is_a_specific_error_and_changes_nothing(
    client: TestClient, body: dict[str, Any], status: int, param: str
) -> None:
    session_id = client.post("/v1/sessions", json={"title": "kept"}).json()["id"]
    response = client.patch(f"/v1/sessions/{session_id}", json=body)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param
    assert client.get(f"/v1/sessions/{session_id}").json()["title"] == "kept"


def test_patching_an_unknown_session_is_a_404(client: TestClient) -> None:
    response = client.patch("/v1/sessions/nope", json={"title": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "session_not_found"


def test_regenerate_replaces_the_last_answer_streamed_or_not(client: TestClient) -> None:
    session_id = client.post("/v1/sessions", json={}).json()["id"]
    nothing = client.post(f"/v1/sessions/{session_id}/regenerate", json={"stream": True})
    assert nothing.status_code == 400
    assert nothing.json()["error"]["code"] == "nothing_to_regenerate"

    first = client.post(f"/v1/sessions/{session_id}/messages", json={"content": "hi"}).json()
    streamed = events(
        client.post(f"/v1/sessions/{session_id}/regenerate", json={"stream": True}).text
    )
    text = "".join(e["delta"]["content"] for e in streamed)
    assert text != first["message"]["content"]
    stored = client.get(f"/v1/sessions/{session_id}").json()["messages"]
    assert [(m["role"], m["content"]) for m in stored] == [("user", "hi"), ("assistant", text)]
    assert stored[1]["id"] == streamed[-1]["message_id"]

    again = client.post(f"/v1/sessions/{session_id}/regenerate", json={"max_tokens": 1})
    assert again.status_code == 200
    stored = client.get(f"/v1/sessions/{session_id}").json()["messages"]
    assert [m["content"] for m in stored] == ["hi", again.json()["message"]["content"]]
    assert len(stored[1]["content"].split()) == 1  # the generation parameters applied


def test_regenerate_refuses_unknown_fields(client: TestClient) -> None:
    session_id = client.post("/v1/sessions", json={}).json()["id"]
    response = client.post(f"/v1/sessions/{session_id}/regenerate", json={"content": "x"})
    assert response.status_code == 400  # a field this route does not take, named
    assert response.json()["error"]["param"] == "content"


# -- /docs offline -----------------------------------------------------------------------------


def test_the_api_docs_use_only_local_assets(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"(?:src|href|url)[=:]\s*['\"]([^'\"]+)['\"]", page.text)
    assert len(urls) >= 2, page.text
    for url in urls:
        assert not url.startswith(("http:", "https:", "//")), url
        assert client.get(url).status_code == 200, url
    assert client.get("/redoc").status_code == 404  # ReDoc's page loads its logo from a CDN


def test_the_spec_declares_the_bearer_scheme_on_the_api_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["APIKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            if path.startswith("/v1/"):
                assert operation["security"] == [{"APIKey": []}], path
            else:
                assert "security" not in operation, path


def test_documented_errors_are_the_bodies_the_server_sends(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path in ("/v1/sessions/{session_id}", "/v1/sessions/{session_id}/regenerate"):
        for operations in (spec["paths"][path],):
            for operation in operations.values():
                body = operation["responses"]["422"]["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/ErrorResponse"}
    bad = client.post("/v1/sessions", json={"title": 1})
    assert set(bad.json()) == {"error"}
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}


def test_the_key_reaches_the_api_as_swagger_sends_it() -> None:
    with client_for(api_key="k") as keyed:
        assert keyed.get("/v1/sessions").status_code == 401
        assert keyed.get("/v1/sessions", headers={"Authorization": "Basic k"}).status_code == 401
        assert keyed.get("/v1/sessions", headers={"Authorization": "Bearer k"}).status_code in (
            200,
            503,  # the FakeLLM may still be loading
        )
        assert keyed.get("/").status_code == 200  # the page itself needs no key
        assert keyed.get("/docs").status_code == 200


def test_the_pages_files_are_package_data_of_the_wheel() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["gemma_chat"]
    package = STATIC.parent.parent
    for path in STATIC.iterdir():
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative
