from __future__ import annotations

import asyncio

import httpx

from avito_ai.services.drain import begin_drain_all
from tests.conftest import engine_set

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
    engines = engine_set(load_delay=0.5)
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


async def test_a_request_stops_waiting_for_a_load_at_its_timeout(
    make_settings, fake_engines
) -> None:
    settings = make_settings(request_timeout=0.3)
    async with running(settings=settings, engines=fake_engines(load_delay=5)) as (_, client):
        g = await client.post("/api/v1/text/generate", json={"prompt": "hi"})
        assert g.status_code == 503
        assert g.json()["error"] == "model_unavailable"
        assert "still loading" in g.json()["message"]


async def test_ready_names_a_failed_model_and_why() -> None:
    engines = engine_set(fail_reason="weights not found at /models/x")
    async with running(engines=engines) as (_, client):
        r = await client.get("/api/health/ready")
        assert r.status_code == 503
        # Unauthenticated: the reason without the local path's folders (those are logged).
        assert "avibe (fake-avibe) is failed: weights not found at x" in r.json()["problems"]
        assert r.json()["models"]["avibe"]["reason"] == "weights not found at x"
        health = await client.get("/api/health")
        assert health.json()["status"] == "degraded"
        assert "/models/" not in r.text + health.text
        g = await client.post("/api/v1/text/generate", json={"prompt": "hi"})
        assert g.status_code == 503
        assert "weights not found at /models/x" in g.json()["message"]


async def test_ready_checks_that_a_configured_cuda_device_exists(make_settings) -> None:
    import torch

    async with running(settings=make_settings(device="cuda:7")) as (_, client):
        r = await client.get("/api/health/ready")
        if torch.cuda.device_count() > 7:
            assert r.status_code == 200
        else:
            assert r.status_code == 503
            assert any("cuda:7" in p for p in r.json()["problems"])


def test_only_in_process_engines_need_the_cuda_device_here(make_settings) -> None:
    """vLLM and SGLang pick their own GPUs: DEVICE=cuda in front of them needs no torch
    and no CUDA device in this process (it used to keep readiness at 503 for ever)."""
    from avito_ai.engines.registry import device_problem

    vllm = make_settings(device="cuda:7", avibe_backend="vllm", avibe_model="/m")
    assert device_problem(vllm.engines) is None
    remote = make_settings(device="cuda", avibe_backend="remote", avibe_upstream_urls="http://u")
    assert device_problem(remote.engines) is None
    import torch

    if torch.cuda.device_count() <= 7:
        local = make_settings(device="cuda:7", avibe_backend="transformers")
        assert "cuda:7" in str(device_problem(local.engines))


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


async def test_probe_shortcut_answers_as_the_routes_do_with_every_layer_around_it() -> None:
    """GET /api/health and /live skip the router (api/probes.py); nothing else may change:
    the same bodies as the routes, the request id, security and rate-limit headers, the
    access metric under the route's template, HEAD, and 405 for other methods."""
    from avito_ai.api.probes import ProbeFastPath

    async with running() as (app, client):
        fast = await client.get("/api/health")
        # With a root path the shortcut steps aside and the route itself answers.
        async with running() as (_, behind_proxy):
            transport = behind_proxy._transport
            assert isinstance(transport, httpx.ASGITransport)
            transport.root_path = "/prefix"
            routed = await behind_proxy.get("/prefix/api/health")
        assert fast.status_code == routed.status_code == 200
        assert fast.json().keys() == routed.json().keys()
        assert fast.json()["models"] == routed.json()["models"]
        assert fast.headers["content-type"] == routed.headers["content-type"]
        for name in ("x-request-id", "x-content-type-options", "ratelimit", "ratelimit-policy"):
            assert name in fast.headers, name
        live = await client.get("/api/health/live")
        assert live.json() == {"status": "alive"} and "x-request-id" in live.headers
        head = await client.head("/api/health")
        assert head.status_code == 200 and head.content == b""
        assert (await client.post("/api/health")).status_code == 405

        metrics = (await client.get("/metrics")).text
        assert 'avito_http_requests_total{method="GET",route="/api/health",status="200"}' in (
            metrics
        )
        assert any(isinstance(layer, ProbeFastPath) for layer in _layers(app.middleware_stack)), (
            "the shortcut is not installed: this test would prove nothing"
        )


def _layers(app: object) -> list[object]:
    found = []
    while app is not None:
        found.append(app)
        app = getattr(app, "app", None)
    return found
