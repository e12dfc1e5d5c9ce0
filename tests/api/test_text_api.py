from __future__ import annotations

import asyncio

from .conftest import running


async def test_seed_response_shape(client) -> None:
    r = await client.post(
        "/api/v1/text/generate",
        json={"prompt": "Привет, подскажи рецепт борща", "max_tokens": 256, "temperature": 0.7},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True
    assert body["data"]["text"] == "Echo: Привет, подскажи рецепт борща"
    assert body["data"]["generated_tokens"] == 5
    assert isinstance(body["data"]["input_tokens"], int)
    for key in ("generation_time", "total_time", "tokens_per_second"):
        assert isinstance(body["metrics"][key], int | float)
    assert body["request_id"] == r.headers["X-Request-ID"]


async def test_max_tokens_and_stop_reach_the_engine(client) -> None:
    r = await client.post("/api/v1/text/generate", json={"prompt": "a b c d e", "max_tokens": 2})
    assert r.json()["data"] == {
        "text": "Echo: a",
        "generated_tokens": 2,
        "input_tokens": r.json()["data"]["input_tokens"],
        "finish_reason": "length",
    }
    r = await client.post("/api/v1/text/generate", json={"prompt": "one two three", "stop": "two"})
    assert r.json()["data"]["text"] == "Echo: one "
    # ignore_eos: exactly max_tokens, as the benchmarks' ideal engine (the fake) must give
    r = await client.post(
        "/api/v1/text/generate", json={"prompt": "a b", "max_tokens": 7, "ignore_eos": True}
    )
    data = r.json()["data"]
    assert data["text"] == "Echo: a b Echo: a b Echo:"
    assert (data["generated_tokens"], data["finish_reason"]) == (7, "length")


async def test_request_timeout_is_504(make_settings, fake_engines) -> None:
    engines = fake_engines(token_delay=0.1)
    async with running(settings=make_settings(request_timeout=0.2), engines=engines) as (_, client):
        r = await client.post("/api/v1/text/generate", json={"prompt": "a b c d e f g h"})
        assert r.status_code == 504
        assert r.json()["error"] == "timeout"
        assert r.headers["x-should-retry"] == "false"  # the OpenAI SDKs would retry twice
        await asyncio.sleep(0)
        # The abandoned generation was closed (started, then cancelled: not left running,
        # nor merely never begun, which would leave nothing active too).
        assert engines["avibe"].active == 0 and engines["avibe"].cancelled == 1


async def test_a_full_queue_answers_503_overloaded_with_retry_after_at_once(fake_engines) -> None:
    async with running(engines=fake_engines(max_concurrency=0)) as (_, client):
        r = await client.post("/api/v1/text/generate", json={"prompt": "hi"})
        assert r.status_code == 503
        assert r.json()["error"] == "overloaded"
        assert int(r.headers["Retry-After"]) >= 1
        o = await client.post(
            "/v1/chat/completions",
            json={"model": "avibe", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert o.status_code == 503 and o.json()["error"]["code"] == "overloaded"
        assert "Retry-After" in o.headers
