from __future__ import annotations

from avito_ai.config import Settings
from tests.conftest import isolated_settings

from .conftest import running

SEED_SYSTEM = {"cpu_percent", "memory_percent", "memory_available_gb", "disk_percent"}
SEED_APPLICATION = {
    "total_requests",
    "successful_requests",
    "failed_requests",
    "success_rate",
    "avibe_requests",
    "avision_requests",
    "avg_response_time",
    "total_tokens_generated",
}


def settings() -> Settings:
    return isolated_settings(rate_limit_per_minute=1000)


async def test_json_metrics_have_the_seed_shape_and_count_requests() -> None:
    async with running(settings()) as (_, client):
        await client.post("/api/metrics/reset")
        for prompt in ("one two", "three four five"):
            assert (await client.post("/api/v1/text/generate", json={"prompt": prompt})).is_success
        await client.post("/api/v1/text/generate", json={"prompt": ""})  # a 400
        body = (await client.get("/api/metrics")).json()
        assert set(body) == {"timestamp", "uptime_seconds", "system", "gpu", "application"}
        assert set(body["system"]) == SEED_SYSTEM
        assert body["system"]["cpu_percent"].endswith("%")
        assert body["gpu"].get("available") is False or "gpu_name" in body["gpu"]
        app = body["application"]
        assert set(app) == SEED_APPLICATION
        assert app["total_requests"] == 3
        assert (app["successful_requests"], app["failed_requests"]) == (2, 1)
        assert app["success_rate"] == "66.67%"
        assert app["avibe_requests"] == 2 and app["avision_requests"] == 0
        assert app["total_tokens_generated"] == 3 + 4  # "Echo:" + words
        assert app["avg_response_time"].endswith("s")


async def test_reset_zeroes_the_view_but_not_prometheus() -> None:
    async with running(settings()) as (_, client):
        await client.post("/api/v1/text/generate", json={"prompt": "hello"})
        before = (await client.get("/metrics")).text
        reset = await client.post("/api/metrics/reset")
        assert reset.json()["application"]["total_requests"] == 0
        assert (await client.get("/api/metrics")).json()["application"]["avibe_requests"] == 0
        after = (await client.get("/metrics")).text
        line = next(
            ln for ln in before.splitlines() if ln.startswith("avito_generation_tokens_total{")
        )
        assert line in after  # counters stay monotonic


async def test_prometheus_exposes_http_and_model_metrics() -> None:
    async with running(settings()) as (_, client):
        await client.post("/api/v1/text/generate", json={"prompt": "a b c"})
        await client.get("/no-such-route")
        await client.post("/api/v1/text/generate", json={"prompt": "x", "top_k": -1})
        r = await client.get("/metrics")
        assert r.headers["content-type"].startswith("text/plain")
        text = r.text
        for name in (
            'avito_http_requests_total{method="POST",route="/api/v1/text/generate",status="200"}',
            'avito_http_requests_total{method="GET",route="<unmatched>",status="404"}',
            "avito_http_request_duration_seconds_bucket",
            'avito_time_to_first_token_seconds_count{model="avibe"}',
            'avito_inter_token_latency_seconds_count{model="avibe"}',
            'avito_e2e_request_latency_seconds_count{model="avibe"}',
            'avito_request_queue_time_seconds_count{model="avibe"}',
            'avito_prompt_tokens_total{model="avibe"}',
            'avito_generation_tokens_total{model="avibe"}',
            'avito_requests_running{model="avibe"}',
            'avito_requests_waiting{model="avibe"}',
            'avito_rejections_total{reason="validation"}',
        ):
            assert name in text, name
