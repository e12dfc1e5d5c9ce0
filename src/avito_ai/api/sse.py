"""Server-Sent Events for the native API and the OpenAI API."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from avito_ai.api.errors import error_body
from avito_ai.engines.base import Chunk
from avito_ai.errors import AvitoError
from avito_ai.services.generation import Answer
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
    chunks: AsyncIterator[Chunk], on_delta: Callable[[str], str | None]
) -> AsyncIterator[str | Answer]:
    """Yield formatted delta events, then the Answer summary as the last item."""
    parts: list[str] = []
    async for chunk in chunks:
        if chunk.text:
            parts.append(chunk.text)
            formatted = on_delta(chunk.text)
            if formatted:
                yield formatted
        if chunk.is_final:
            yield Answer.from_final("".join(parts), chunk)
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
            async for item in collect_stream(chunks, lambda t: event({"text": t}, "delta")):
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
        opening = frames.opening()
        if opening is not None:
            yield event(opening)
        try:
            async for item in collect_stream(chunks, lambda text: event(frames.delta(text))):
                if not isinstance(item, Answer):
                    yield item
                    continue
                yield event(frames.finish(item))
                if include_usage:
                    yield event(frames.usage(item))
        except Exception as exc:
            yield event(failure_body(exc, frames.request_id, openai=True))
        yield event("[DONE]")

    return events()
