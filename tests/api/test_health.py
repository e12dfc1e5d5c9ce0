from __future__ import annotations

import asyncio

from avito_ai.config import Settings
from avito_ai.engines.base import NotConfiguredEngine
from avito_ai.engines.fake import FakeEngine
from avito_ai.engines.registry import AVISION_HINT
from avito_ai.lifespan import begin_drain_all

from .conftest import running


async def test_health_reports_version_uptime_and_models(client) -> None:
    r = await client.get("/api/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy"
    assert body["version"]
    assert body["uptime_seconds"] >= 0
    assert body["models"]["avibe"]["state"] == "ready"
    assert body["models"]["avision"]["state"] == "not_configured"
    assert "AVISION_MODEL" in body["models"]["avision"]["reason"]


async def test_live_answers_while_models_load_and_requests_wait_for_the_load() -> None:
    slow = FakeEngine("avibe", load_delay=0.5)
    engines = {"avibe": slow, "avision": NotConfiguredEngine("avision", AVISION_HINT)}
    async with running(engines=engines) as (_, client):
        assert (await client.get("/api/health/live")).status_code == 200
        r = await client.get("/api/health/ready")
        assert r.status_code == 503
        assert any("avibe" in p and "loading" in p for p in r.json()["problems"])
        # A request that arrives during the load waits for it instead of failing.
        started = asyncio.get_running_loop().time()
        g = await client.post("/api/v1/text/generate", json={"prompt": "hi"})
        assert g.status_code == 200 and g.json()["data"]["text"] == "Echo: hi"
        assert asyncio.get_running_loop().time() - started >= 0.3
        assert (await client.get("/api/health/ready")).status_code == 200


async def test_a_request_stops_waiting_for_a_load_at_its_timeout() -> None:
    settings = Settings(_env_file=None, request_timeout=0.3)  # type: ignore[call-arg]
    engines = {
        "avibe": FakeEngine("avibe", load_delay=5),
        "avision": NotConfiguredEngine("avision", AVISION_HINT),
    }
    async with running(settings=settings, engines=engines) as (_, client):
        g = await client.post("/api/v1/text/generate", json={"prompt": "hi"})
        assert g.status_code == 503
        assert g.json()["error"] == "model_unavailable"
        assert "still loading" in g.json()["message"]


async def test_ready_names_a_failed_model_and_why() -> None:
    broken = FakeEngine("avibe", fail_reason="weights not found at /models/x")
    engines = {"avibe": broken, "avision": NotConfiguredEngine("avision", AVISION_HINT)}
    async with running(engines=engines) as (_, client):
        r = await client.get("/api/health/ready")
        assert r.status_code == 503
        assert (
            "avibe (fake-avibe) is failed: weights not found at /models/x" in r.json()["problems"]
        )
        assert (await client.get("/api/health")).json()["status"] == "degraded"
        g = await client.post("/api/v1/text/generate", json={"prompt": "hi"})
        assert g.status_code == 503
        assert "weights not found at /models/x" in g.json()["message"]


async def test_ready_checks_that_a_configured_cuda_device_exists() -> None:
    import torch

    settings = Settings(_env_file=None, device="cuda:7")  # type: ignore[call-arg]
    async with running(settings=settings) as (_, client):
        r = await client.get("/api/health/ready")
        if torch.cuda.device_count() > 7:
            assert r.status_code == 200
        else:
            assert r.status_code == 503
            assert any("cuda:7" in p for p in r.json()["problems"])


async def test_drain_turns_readiness_503_but_accepted_requests_are_served(client) -> None:
    begin_drain_all()
    r = await client.get("/api/health/ready")
    assert r.status_code == 503
    assert "shutting down" in r.json()["problems"]
    assert (await client.get("/api/health")).json()["status"] == "draining"
    # The server stops accepting connections; a request it did accept still gets its answer.
    g = await client.post("/api/v1/text/generate", json={"prompt": "hi"})
    assert g.status_code == 200
    assert (await client.get("/api/health/live")).status_code == 200
