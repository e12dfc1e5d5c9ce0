from __future__ import annotations

from typing import Any

import pytest

from avito_ai.config import Settings
from avito_ai.engines.fake import FakeEngine
from tests.conftest import engine_set, isolated_settings

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
        assert set(app) == SEED_APPLICATION | {"rate_limited_requests"}  # 429s, apart
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


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    page: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return page.get((name, frozenset(labels.items())), 0.0)


async def test_prometheus_counts_http_and_model_metrics() -> None:
    """Earlier tests in this process filled the same registry: compare before and after."""
    async with running(settings()) as (_, client):
        before = samples((await client.get("/metrics")).text)
        await client.post("/api/v1/text/generate", json={"prompt": "a b c"})
        await client.get("/no-such-route")
        await client.post("/api/v1/text/generate", json={"prompt": "x", "top_k": -1})
        r = await client.get("/metrics")
        assert r.headers["content-type"].startswith("text/plain")
        after = samples(r.text)

        def grew(name: str, by: float = 1, **labels: str) -> bool:
            return value(after, name, **labels) - value(before, name, **labels) == by

        route = "/api/v1/text/generate"
        assert grew("avito_http_requests_total", method="POST", route=route, status="200")
        assert grew("avito_http_requests_total", method="POST", route=route, status="400")
        assert grew("avito_http_requests_total", method="GET", route="<unmatched>", status="404")
        assert grew("avito_http_request_duration_seconds_count", method="POST", route=route, by=2)
        for histogram in (
            "avito_time_to_first_token_seconds_count",
            "avito_inter_token_latency_seconds_count",
            "avito_e2e_request_latency_seconds_count",
            "avito_request_queue_time_seconds_count",
        ):
            assert grew(histogram, model="avibe"), histogram
        assert grew("avito_prompt_tokens_total", model="avibe", by=4)  # fake: parts + words
        assert grew("avito_generation_tokens_total", model="avibe", by=4)  # "Echo:" a b c
        assert grew("avito_rejections_total", reason="validation")
        assert value(after, "avito_requests_running", model="avibe") == 0
        assert value(after, "avito_requests_waiting", model="avibe") == 0


def rejections(page: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, float]:
    return {
        dict(labels)["reason"]: count
        for (name, labels), count in page.items()
        if name == "avito_rejections_total"
    }


async def rejections_now(client: Any) -> dict[str, float]:
    return rejections(samples((await client.get("/metrics")).text))


def grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The rejection reasons that moved, and by how much."""
    return {
        reason: count - before.get(reason, 0.0)
        for reason, count in after.items()
        if count != before.get(reason, 0.0)
    }


@pytest.mark.parametrize(
    ("form", "fragment"),
    [
        ({"prompt": ""}, "Prompt"),
        ({"prompt": " \n\t "}, "Prompt must not be empty"),
        ({"prompt": "x" * 2001}, "Prompt too long. Maximum length: 2000 characters"),
        ({"prompt": "hi", "max_tokens": "0"}, "max_tokens"),
    ],
)
async def test_a_form_refusal_is_counted_once(form: dict[str, str], fragment: str) -> None:
    async with running(settings()) as (_, client):
        before = await rejections_now(client)
        r = await client.post("/avibe", data=form)
        assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
        assert fragment in r.text
        assert grown(before, await rejections_now(client)) == {"validation": 1.0}


async def test_a_vision_form_refusal_is_counted_once() -> None:
    engines = engine_set(avision=FakeEngine("avision"))
    async with running(settings(), engines) as (_, client):
        before = await rejections_now(client)
        r = await client.post("/avision", files={"image": ("a.png", b"not an image", "image/png")})
        assert r.status_code == 400 and "Unsupported image type" in r.text
        assert grown(before, await rejections_now(client)) == {"validation": 1.0}


async def test_form_refusals_by_the_middlewares_are_counted_once() -> None:
    limited = isolated_settings(rate_limit_per_minute=1)
    async with running(limited) as (_, client):
        assert (await client.post("/avibe", data={"prompt": "hi"})).status_code == 200
        before = await rejections_now(client)
        r = await client.post("/avibe", data={"prompt": "hi"})
        assert r.status_code == 429 and r.headers["content-type"].startswith("text/html")
        assert grown(before, await rejections_now(client)) == {"rate_limit": 1.0}
    async with running(isolated_settings(max_body_size_mb=0.01)) as (_, client):
        before = await rejections_now(client)
        r = await client.post("/avibe", data={"prompt": "x" * 20_000})
        assert r.status_code == 413 and r.headers["content-type"].startswith("text/html")
        assert grown(before, await rejections_now(client)) == {"payload_too_large": 1.0}


async def test_the_scrape_says_which_models_answer_and_how_full_their_queues_may_get() -> None:
    from tests.api.conftest import running
    from tests.conftest import isolated_settings

    async with running(isolated_settings(max_queue_size=12)) as (_, client):
        text = (await client.get("/metrics")).text
    assert 'avito_model_ready{engine="fake",model="avibe"} 1.0' in text
    assert 'avito_queue_capacity{model="avibe"} 12.0' in text
    assert 'avito_admission_waiting{model="avibe"} 0.0' in text


async def test_each_gpus_nvml_figures_are_in_the_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    from avito_ai.api.routes import metrics as route
    from tests.api.conftest import running

    gpus = [{"index": 0.0, "used": 7e9, "total": 8e10, "utilization": 0.25}]
    monkeypatch.setattr(route, "gpu_devices", lambda: gpus)
    async with running() as (_, client):
        text = (await client.get("/metrics")).text
    assert 'avito_gpu_memory_used_bytes{gpu="0"} 7e+09' in text
    assert 'avito_gpu_memory_total_bytes{gpu="0"} 8e+10' in text
    assert 'avito_gpu_utilization_ratio{gpu="0"} 0.25' in text
