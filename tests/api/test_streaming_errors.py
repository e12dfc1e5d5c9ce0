"""An error after a stream has begun arrives as an error event, never a silently cut stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from avito_ai.engines.base import Chunk, GenerationRequest
from avito_ai.engines.fake import FakeEngine
from avito_ai.errors import Timeout
from tests.conftest import engine_set

from .conftest import running


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
