"""Rate limits and API keys in process (memory storage)."""

from __future__ import annotations

import logging

import httpx
import pytest

from avito_ai.config import Settings
from tests.conftest import isolated_settings

from .conftest import running


def settings(**kw) -> Settings:
    return isolated_settings(**kw)


async def test_seed_check_11th_request_in_a_minute_is_429() -> None:
    async with running(settings()) as (_, client):
        statuses = [(await client.get("/api/health")).status_code for _ in range(15)]
        assert statuses == [200] * 10 + [429] * 5
        r = await client.get("/api/health")
        assert r.json() == {
            "error": "rate_limit_exceeded",
            "message": "Rate limit exceeded: 10 requests per minute",
            "request_id": r.headers["X-Request-ID"],
        }
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.headers["RateLimit-Policy"] == "10;w=60, 100;w=3600"
        assert r.headers["RateLimit"].startswith("limit=10, remaining=0, reset=")


async def test_remaining_counts_down() -> None:
    async with running(settings()) as (_, client):
        first = await client.get("/api/health")
        second = await client.get("/api/health")
        assert first.headers["RateLimit"].startswith("limit=10, remaining=9")
        assert second.headers["RateLimit"].startswith("limit=10, remaining=8")


async def test_hourly_window_is_enforced_with_its_own_wording() -> None:
    async with running(settings(rate_limit_per_minute=50, rate_limit_per_hour=3)) as (_, client):
        statuses = [(await client.get("/api/health")).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        r = await client.get("/api/health")
        assert r.json()["message"] == "Rate limit exceeded: 3 requests per hour"


@pytest.mark.parametrize(
    ("minute", "hour", "expected", "wording"),
    [
        (4, 100, [200] * 4 + [429] * 2, "4 requests per minute"),
        (50, 3, [200] * 3 + [429] * 3, "3 requests per hour"),
    ],
)
async def test_memory_storage_enforces_both_windows(
    minute: int, hour: int, expected: list[int], wording: str
) -> None:
    limited = settings(rate_limit_per_minute=minute, rate_limit_per_hour=hour)
    async with running(limited) as (_, client):
        assert [(await client.get("/api/health")).status_code for _ in range(6)] == expected
        r = await client.get("/api/health")
        assert r.json()["message"] == f"Rate limit exceeded: {wording}"


async def test_probes_scrapes_and_static_are_exempt() -> None:
    async with running(settings(rate_limit_per_minute=1)) as (_, client):
        for _ in range(5):
            assert (await client.get("/api/health/live")).status_code == 200
            assert (await client.get("/api/health/ready")).status_code == 200
            assert (await client.get("/static/style.css")).status_code == 200
        assert (await client.get("/api/health")).status_code == 200
        assert (await client.get("/api/health")).status_code == 429


async def test_a_newcomer_browsing_the_page_spends_no_budget() -> None:
    """The page, its scripts, the dashboard and what they poll are free; the form's POSTs
    and the API count."""
    async with running(settings(rate_limit_per_minute=3)) as (_, client):
        for _ in range(20):
            assert (await client.get("/")).status_code == 200
            assert (await client.get("/api/metrics")).status_code == 200
            assert (await client.head("/")).status_code == 200
            assert (await client.get("/static/app.js")).status_code == 200
            assert (await client.get("/api/health/models")).status_code == 200
            assert (await client.get("/dashboard")).status_code == 200
            assert (await client.get("/api/metrics/dashboard")).status_code == 200
        statuses = [
            (await client.post("/avibe", data={"prompt": "hi"})).status_code for _ in range(4)
        ]
        assert statuses == [200, 200, 200, 429]


async def test_form_refusals_read_plainly_and_keep_the_settings() -> None:
    async with running(settings(rate_limit_per_minute=1)) as (_, client):
        form = {"prompt": "hi", "max_tokens": "7", "temperature": "0.3", "enable_thinking": "true"}
        answered = await client.post("/avibe", data=form)
        assert answered.status_code == 200
        for echoed in ('value="7"', 'value="0.3"', "checked"):  # as set, not reset
            assert echoed in answered.text, echoed
        r = await client.post("/avibe", data=form)
        assert r.status_code == 429 and "Слишком много запросов" in r.text
        assert f"Повторите через {r.headers['retry-after']} с." in r.text


async def test_form_refusals_are_pages_not_json() -> None:
    async with running(settings(rate_limit_per_minute=1)) as (_, client):
        assert (await client.post("/avibe", data={"prompt": "hi"})).status_code == 200
        r = await client.post("/avibe", data={"prompt": "hi"})
        assert r.status_code == 429
        assert r.headers["content-type"].startswith("text/html")
        assert "Rate limit exceeded: 1 requests per minute" in r.text
        assert "<form" in r.text  # the page itself, so the user can try again
        assert r.headers["Retry-After"]
        assert r.headers["X-Request-ID"] in r.text
        api = await client.post("/api/v1/text/generate", json={"prompt": "hi"})
        assert api.status_code == 429 and api.json()["error"] == "rate_limit_exceeded"


async def test_an_oversized_form_is_a_413_page() -> None:
    async with running(settings(max_body_size_mb=0.01)) as (_, client):
        r = await client.post("/avibe", data={"prompt": "x" * 20_000})
        assert r.status_code == 413
        assert r.headers["content-type"].startswith("text/html")
        assert "payload_too_large" in r.text and "<form" in r.text


KEYED = {"api_keys": "key-one,key-two", "rate_limit_per_minute": 3}


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/api/v1/text/generate", {"prompt": "hi"}),
        (
            "/v1/chat/completions",
            {"model": "avibe", "messages": [{"role": "user", "content": "x"}]},
        ),
    ],
)
async def test_missing_or_wrong_key_is_401(path: str, payload: dict) -> None:
    async with running(settings(**KEYED)) as (_, client):
        missing = await client.post(path, json=payload)
        wrong = await client.post(path, json=payload, headers={"Authorization": "Bearer nope"})
        for r in (missing, wrong):
            assert r.status_code == 401
            body = r.json()
            if path.startswith("/v1"):
                assert body["error"]["code"] == "unauthorized"
                assert body["error"]["type"] == "authentication_error"
            else:
                assert body["error"] == "unauthorized"
                assert body["request_id"] == r.headers["X-Request-ID"]
        assert "Missing API key" in missing.text and "Invalid API key" in wrong.text


async def test_wrong_keys_count_against_the_address_limit() -> None:
    """Guessing keys costs the guesser: the 4th wrong key in a minute is 429, not 401."""
    async with running(settings(**KEYED)) as (_, client):
        wrong = {"Authorization": "Bearer guess"}
        codes = [
            (await client.post("/api/v1/text/generate", json={"prompt": "hi"}, headers=wrong))
            for _ in range(4)
        ]
        assert [r.status_code for r in codes] == [401, 401, 401, 429]
        for r in codes:  # every refusal carries the same headers as any response
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["X-Request-ID"]
        good = await client.post(
            "/api/v1/text/generate", json={"prompt": "hi"}, headers={"X-API-Key": "key-one"}
        )
        assert good.status_code == 200  # a valid key has its own budget


async def test_valid_keys_in_either_header_work_and_health_stays_open(caplog) -> None:
    async with running(settings(**KEYED)) as (_, client):
        with caplog.at_level(logging.DEBUG):
            r1 = await client.post(
                "/api/v1/text/generate",
                json={"prompt": "hi"},
                headers={"Authorization": "Bearer key-one"},
            )
            r2 = await client.post(
                "/api/v1/text/generate", json={"prompt": "hi"}, headers={"X-API-Key": "key-two"}
            )
        assert r1.status_code == r2.status_code == 200
        assert "key-one" not in caplog.text and "key-two" not in caplog.text
        assert (await client.get("/api/health/live")).status_code == 200
        assert (await client.get("/api/health")).status_code == 200
        assert (await client.post("/api/metrics/reset")).status_code == 401


async def test_requests_with_a_key_are_limited_per_key() -> None:
    async with running(settings(**KEYED)) as (_, client):

        async def call(key: str) -> int:
            r = await client.post(
                "/api/v1/text/generate", json={"prompt": "hi"}, headers={"X-API-Key": key}
            )
            return r.status_code

        assert [await call("key-one") for _ in range(4)] == [200, 200, 200, 429]
        # Same client address, other key: its own budget.
        assert [await call("key-two") for _ in range(3)] == [200, 200, 200]


async def test_keys_file(tmp_path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team A\nfile-key-1\n\nfile-key-2  # team B\n")
    async with running(settings(api_keys_file=str(keys))) as (_, client):
        ok = await client.post(
            "/api/v1/text/generate", json={"prompt": "x"}, headers={"X-API-Key": "file-key-2"}
        )
        assert ok.status_code == 200
        bad = await client.post(
            "/api/v1/text/generate", json={"prompt": "x"}, headers={"X-API-Key": "team"}
        )
        assert bad.status_code == 401


async def test_ipv6_clients_are_limited_by_their_64_prefix() -> None:
    from avito_ai.middleware.auth import address_id as client_key

    def key(address: str, prefix: int = 64) -> str:
        return client_key({"client": (address, 1)}, prefix)

    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") == "ip:2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("2001:db8:1:2::1", 128) != key("2001:db8:1:2::2", 128)
    assert key("::ffff:10.0.0.7") == key("10.0.0.7") == "ip:10.0.0.7"
    limited = settings(rate_limit_per_minute=2)
    async with running(limited, client=("2001:db8::1", 1)) as (app, first):
        assert (await first.get("/api/health")).status_code == 200
        assert (await first.get("/api/health")).status_code == 200
        transport = httpx.ASGITransport(app=app, client=("2001:db8::ffff:2", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as neighbour:
            assert (await neighbour.get("/api/health")).status_code == 429  # same /64
        transport = httpx.ASGITransport(app=app, client=("2001:db8:0:1::2", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as other:
            assert (await other.get("/api/health")).status_code == 200  # another /64
