"""n > 1 choices for engines that make one answer per generation: n generations of the
same request, merged into one stream by choice index.

Each choice is a generation of its own, through the same admission (a place in the fair
queue, its reservation in the client's budgets): n choices count as n requests. Seeded
requests give choice i the seed + i, so the n answers differ and a repeated request gives
the same n. At temperature 0 every choice would be the one greedy answer: it is generated
once and given n times, and counted n times, as n answers: usage reports n times its tokens,
and the client's budgets are charged (and reserved: n times max_tokens) as usage says.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from avito_ai.engines.base import ChoiceEnd, Chunk, Engine, GenerationRequest
from avito_ai.errors import ModelUnavailable

# (engine, one choice's request, copies): copies is how many answers that one generation
# gives (n at temperature 0, else 1): its tokens are charged that many times.
Generate = Callable[[Engine, GenerationRequest, int], AsyncIterator[Chunk]]
_DONE = object()


def _one(request: GenerationRequest, index: int) -> GenerationRequest:
    sampling = request.sampling
    seed = None if sampling.seed is None else sampling.seed + index
    return dataclasses.replace(request, sampling=dataclasses.replace(sampling, n=1, seed=seed))


async def fan_out(
    generate: Generate, engine: Engine, request: GenerationRequest
) -> AsyncGenerator[Chunk, None]:
    n = request.sampling.n
    if request.sampling.temperature <= 0:
        async for chunk in _repeated(generate(engine, _one(request, 0), n), n):
            yield chunk
        return
    async for chunk in _merged([generate(engine, _one(request, i), 1) for i in range(n)]):
        yield chunk


async def _repeated(stream: AsyncIterator[Chunk], n: int) -> AsyncGenerator[Chunk, None]:
    async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
        async for chunk in chunks:
            if not chunk.is_final:
                for index in range(n):
                    yield dataclasses.replace(chunk, index=index)
                continue
            ends = tuple(
                ChoiceEnd(i, chunk.finish_reason or "stop", chunk.generated_tokens or 0)
                for i in range(n)
            )
            for index in range(n):
                if chunk.logprobs or chunk.text:
                    yield dataclasses.replace(chunk, index=index, finish_reason=None, timings=None)
            yield dataclasses.replace(
                chunk,
                text="",
                logprobs=None,
                generated_tokens=(chunk.generated_tokens or 0) * n,
                choices=ends,
            )
            return


async def _merged(streams: list[AsyncIterator[Chunk]]) -> AsyncGenerator[Chunk, None]:
    """Every stream's chunks as they come, tagged with its index; one final at the end."""
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Chunk]) -> None:
        try:
            async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    await queue.put((index, chunk))
            await queue.put((index, _DONE))
        except BaseException as exc:  # to the consumer, which decides
            await queue.put((index, exc))
            if isinstance(exc, asyncio.CancelledError):
                raise

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    finals: dict[int, Chunk] = {}
    try:
        while len(finals) < len(streams):
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is _DONE:
                if index not in finals:
                    raise ModelUnavailable("The model stopped without finishing the answer")
                continue
            assert isinstance(item, Chunk)
            if item.is_final:
                finals[index] = item
                if item.text or item.logprobs:  # its last text travels as a delta
                    yield dataclasses.replace(item, index=index, finish_reason=None, timings=None)
                continue
            yield dataclasses.replace(item, index=index)
        first = finals[0]
        assert first.timings is not None
        yield dataclasses.replace(
            first,
            text="",
            logprobs=None,
            generated_tokens=sum(f.generated_tokens or 0 for f in finals.values()),
            choices=tuple(
                ChoiceEnd(i, f.finish_reason or "stop", f.generated_tokens or 0)
                for i, f in sorted(finals.items())
            ),
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
