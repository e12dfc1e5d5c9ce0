"""Anthropic's answer shapes: an Answer → a Message, and the events of a streamed one
(message_start, content blocks opened, filled and closed in order, message_delta,
message_stop), as the SDK's stream accumulator reads them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from avito_ai.api.anthropic.protocol import (
    ContentBlock,
    Message,
    StopReason,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
    Usage,
)
from avito_ai.api.errors import stream_failure
from avito_ai.api.sse import event
from avito_ai.api.streaming import BlockSequence
from avito_ai.engines.base import TokenLogprob, ToolCallPiece
from avito_ai.services.answers import Answer
from avito_ai.services.tools import partial_object

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


class StreamEvents(BlockSequence):
    """The events of one streamed answer (api/streaming.py drives them). A block opens when
    its first delta comes and closes when another begins: thinking, text, then each tool
    call, indices increasing."""

    def __init__(self, request_id: str, model: str, input_tokens: int) -> None:
        super().__init__()
        self.request_id = request_id
        self.model = model
        self.input_tokens = input_tokens  # counted before the answer; the final at the end
        self._index = -1
        self._calls: dict[int, int] = {}  # call index → block index
        self._texts = 0  # text blocks opened

    def start(self) -> list[str]:
        body = Message(
            id=message_id(self.request_id),
            model=self.model,
            content=[],
            stop_reason=None,
            usage=Usage(input_tokens=self.input_tokens, output_tokens=0),
        )
        return [_event("message_start", message=body.model_dump())]

    def _begin(self, block: dict[str, Any]) -> list[str]:
        self._index += 1
        return [_event("content_block_start", index=self._index, content_block=block)]

    def end_block(self) -> list[str]:
        return [_event("content_block_stop", index=self._index)]

    def _delta(self, index: int, delta: dict[str, Any]) -> list[str]:
        return [_event("content_block_delta", index=index, delta=delta)]

    def begin_thinking(self) -> list[str]:
        return self._begin({"type": "thinking", "thinking": "", "signature": ""})

    def thinking(self, text: str) -> list[str]:
        return self._delta(self._index, {"type": "thinking_delta", "thinking": text})

    def begin_text(self) -> list[str]:
        self._texts += 1
        return self._begin({"type": "text", "text": ""})

    def text(self, text: str, logprobs: Sequence[TokenLogprob] | None) -> list[str]:
        return self._delta(self._index, {"type": "text_delta", "text": text})

    def begin_call(self, piece: ToolCallPiece) -> list[str]:
        assert piece.id is not None
        block = {"type": "tool_use", "id": tool_use_id(piece.id), "name": piece.name or ""}
        out = self._begin({**block, "input": {}})
        self._calls[piece.index] = self._index
        return out

    def arguments(self, piece: ToolCallPiece) -> list[str]:
        index = self._calls.get(piece.index)
        if index is None:
            return []
        return self._delta(index, {"type": "input_json_delta", "partial_json": piece.arguments})

    def finish(self, answer: Answer) -> list[str]:
        out: list[str] = []
        if not self._texts and not answer.tool_calls:  # an empty text, as content_blocks
            out += self.close_block()
            self.open_kind = "text"
            out += self.begin_text()
        out += self.close_block()
        # usage cumulative, as Anthropic's: the final counts
        usage = {"input_tokens": answer.input_tokens, "output_tokens": answer.generated_tokens}
        delta = {"stop_reason": stop_reason(answer), "stop_sequence": answer.stop_sequence}
        out.append(_event("message_delta", delta=delta, usage=usage))
        out.append(_event("message_stop"))
        return out

    def failure(self, exc: BaseException) -> list[str]:
        """An `error` event: the stream ends there."""
        return [event(stream_failure(exc, self.request_id, "anthropic"), "error")]

    def end(self) -> list[str]:
        return []


def _event(kind: str, **data: Any) -> str:
    """An event named by its type (the SSE `event:` line, also its data's `type`)."""
    return event({"type": kind, **data}, kind)
