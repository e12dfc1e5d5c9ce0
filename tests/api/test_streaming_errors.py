"""An error after a stream has begun arrives as an error event, never a silently cut stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from avito_ai.engines.base import Chunk, GenerationRequest
from avito_ai.engines.fake import FakeEngine
from avito_ai.errors import Timeout
from tests.conftest import engine_set, isolated_settings

from .conftest import running
from .test_metrics import grown, rejections_now


class FailsMidStream(FakeEngine):
    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        yield Chunk("Начало")
        raise Timeout("Request timed out")


def engines() -> dict:
    return engine_set(FailsMidStream("avibe"))


async def test_native_stream_ends_with_an_error_event() -> None:
    async with running(engines=engines()) as (_, client):
        r = await client.post("/api/v1/text/generate", json={"prompt": "hi", "stream": True})
        assert r.status_code == 200
        blocks = [b for b in r.text.strip().split("\n\n") if b]
        assert blocks[0] == 'event: delta\ndata: {"text": "Начало"}'
        name, data = blocks[-1].split("\n")
        assert name == "event: error"
        body = json.loads(data.removeprefix("data: "))
        assert body == {
            "error": "timeout",
            "message": "Request timed out",
            "request_id": r.headers["X-Request-ID"],
        }


async def test_openai_stream_ends_with_an_error_then_done() -> None:
    async with running(engines=engines()) as (_, client):
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "avibe",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        )
        lines = [ln for ln in r.text.splitlines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2].removeprefix("data: "))["error"]
        assert error["code"] == "timeout" and error["type"] == "timeout_error"


CHAT = {"model": "avibe", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/v1/text/generate", {"prompt": "hi", "stream": True}), ("/v1/chat/completions", CHAT)],
)
async def test_an_error_after_the_stream_began_is_counted_once(path: str, body: dict) -> None:
    async with running(isolated_settings(rate_limit_per_minute=1000), engines()) as (_, client):
        before = await rejections_now(client)
        r = await client.post(path, json=body)
        assert r.status_code == 200 and "timeout" in r.text
        assert grown(before, await rejections_now(client)) == {"timeout": 1.0}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/text/generate", {"prompt": "a b c d e f g h", "stream": True}),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": "a b c d e f g h"}]},
        ),
    ],
)
async def test_a_request_timeout_mid_stream_is_counted_once(path: str, body: dict) -> None:
    settings = isolated_settings(rate_limit_per_minute=1000, request_timeout=0.3)
    async with running(settings, engine_set(token_delay=0.1)) as (_, client):
        before = await rejections_now(client)
        r = await client.post(path, json=body)
        assert r.status_code == 200
        assert r.text.count('"text"') + r.text.count('"content"') >= 2  # it had begun
        assert "timeout" in r.text and "Request timed out" in r.text
        assert grown(before, await rejections_now(client)) == {"timeout": 1.0}
