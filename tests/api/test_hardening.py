"""Input a careless or hostile client sends: a clear 400 naming the field, never a 500."""

from __future__ import annotations

import pytest

from tests.conftest import isolated_settings

from .conftest import running


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/text/generate", '{"prompt": "hi \\ud800"}', "prompt"),
        ("/api/v1/text/generate", '{"prompt": "hi", "stop": ["\\udfff"]}', "stop"),
        (
            "/v1/chat/completions",
            '{"model": "avibe", "messages": [{"role": "user", "content": "a \\ud800 b"}]}',
            "messages.0.content",
        ),
        ("/v1/completions", '{"model": "avibe", "prompt": "\\ud83d"}', "prompt"),
    ],
)
async def test_a_lone_surrogate_is_400_naming_the_field(path: str, body: str, field: str) -> None:
    async with running() as (_, client):
        r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        param = error["param"] if isinstance(error, dict) else r.json()["message"]
        assert field in param
        assert "surrogate" in r.text


@pytest.mark.parametrize("seed", [2**53, 2**64, -(2**53)])
@pytest.mark.parametrize("path", ["/api/v1/text/generate", "/v1/completions"])
async def test_a_seed_out_of_range_is_400_naming_seed(path: str, seed: int) -> None:
    body = {"prompt": "hi", "seed": seed, "model": "avibe"}
    async with running() as (_, client):
        r = await client.post(path, json=body)
        assert r.status_code == 400, r.text
        assert "seed" in r.text
        stream = await client.post(path, json={**body, "stream": True})
        assert stream.status_code == 400
    async with running() as (_, client):  # the edges themselves are accepted
        for ok in (2**53 - 1, -(2**53) + 1):  # JSON-safe integers
            assert (await client.post(path, json={**body, "seed": ok})).status_code == 200


async def test_the_form_renders_a_seed_error_in_the_page() -> None:
    async with running() as (_, client):
        r = await client.post("/avibe", data={"prompt": "hi", "seed": str(2**53)})
        assert r.status_code == 400
        assert r.headers["content-type"].startswith("text/html")
        assert "seed" in r.text


@pytest.mark.parametrize(
    ("extra", "field", "fine"),
    [
        # (the deprecated form of tools)
        ({"functions": [{"name": "f"}]}, "functions", {"functions": None}),
        # (JSON is supported)
        ({"response_format": {"type": "yaml"}}, "response_format", {"response_format": None}),
        # (logprobs and n > 1 are supported)
        ({"logprobs": "yes"}, "logprobs", {"logprobs": True}),
        ({"n": 0}, "n", {"n": 2}),
        ({"temperature": True}, "temperature", {"temperature": 1}),
        ({"temperature": "0.5"}, "temperature", {"temperature": 0.5}),
        ({"max_tokens": "10"}, "max_tokens", {"max_tokens": 10}),
    ],
)
async def test_unsupported_or_mistyped_openai_fields_are_refused(
    extra: dict, field: str, fine: dict
) -> None:
    """The refusal is for the value: the same request with a value the field takes is
    answered."""
    body = {"model": "avibe", "messages": [{"role": "user", "content": "hi"}], **extra}
    async with running() as (_, client):
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == field
        ok = await client.post("/v1/chat/completions", json={**body, **fine})
        assert ok.status_code == 200, ok.text


async def test_head_answers_like_get_without_a_body() -> None:
    async with running() as (_, client):
        for path in ("/api/health", "/api/health/live", "/", "/openapi.json"):
            get, head = await client.get(path), await client.head(path)
            assert head.status_code == get.status_code == 200, path
            assert head.content == b""
            assert head.headers["content-type"] == get.headers["content-type"]


async def test_the_vision_form_answers_503_before_reading_an_upload() -> None:
    async with running() as (_, client):  # A-Vision not configured
        r = await client.post(
            "/avision", files={"image": ("big.png", b"x" * 5_000_000, "image/png")}
        )
        assert r.status_code == 503
        assert r.headers["content-type"].startswith("text/html")
        assert "AVISION_MODEL" in r.text


async def test_a_flood_of_empty_chat_messages_is_refused_before_any_work() -> None:
    """600,000 `{"role": "system"}` (12 MB) once held the event loop for 19 s."""
    import json
    import time

    flood = [{"role": "system"}] * 600_000 + [{"role": "user", "content": "hi"}]
    body = json.dumps({"model": "avibe", "messages": flood})
    async with running() as (_, client):
        began = time.monotonic()
        r = await client.post(
            "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413, r.text
        assert "without images" in r.json()["error"]["message"]
        assert time.monotonic() - began < 2
        few = {"model": "avibe", "messages": [{"role": "system"}, {"role": "user", "content": "x"}]}
        r = await client.post("/v1/chat/completions", json=few)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content"
        many = [{"role": "user", "content": "x"}] * 300
        r = await client.post("/v1/chat/completions", json={"model": "avibe", "messages": many})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


async def test_a_stalled_upload_is_408_after_the_read_timeout() -> None:
    import asyncio
    import time

    async def stalling():
        yield b'{"prompt": "a long'
        await asyncio.sleep(30)  # the behaviour under test: the client stops sending
        yield b' story"}'

    async with running(isolated_settings(body_read_timeout=0.3)) as (_, client):
        began = time.monotonic()
        r = await client.post(
            "/api/v1/text/generate",
            content=stalling(),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 408, r.text
        assert r.json()["error"] == "request_timeout"
        assert time.monotonic() - began < 5


async def test_a_one_value_form_field_sent_twice_is_refused() -> None:
    async with running() as (_, client):
        r = await client.post(
            "/avibe",
            content="prompt=a&prompt=b",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 400 and "prompt: send it once" in r.text
        assert r.headers["content-type"].startswith("text/html")
        ok = await client.post(
            "/avibe",
            content="prompt=a&stop=x&stop=y",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert ok.status_code == 200  # stop may repeat: one stop string per field


async def test_a_whole_float_is_an_integer_as_json_schema_says() -> None:
    async with running() as (_, client):
        ok = await client.post("/api/v1/text/generate", json={"prompt": "hi", "max_tokens": 5.0})
        assert ok.status_code == 200 and ok.json()["data"]["generated_tokens"] <= 5
        for bad in (5.5, "5", True):
            r = await client.post("/api/v1/text/generate", json={"prompt": "hi", "max_tokens": bad})
            assert r.status_code == 400 and "max_tokens" in r.text, bad


@pytest.mark.parametrize("stop", ["s" * 200_000, ["ok", "s" * 257]])
async def test_stop_strings_are_bounded_in_length(stop: object) -> None:
    async with running() as (_, client):
        r = await client.post("/api/v1/text/generate", json={"prompt": "hi", "stop": stop})
        assert r.status_code == 400
        assert "stop" in r.json()["message"] and "256 characters" in r.json()["message"]
        fine = await client.post("/api/v1/text/generate", json={"prompt": "hi", "stop": "s" * 256})
        assert fine.status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [("top_p", 1e-300), ("temperature", 1e-50), ("repetition_penalty", 1e-300)],
)
async def test_values_float32_cannot_hold_are_400_in_our_words(field: str, value: float) -> None:
    """Refused before any engine sees them (an engine's own message would name its
    internals)."""
    body = {"prompt": "hi", "max_tokens": 4, "temperature": 0.7, field: value}
    async with running() as (_, client):
        r = await client.post("/api/v1/text/generate", json=body)
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert field in message and "float32" in message
    assert ".cpp" not in message and "jenkins" not in message


@pytest.mark.parametrize(
    "extra",
    [
        {"best_of": 2},
        {"logit_bias": {"42": 5}},
        {"suffix": "!"},
        {"stream_options": {"include_usage": True}},  # without stream
    ],
)
async def test_openai_fields_this_server_does_not_do_are_refused(extra: dict) -> None:
    body = {"model": "avibe", "prompt": "hi", "max_tokens": 4, **extra}
    async with running() as (_, client):
        r = await client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == next(iter(extra))
