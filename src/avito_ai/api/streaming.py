"""The stream driver every dialect shares, and the block sequencer of the dialects whose
answers are blocks (Anthropic's content blocks, the Responses API's output items).

`drive` is the one loop: the encoder's opening frames, a frame list per delta and for the
Answer, and, when the generation fails after the 200 went out, the dialect's error frames
(a failure cannot change the status any more); closing the stream (the client left)
closes the generation, which stops the engine's work for it. Each dialect supplies a
`StreamEncoder`: what its frames are, nothing about the loop.

`BlockSequence` opens a block when its first delta comes and closes it when another kind
begins: thinking, then text, then each tool call (a call's first piece names it, the next
ones carry its arguments). A dialect says what opening, filling and closing a block
writes.

Per-event cost: frames are built straight from the chunk (no pydantic validation per
event); the encoders that use pydantic classes build them with `model_construct`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Literal, Protocol

from avito_ai.engines.base import Chunk, TokenLogprob, ToolCallPiece
from avito_ai.services.answers import Answer

Frames = Sequence[str]


class StreamEncoder(Protocol):
    """A dialect's frames (Server-Sent Events, api/sse.py) for one streamed answer."""

    def start(self) -> Frames:
        """Before the first delta (a message's start, a chat's role opening)."""
        ...

    def delta(self, chunk: Chunk) -> Frames:
        """A delta: thinking, text (with its logprobs), pieces of tool calls."""
        ...

    def finish(self, answer: Answer) -> Frames:
        """The whole Answer arrived: how each choice ended, the usage."""
        ...

    def failure(self, exc: BaseException) -> Frames:
        """The generation failed after the stream began: the dialect's error event(s)."""
        ...

    def end(self) -> Frames:
        """After everything, failed or not (OpenAI's `data: [DONE]`)."""
        ...


async def drive(
    items: AsyncGenerator[Chunk | Answer, None], encoder: StreamEncoder
) -> AsyncIterator[str]:
    """The stream's frames, `encoder`'s for each item of the generation. Closing it closes
    `items`, which stops the generation."""
    try:
        for frame in encoder.start():
            yield frame
        async for item in items:
            frames = encoder.finish(item) if isinstance(item, Answer) else encoder.delta(item)
            for frame in frames:
                yield frame
    except Exception as exc:
        for frame in encoder.failure(exc):
            yield frame
    finally:
        await items.aclose()  # a client gone: the generation is cancelled
    for frame in encoder.end():
        yield frame


BlockKind = Literal["thinking", "text", "call"]


class BlockSequence(ABC):
    """Blocks in the order their content comes: thinking, text, tool calls, one open at a
    time. Subclasses write what opening, filling and closing a block sends."""

    def __init__(self) -> None:
        self.open_kind: BlockKind | None = None

    def delta(self, chunk: Chunk) -> list[str]:
        out: list[str] = []
        if chunk.reasoning:
            if self.open_kind != "thinking":
                out += self._switch("thinking")
                out += self.begin_thinking()
            out += self.thinking(chunk.reasoning)
        if chunk.text:
            if self.open_kind != "text":
                out += self._switch("text")
                out += self.begin_text()
            out += self.text(chunk.text, chunk.logprobs)
        for piece in chunk.tool_calls:
            if piece.id is not None:  # a new call: its block opens
                out += self._switch("call")
                out += self.begin_call(piece)
            if piece.arguments:
                out += self.arguments(piece)
        return out

    def _switch(self, kind: BlockKind) -> list[str]:
        out = self.close_block()
        self.open_kind = kind
        return out

    def close_block(self) -> list[str]:
        """Close the open block (nothing when none is)."""
        if self.open_kind is None:
            return []
        self.open_kind = None
        return self.end_block()

    # What a dialect writes:

    @abstractmethod
    def begin_thinking(self) -> list[str]: ...

    @abstractmethod
    def thinking(self, text: str) -> list[str]: ...

    @abstractmethod
    def begin_text(self) -> list[str]: ...

    @abstractmethod
    def text(self, text: str, logprobs: Sequence[TokenLogprob] | None) -> list[str]: ...

    @abstractmethod
    def begin_call(self, piece: ToolCallPiece) -> list[str]: ...

    @abstractmethod
    def arguments(self, piece: ToolCallPiece) -> list[str]:
        """More of the call `piece.index`'s arguments."""

    @abstractmethod
    def end_block(self) -> list[str]:
        """Close the block that was open."""
