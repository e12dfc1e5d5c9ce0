"""Server-Sent Events for the native API and the OpenAI API."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from avito_ai.api.errors import error_body
from avito_ai.engines.base import Chunk
from avito_ai.errors import AvitoError
from avito_ai.services.generation import Completion

logger = logging.getLogger("avito_ai.sse")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(data: Any, name: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {name}\n" if name else "") + f"data: {payload}\n\n"


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


async def collect_stream(
    chunks: AsyncIterator[Chunk], on_delta: Callable[[str], str | None]
) -> AsyncIterator[str | Completion]:
    """Yield formatted delta events, then the Completion summary as the last item."""
    parts: list[str] = []
    async for chunk in chunks:
        if chunk.text:
            parts.append(chunk.text)
            formatted = on_delta(chunk.text)
            if formatted:
                yield formatted
        if chunk.is_final:
            yield Completion.from_final("".join(parts), chunk)
            return


def native_events(
    chunks: AsyncIterator[Chunk],
    request_id: str,
    final: Callable[[Completion], dict[str, Any]],
) -> AsyncIterator[str]:
    """`event: delta` per text delta, then `event: done` with the full response body,
    or `event: error` with the native error body if generation fails mid-stream."""

    async def events() -> AsyncIterator[str]:
        try:
            async for item in collect_stream(chunks, lambda t: event({"text": t}, "delta")):
                if isinstance(item, Completion):
                    yield event(final(item), "done")
                else:
                    yield item
        except AvitoError as exc:
            yield event(error_body(exc.code, exc.message, request_id, openai=False), "error")
        except Exception:
            logger.exception("Stream failed")
            yield event(
                error_body("internal_error", "Internal server error", request_id, openai=False),
                "error",
            )

    return events()


def completion_id(request_id: str, *, chat: bool) -> str:
    """OpenAI-style id, derived from the request id so logs and answers line up."""
    return ("chatcmpl-" if chat else "cmpl-") + request_id.replace("-", "")[:32]


def openai_events(
    chunks: AsyncIterator[Chunk],
    *,
    request_id: str,
    model: str,
    chat: bool,
    include_usage: bool,
) -> AsyncIterator[str]:
    """OpenAI streaming chunks ending with `data: [DONE]`."""
    cid = completion_id(request_id, chat=chat)
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def frame(choice: dict[str, Any] | None, usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {
            "id": cid,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [choice] if choice is not None else [],
        }
        if usage is not None:
            body["usage"] = usage
        return event(body)

    def delta(text: str) -> str:
        if chat:
            return frame({"index": 0, "delta": {"content": text}, "finish_reason": None})
        return frame({"index": 0, "text": text, "finish_reason": None, "logprobs": None})

    async def events() -> AsyncIterator[str]:
        if chat:
            yield frame(
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            )
        try:
            async for item in collect_stream(chunks, delta):
                if not isinstance(item, Completion):
                    yield item
                    continue
                last = (
                    {"index": 0, "delta": {}, "finish_reason": item.finish_reason}
                    if chat
                    else {"index": 0, "text": "", "finish_reason": item.finish_reason}
                )
                yield frame(last)
                if include_usage:
                    yield frame(
                        None,
                        {
                            "prompt_tokens": item.input_tokens,
                            "completion_tokens": item.generated_tokens,
                            "total_tokens": item.input_tokens + item.generated_tokens,
                        },
                    )
        except AvitoError as exc:
            yield event(error_body(exc.code, exc.message, request_id, openai=True))
        except Exception:
            logger.exception("Stream failed")
            yield event(
                error_body("internal_error", "Internal server error", request_id, openai=True)
            )
        yield event("[DONE]")

    return events()
