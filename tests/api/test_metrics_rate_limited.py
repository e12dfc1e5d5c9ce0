"""/api/metrics does not count requests refused by a rate limit (429) as failed: the
original specification's own rate-limit example (15 requests, 429 after 10) must not read
as a service failing a third of its requests. They are counted apart."""

from __future__ import annotations

from tests.conftest import isolated_settings

from .conftest import running


async def test_429s_are_counted_apart_not_as_failed_requests() -> None:
    async with running(isolated_settings(rate_limit_per_minute=3)) as (_, client):
        await client.post("/api/metrics/reset")  # (counts against the limit: 1 of 3)
        for prompt in ("one two", "three four"):
            assert (await client.post("/api/v1/text/generate", json={"prompt": prompt})).is_success
        for _ in range(3):
            r = await client.post("/api/v1/text/generate", json={"prompt": "five"})
            assert r.status_code == 429
        app = (await client.get("/api/metrics")).json()["application"]
        assert app["failed_requests"] == 0
        assert app["success_rate"] == "100.00%"
        assert (app["total_requests"], app["successful_requests"]) == (2, 2)
        assert app["rate_limited_requests"] == 3


async def test_a_real_failure_still_counts_beside_the_429s() -> None:
    async with running(isolated_settings(rate_limit_per_minute=3)) as (_, client):
        await client.post("/api/metrics/reset")
        assert (await client.post("/api/v1/text/generate", json={"prompt": "hi"})).is_success
        assert (await client.post("/api/v1/text/generate", json={"prompt": ""})).status_code == 400
        assert (await client.post("/api/v1/text/generate", json={"prompt": "x"})).status_code == 429
        app = (await client.get("/api/metrics")).json()["application"]
        assert (app["successful_requests"], app["failed_requests"]) == (1, 1)
        assert app["success_rate"] == "50.00%" and app["rate_limited_requests"] == 1
