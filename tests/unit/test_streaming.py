"""Disconnects and early closes stop the engine's work; errors before the first token raise."""

from __future__ import annotations

import asyncio
import time

import pytest

from avito_ai.engines.base import ChatMessage, GenerationRequest, SamplingParams
from avito_ai.engines.fake import FakeEngine
from avito_ai.errors import ClientDisconnected, ModelUnavailable, Overloaded
from avito_ai.services.generation import GenerationService
from tests.conftest import isolated_settings
from tests.waiting import wait_until_async

# The generation service on its own: no fair admission in front of the engine.
SERVICE = GenerationService(isolated_settings(), {}, None)


def request(text: str = "a b c d e f g h i j", **kw) -> GenerationRequest:
    return GenerationRequest(
        request_id="t",
        sampling=SamplingParams(max_tokens=100),
        messages=[ChatMessage.text("user", text)],
        deadline=time.monotonic() + 30,
        **kw,
    )


async def ready_engine(**kw) -> FakeEngine:
    engine = FakeEngine("avibe", **kw)
    await engine.start()
    return engine


async def test_disconnect_cancels_a_non_streaming_generation() -> None:
    engine = await ready_engine(token_delay=0.05)
    disconnected = asyncio.Event()

    async def wait_disconnect() -> None:
        await disconnected.wait()

    task = asyncio.create_task(SERVICE.complete(engine, request(), disconnected=wait_disconnect))
    await wait_until_async(lambda: engine.active == 1, 5, "the generation running")
    disconnected.set()
    with pytest.raises(ClientDisconnected):
        await task
    assert engine.active == 0 and engine.cancelled == 1


async def test_closing_a_stream_early_frees_the_engine() -> None:
    engine = await ready_engine(token_delay=0.01)
    stream = await SERVICE.stream(engine, request())
    first = await anext(stream)
    assert first.text == "Echo:"
    await stream.aclose()
    assert engine.active == 0 and engine.cancelled == 1


async def test_errors_before_the_first_token_raise_when_the_stream_opens() -> None:
    engine = await ready_engine(max_concurrency=0)
    with pytest.raises(Overloaded):
        await SERVICE.stream(engine, request())
    await engine.stop()
    with pytest.raises(ModelUnavailable):
        await SERVICE.stream(engine, request())


async def test_a_cancelled_generation_is_counted_as_cancelled() -> None:
    from avito_ai.observability.metrics import MODEL_REQUESTS

    counter = MODEL_REQUESTS.labels("avibe", "cancelled")
    before = counter._value.get()
    engine = await ready_engine(token_delay=0.01)
    stream = await SERVICE.stream(engine, request())
    await anext(stream)
    await stream.aclose()
    assert counter._value.get() == before + 1
