from __future__ import annotations

import uuid

import pytest

from tests.conftest import isolated_settings

from .conftest import running


async def test_request_id_is_echoed_and_response_time_added(client) -> None:
    r = await client.get("/api/health", headers={"X-Request-ID": "my-custom-id"})
    assert r.headers["X-Request-ID"] == "my-custom-id"
    assert r.headers["X-Response-Time"].endswith("s")
    float(r.headers["X-Response-Time"][:-1])


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "new\tline", "<script>", ""])
async def test_unsafe_request_id_is_replaced_by_uuid4(client, bad) -> None:
    r = await client.get("/api/health", headers={"X-Request-ID": bad})
    assert r.headers["X-Request-ID"] != bad
    assert uuid.UUID(r.headers["X-Request-ID"]).version == 4


async def test_generated_id_is_in_body_and_header(client) -> None:
    r = await client.post("/api/v1/text/generate", json={"prompt": "Привет"})
    assert r.status_code == 200
    assert r.json()["request_id"] == r.headers["X-Request-ID"]


async def test_cors_list_allows_listed_origin_only() -> None:
    settings = isolated_settings(allowed_origins="https://a.example, https://b.example")
    async with running(settings=settings) as (_, client):
        ok = await client.get("/api/health", headers={"Origin": "https://b.example"})
        assert ok.headers["Access-Control-Allow-Origin"] == "https://b.example"
        assert "X-Request-ID" in ok.headers["Access-Control-Expose-Headers"]
        bad = await client.get("/api/health", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in bad.headers
        pre = await client.options(
            "/api/v1/text/generate",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "Access-Control-Allow-Origin" not in pre.headers


async def test_cors_star_allows_any_origin(client) -> None:
    r = await client.get("/api/health", headers={"Origin": "https://anywhere.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
