"""Anthropic's answer shapes: an Answer → a Message, and the events of a streamed one
(message_start, content blocks opened, filled and closed in order, message_delta,
message_stop), as the SDK's stream accumulator reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from avito_ai.api.anthropic.protocol import (
    ContentBlock,
    Message,
    StopReason,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
    Usage,
)
from avito_ai.engines.base import Chunk, ToolCallPiece
from avito_ai.services.answers import Answer
from avito_ai.services.tools import partial_object

# An event: its name (the SSE `event:` line, also its data's `type`) and its data.
Event = tuple[str, dict[str, Any]]
BlockKind = Literal["thinking", "text", "tool_use"]
_STOP_REASONS: dict[str, StopReason] = {
    "length": "max_tokens",
    "tool_calls": "tool_use",
}


def message_id(request_id: str) -> str:
    """Anthropic-style id, derived from the request id so logs and answers line up."""
    return "msg_" + request_id.replace("-", "")[:32]


def tool_use_id(call_id: str) -> str:
    """A call's id as Anthropic writes them (toolu_...), the same streamed and whole."""
    return call_id if call_id.startswith("toolu_") else "toolu_" + call_id.removeprefix("call_")


def stop_reason(answer: Answer) -> StopReason:
    """stop → end_turn, or stop_sequence when the answer ended at one of the request's
    `stop_sequences` (serving cuts at them itself, and knows which: api/anthropic/stops.py)."""
    if answer.stop_sequence is not None:
        return "stop_sequence"
    return _STOP_REASONS.get(answer.finish_reason, "end_turn")


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments (JSON text, an object by the parser's rule) as its `input`; a call
    cut by max_tokens: what its arguments hold so far."""
    return partial_object(arguments)


def content_blocks(answer: Answer) -> list[ContentBlock]:
    """Thinking, then the text, then the calls. A text block, empty if need be, unless the
    answer only called tools (the stream ends the same way)."""
    blocks: list[ContentBlock] = []
    if answer.reasoning:
        blocks.append(ThinkingBlock(thinking=answer.reasoning))
    if answer.text or not answer.tool_calls:
        blocks.append(TextBlock(text=answer.text))
    blocks += [
        ToolUseBlock(id=tool_use_id(c.id), name=c.name, input=tool_input(c.arguments))
        for c in answer.tool_calls
    ]
    return blocks


def usage(answer: Answer) -> Usage:
    return Usage(input_tokens=answer.input_tokens, output_tokens=answer.generated_tokens)


def message(answer: Answer, request_id: str, model: str) -> Message:
    return Message(
        id=message_id(request_id),
        model=model,
        content=content_blocks(answer),
        stop_reason=stop_reason(answer),
        stop_sequence=answer.stop_sequence,
        usage=usage(answer),
    )


@dataclass
class StreamEvents:
    """The events of one streamed answer. A block opens when its first delta comes and
    closes when another begins: thinking, text, then each tool call, indices increasing."""

    request_id: str
    model: str
    input_tokens: int  # counted before the answer (message_start); the final count at the end
    _open: BlockKind | None = None
    _index: int = -1
    _calls: dict[int, int] = field(default_factory=dict)  # call index → block index
    _texts: int = 0  # text blocks opened

    def start(self) -> list[Event]:
        body = Message(
            id=message_id(self.request_id),
            model=self.model,
            content=[],
            stop_reason=None,
            usage=Usage(input_tokens=self.input_tokens, output_tokens=0),
        )
        return [("message_start", {"type": "message_start", "message": body.model_dump()})]

    def _begin(self, kind: BlockKind, block: dict[str, Any]) -> list[Event]:
        events = self._close()
        self._index += 1
        self._open = kind
        self._texts += kind == "text"
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": self._index, "content_block": block},
            )
        )
        return events

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _delta(self, index: int, delta: dict[str, Any]) -> Event:
        return (
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": delta},
        )

    def delta(self, chunk: Chunk) -> list[Event]:
        events: list[Event] = []
        if chunk.reasoning:
            if self._open != "thinking":
                events += self._begin(
                    "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                )
            events.append(
                self._delta(self._index, {"type": "thinking_delta", "thinking": chunk.reasoning})
            )
        if chunk.text:
            if self._open != "text":
                events += self._begin("text", {"type": "text", "text": ""})
            events.append(self._delta(self._index, {"type": "text_delta", "text": chunk.text}))
        for piece in chunk.tool_calls:
            events += self._piece(piece)
        return events

    def _piece(self, piece: ToolCallPiece) -> list[Event]:
        events: list[Event] = []
        if piece.id is not None:
            block = {
                "type": "tool_use",
                "id": tool_use_id(piece.id),
                "name": piece.name or "",
                "input": {},
            }
            events += self._begin("tool_use", block)
            self._calls[piece.index] = self._index
        index = self._calls.get(piece.index)
        if index is not None and piece.arguments:
            events.append(
                self._delta(index, {"type": "input_json_delta", "partial_json": piece.arguments})
            )
        return events

    def finish(self, answer: Answer) -> list[Event]:
        events: list[Event] = []
        if not self._texts and not answer.tool_calls:
            events += self._begin("text", {"type": "text", "text": ""})  # as content_blocks
        events += self._close()
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": stop_reason(answer),
                        "stop_sequence": answer.stop_sequence,
                    },
                    # cumulative, as Anthropic's: the final counts
                    "usage": {
                        "input_tokens": answer.input_tokens,
                        "output_tokens": answer.generated_tokens,
                    },
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events
