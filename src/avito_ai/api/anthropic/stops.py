"""Anthropic's `stop_sequences`, cut here rather than by the engine, so the message can say
which one ended it (`stop_reason: "stop_sequence"`, `stop_sequence`): the engines end at a
stop string and at their end of turn alike ("stop").

The engine runs without the stop sequences; the answer's text deltas pass through a
matcher that holds back what could begin one and cuts before the first that appears. On
a match the generation is closed at once (the engine stops within a step; what it made
is charged as usual) and the answer ends there: its text up to the sequence, its calls,
its counts so far. Thinking and tool calls are not cut (the engines do not cut them
either)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence

from avito_ai.engines.base import Chunk, Timings, ToolCall
from avito_ai.engines.textstream import partial_suffix_len
from avito_ai.services.answers import Answer, ChoiceAnswer


class StopCut:
    """Text deltas → the text before the first stop sequence, and which one it was."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        if self.matched is not None:
            return ""
        buf = self._held + text
        hits = [(at, -len(s), s) for s in self._stops if (at := buf.find(s)) >= 0]
        if hits:
            at, _, self.matched = min(hits)  # the first to appear (the longest, at a tie)
            self._held = ""
            return buf[:at]
        keep = partial_suffix_len(buf, self._stops)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def finish(self) -> str:
        held, self._held = self._held, ""
        return "" if self.matched is not None else held


async def cut_at_stops(
    items: AsyncGenerator[Chunk | Answer, None], stops: Sequence[str], input_tokens: int
) -> AsyncGenerator[Chunk | Answer, None]:
    """`items` (deltas, then the Answer) cut before the first of `stops`: then an Answer of
    what came before it, with `stop_sequence` set. `input_tokens`: the prompt's, counted
    before (the engine's own count comes only with its end)."""
    cut = StopCut(stops)
    started = time.monotonic()
    first: float | None = None
    texts: list[str] = []
    thoughts: list[str] = []
    calls: dict[int, list[str]] = {}  # index → id, name, arguments
    generated = 0
    try:
        async for item in items:
            if isinstance(item, Answer):  # the engine ended first: nothing was cut
                tail = cut.finish()
                if tail:
                    yield Chunk(tail)
                yield item
                return
            first = first or time.monotonic()
            if item.generated_tokens is not None:
                generated = item.generated_tokens
            elif item.text:
                generated += 1  # (as the services charge an engine that does not count)
            text = cut.feed(item.text) if item.text else ""
            texts.append(text)
            thoughts.append(item.reasoning)
            for piece in item.tool_calls:
                call = calls.setdefault(piece.index, [piece.id or "", piece.name or "", ""])
                call[2] += piece.arguments
            if text or item.reasoning or item.tool_calls:
                yield Chunk(text, reasoning=item.reasoning, tool_calls=item.tool_calls)
            if cut.matched is not None:
                yield _stopped(
                    "".join(texts),
                    "".join(thoughts),
                    tuple(ToolCall(*calls[i]) for i in sorted(calls)),
                    cut.matched,
                    input_tokens,
                    generated,
                    started,
                    first,
                )
                return
    finally:
        await items.aclose()  # a sequence matched: the engine stops here


def _stopped(
    text: str,
    reasoning: str,
    calls: tuple[ToolCall, ...],
    matched: str,
    input_tokens: int,
    generated: int,
    started: float,
    first: float | None,
) -> Answer:
    now = time.monotonic()
    ttft = (first or now) - started
    timings = Timings(queue_s=0.0, ttft_s=ttft, generation_s=now - started, total_s=now - started)
    choice = ChoiceAnswer(0, text, "stop", generated, None, reasoning, calls)
    return Answer(
        text=text,
        finish_reason="stop",
        input_tokens=input_tokens,
        generated_tokens=generated,
        timings=timings,
        choices=(choice,),
        reasoning=reasoning,
        tool_calls=calls,
        stop_sequence=matched,
    )
