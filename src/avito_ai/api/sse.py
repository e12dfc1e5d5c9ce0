"""Server-Sent Events for the native API and the OpenAI API."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from avito_ai.api.errors import error_body
from avito_ai.engines.base import Chunk
from avito_ai.errors import AvitoError
from avito_ai.services.generation import Answer, AnswerCollector
from avito_ai.services.openai_compat import StreamChunks

logger = logging.getLogger("avito_ai.sse")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(data: Any, name: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {name}\n" if name else "") + f"data: {payload}\n\n"


def failure_body(exc: Exception, request_id: str, *, openai: bool) -> dict[str, Any]:
    """The error body of a failure after the stream began (the 200 is already sent)."""
    if not isinstance(exc, AvitoError):
        logger.error("Stream failed", exc_info=exc, extra={"request_id": request_id})
        exc = AvitoError("Internal server error")
    return error_body(exc.code, exc.message, request_id, openai=openai)


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


async def collect_stream(
    chunks: AsyncIterator[Chunk], on_delta: Callable[[Chunk], str | None], logprobs: bool = False
) -> AsyncIterator[str | Answer]:
    """Yield formatted delta events, then the Answer summary as the last item."""
    collector = AnswerCollector(logprobs)
    async for chunk in chunks:
        if chunk.text or chunk.logprobs:  # (a final chunk's text and logprobs as a delta)
            formatted = on_delta(dataclasses.replace(chunk, finish_reason=None, timings=None))
            if formatted:
                yield formatted
        answer = collector.add(chunk)
        if answer is not None:
            yield answer
            return


def native_events(
    chunks: AsyncIterator[Chunk],
    request_id: str,
    final: Callable[[Answer], dict[str, Any]],
) -> AsyncIterator[str]:
    """`event: delta` per text delta, then `event: done` with the full response body,
    or `event: error` with the native error body if generation fails mid-stream."""

    async def events() -> AsyncIterator[str]:
        try:
            async for item in collect_stream(
                chunks, lambda c: event({"text": c.text}, "delta") if c.text else None
            ):
                if isinstance(item, Answer):
                    yield event(final(item), "done")
                else:
                    yield item
        except Exception as exc:
            yield event(failure_body(exc, request_id, openai=False), "error")

    return events()


def openai_events(
    chunks: AsyncIterator[Chunk], frames: StreamChunks, *, include_usage: bool
) -> AsyncIterator[str]:
    """OpenAI streaming chunks ending with `data: [DONE]`."""

    async def events() -> AsyncIterator[str]:
        for opening in frames.openings():
            yield event(opening)
        try:
            async for item in collect_stream(
                chunks, lambda chunk: event(frames.delta(chunk)), frames.logprobs
            ):
                if not isinstance(item, Answer):
                    yield item
                    continue
                for finish in frames.finishes(item):
                    yield event(finish)
                if include_usage:
                    yield event(frames.usage(item))
        except Exception as exc:
            yield event(failure_body(exc, frames.request_id, openai=True))
        yield event("[DONE]")

    return events()
