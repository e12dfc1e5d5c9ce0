"""Every error has the native shape, the right status and the request id; never a 500 body leak."""

from __future__ import annotations

import logging

import pytest
from fastapi import APIRouter

from .conftest import running


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code
    assert body["message"]
    assert body["request_id"] == r.headers["X-Request-ID"]
    return body


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({}, "Prompt is required"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": ["list"]}, "prompt"),
        ({"prompt": "   "}, "Prompt must not be empty"),
        ({"prompt": " \n\t "}, "Prompt must not be empty"),
        ({"prompt": "x" * 2001}, "Prompt too long. Maximum length: 2000 characters"),
        ({"prompt": "я" * 2001}, "Prompt too long. Maximum length: 2000 characters"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 257}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 100000}, "max_tokens must be between 1 and 256"),
        ({"prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
        ({"prompt": "hi", "temperature": -0.1}, "temperature"),
        ({"prompt": "hi", "temperature": 2.1}, "temperature"),
        ({"prompt": "hi", "temperature": 2.5}, "temperature"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "top_p": 1.5}, "top_p"),
        ({"prompt": "hi", "top_k": -1}, "top_k"),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
async def test_validation_errors_are_400_naming_the_problem(client, payload, fragment) -> None:
    r = await client.post("/api/v1/text/generate", json=payload)
    body = assert_error(r, 400, "validation_error")
    assert fragment in body["message"]


async def test_malformed_json_is_400(client) -> None:
    r = await client.post(
        "/api/v1/text/generate",
        content=b'{"prompt": ',
        headers={"Content-Type": "application/json"},
    )
    body = assert_error(r, 400, "validation_error")
    assert "Malformed JSON" in body["message"]


async def test_a_json_body_over_1mb_is_413(client) -> None:
    r = await client.post("/api/v1/text/generate", json={"prompt": "x" * 1_100_000})
    assert_error(r, 413, "payload_too_large")


async def test_non_object_body_is_400(client) -> None:
    r = await client.post("/api/v1/text/generate", json=["prompt"])
    assert_error(r, 400, "validation_error")


async def test_unknown_route_is_404_and_wrong_method_405(client) -> None:
    assert_error(await client.get("/no/such/route"), 404, "not_found")
    r = await client.delete("/api/health")
    assert_error(r, 405, "method_not_allowed")
    assert "GET" in r.headers["Allow"]
    assert_error(await client.get("/api/v1/text/generate"), 405, "method_not_allowed")


async def test_openai_paths_get_openai_error_shape(client) -> None:
    r = await client.get("/v1/no-such-thing")
    assert r.status_code == 404
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "not_found"


async def test_unhandled_exception_is_500_without_trace_but_logged_with_id(caplog) -> None:
    import httpx

    async with running() as (app, _):
        router = APIRouter()

        @router.get("/boom")
        async def boom() -> None:
            raise RuntimeError("secret internals")

        app.include_router(router)
        # raise_app_exceptions: nothing may escape the app (a server would drop the
        # connection, and the client's next request on it would fail).
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            with caplog.at_level(logging.ERROR):
                r = await client.get(
                    "/boom", headers={"X-Request-ID": "boom-1", "Origin": "https://a.example"}
                )
            assert (await client.get("/api/health/live")).status_code == 200
    body = assert_error(r, 500, "internal_error")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Response-Time"].endswith("s")
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert body["request_id"] == "boom-1"
    assert "secret internals" not in r.text and "Traceback" not in r.text
    records = [rec for rec in caplog.records if getattr(rec, "request_id", None) == "boom-1"]
    assert any(rec.exc_info and "secret internals" in str(rec.exc_info[1]) for rec in records)


async def test_openapi_documents_every_endpoint_with_examples(client) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/api/v1/text/generate",
        "/api/v1/image/analyze",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/api/health",
        "/api/health/ready",
        "/api/health/live",
        "/api/metrics",
        "/api/metrics/reset",
        "/metrics",
        "/",
        "/avibe",
        "/avision",
    ):
        assert path in paths, path
    assert "curl -X POST http://localhost:8085/api/v1/text/generate" in str(
        paths["/api/v1/text/generate"]
    )
    assert "multipart/form-data" in paths["/api/v1/image/analyze"]["post"]["requestBody"]["content"]
    assert "Привет, подскажи рецепт борща" in str(spec["components"])
    assert (await client.get("/docs")).status_code == 200


async def test_docs_pages_load_only_the_services_own_files(client) -> None:
    """No CDN: /docs and /redoc reference /static files, and their CSP says scripts come
    from the service only (tests/integration/test_docs_offline.py renders them offline)."""
    import re

    for path in ("/docs", "/redoc"):
        r = await client.get(path)
        assert r.status_code == 200
        csp = r.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "https:" not in csp and "unsafe-eval" not in csp
        assert "<script>" not in r.text  # no inline script
        urls = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        assert urls and all(u.startswith("/static/") for u in urls), urls
        for url in urls:
            assert (await client.get(url)).status_code == 200, url
