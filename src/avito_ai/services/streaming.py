"""Streaming and disconnect handling shared by every front door.

Errors that happen before the first token (queue full, model unavailable, timeout while
queued) must still be proper HTTP errors, so a stream is only opened once the first chunk
is in hand. Later errors travel inside the stream (the caller formats them as events).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

from avito_ai.engines.base import Chunk, Engine, GenerationRequest
from avito_ai.errors import ClientDisconnected
from avito_ai.services.generation import stream_chunks

T = TypeVar("T")


async def open_stream(engine: Engine, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
    """Start generating and wait for the first chunk; raise here if that fails."""
    iterator = stream_chunks(engine, request)
    try:
        first = await anext(iterator)
    except BaseException:
        await iterator.aclose()
        raise

    async def rest() -> AsyncGenerator[Chunk, None]:
        try:
            yield first
            if first.is_final:
                return
            async for chunk in iterator:
                yield chunk
        finally:
            # Client gone or stream finished: either way the engine stops working for it.
            await iterator.aclose()

    return rest()


async def preceded_by(text: str, chunks: AsyncGenerator[Chunk, None]) -> AsyncIterator[Chunk]:
    """`text` as a first delta, then the engine's chunks (an echoed prompt). Closing this
    closes `chunks` at once, so the engine stops working for a client that left."""
    async with contextlib.aclosing(chunks) as inner:
        yield Chunk(text)
        async for chunk in inner:
            yield chunk


async def unless_disconnected(
    work: Awaitable[T], wait_disconnect: Callable[[], Awaitable[None]]
) -> T:
    """Run `work`, cancelling it (and so the generation) if the client disconnects first.

    Non-streaming endpoints need this: the server only notices a vanished client when it
    reads from the connection, and a long generation would otherwise run to the end.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected("Client disconnected before the answer was ready")
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
