"""A streamed response's events, as OpenAI sends them (and the SDK's stream helper
accumulates them): `response.created`, `response.in_progress`, then for each output item
`response.output_item.added`, its content (`response.content_part.added`,
`response.output_text.delta`... / `response.reasoning_text.delta`... /
`response.function_call_arguments.delta`...), its `.done` events and
`response.output_item.done`; last `response.completed` (or `response.incomplete` when
max_output_tokens cut the answer), or `error` then `response.failed`.

Each event is named by its type (`event: response.output_text.delta`), and
`sequence_number` counts every event from 0. Items open in the order their content comes:
thinking, text, calls; an item closes when the next one opens, or at the end.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from avito_ai.api.errors import stream_failure
from avito_ai.api.responses.objects import (
    ItemStatus,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputReasoning,
    OutputText,
    ReasoningText,
    ResponseError,
)
from avito_ai.api.responses.output import ResponseFrame, logprobs, status_of
from avito_ai.api.sse import event
from avito_ai.api.streaming import BlockSequence, drive
from avito_ai.engines.base import Chunk, TokenLogprob, ToolCallPiece
from avito_ai.services.answers import Answer

# Our error codes as the response object's `error.code` (OpenAI's few); the `error`
# event carries our own code.
_RESPONSE_CODES = {
    "rate_limit_exceeded": "rate_limit_exceeded",
    "validation_error": "invalid_prompt",
}


def _delta_logprobs(tokens: Sequence[TokenLogprob] | None) -> list[dict[str, Any]]:
    return [
        {
            "token": t.token,
            "logprob": t.logprob,
            "top_logprobs": [{"token": token, "logprob": lp} for token, lp, _ in t.top],
        }
        for t in tokens or ()
    ]


class ResponseEvents(BlockSequence):
    """The events of one streamed response, numbered; the output items as they grow
    (api/streaming.py drives them and sequences the items)."""

    def __init__(self, frame: ResponseFrame) -> None:
        super().__init__()
        self.frame = frame
        self.sequence = 0
        self.items: list[OutputItem] = []
        self._open: OutputItem | None = None
        self._calls: dict[int, OutputFunctionCall] = {}  # a call's index -> its item

    def _event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event(data, kind)

    def _item_event(self, kind: str, item: OutputItem, **fields: Any) -> str:
        return self._event(kind, item_id=item.id, output_index=self.items.index(item), **fields)

    def start(self) -> list[str]:
        snapshot = self.frame.response("in_progress", []).model_dump(mode="json")
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    # ---------------------------------------------------------------- items

    def _add(self, item: OutputItem) -> list[str]:
        """Open `item` (the one before it closed)."""
        out: list[str] = []
        self.items.append(item)
        self._open = item
        out.append(
            self._event(
                "response.output_item.added",
                output_index=len(self.items) - 1,
                item=item.model_dump(mode="json"),
            )
        )
        part: ReasoningText | OutputText | None = None
        if isinstance(item, OutputReasoning):
            part = ReasoningText(text="")
            item.content = [part]
        elif isinstance(item, OutputMessage):
            part = OutputText(text="")
            item.content = [part]
        if part is not None:
            out.append(
                self._item_event(
                    "response.content_part.added",
                    item,
                    content_index=0,
                    part=part.model_dump(mode="json"),
                )
            )
        return out

    def end_block(self, status: ItemStatus = "completed") -> list[str]:
        item, self._open = self._open, None
        if item is None:
            return []
        item.status = status
        out: list[str] = []
        if isinstance(item, OutputFunctionCall):
            out.append(
                self._item_event(
                    "response.function_call_arguments.done",
                    item,
                    name=item.name,
                    arguments=item.arguments,
                )
            )
        else:
            part = item.content[0]
            part_fields: dict[str, Any] = {"content_index": 0}
            if isinstance(part, OutputText):
                wire = part.model_dump(mode="json")
                out.append(
                    self._item_event(
                        "response.output_text.done",
                        item,
                        **part_fields,
                        text=part.text,
                        logprobs=wire["logprobs"],
                    )
                )
            else:
                out.append(
                    self._item_event(
                        "response.reasoning_text.done", item, **part_fields, text=part.text
                    )
                )
            out.append(
                self._item_event(
                    "response.content_part.done",
                    item,
                    **part_fields,
                    part=part.model_dump(mode="json"),
                )
            )
        out.append(
            self._event(
                "response.output_item.done",
                output_index=self.items.index(item),
                item=item.model_dump(mode="json"),
            )
        )
        return out

    # ---------------------------------------------------------------- content

    def begin_thinking(self) -> list[str]:
        index = len(self.items)
        return self._add(
            OutputReasoning(id=self.frame.item_id("rs", index), content=[], status="in_progress")
        )

    def thinking(self, text: str) -> list[str]:
        item = self._open
        assert isinstance(item, OutputReasoning)
        item.content[0].text += text
        return [
            self._item_event("response.reasoning_text.delta", item, content_index=0, delta=text)
        ]

    def begin_text(self) -> list[str]:
        index = len(self.items)
        return self._add(
            OutputMessage(id=self.frame.item_id("msg", index), status="in_progress", content=[])
        )

    def text(self, text: str, tokens: Sequence[TokenLogprob] | None) -> list[str]:
        item = self._open
        assert isinstance(item, OutputMessage)
        part = item.content[0]
        part.text += text
        part.logprobs += logprobs(tokens)
        return [
            self._item_event(
                "response.output_text.delta",
                item,
                content_index=0,
                delta=text,
                logprobs=_delta_logprobs(tokens),
            )
        ]

    def begin_call(self, piece: ToolCallPiece) -> list[str]:
        assert piece.id is not None
        call = OutputFunctionCall(
            id=self.frame.item_id("fc", len(self.items)),
            call_id=piece.id,
            name=piece.name or "",
            arguments="",
            status="in_progress",
        )
        self._calls[piece.index] = call
        return self._add(call)

    def arguments(self, piece: ToolCallPiece) -> list[str]:
        call = self._calls[piece.index]
        call.arguments += piece.arguments
        return [
            self._item_event("response.function_call_arguments.delta", call, delta=piece.arguments)
        ]

    # ---------------------------------------------------------------- the end

    def finish(self, answer: Answer) -> list[str]:
        """Close the last item (an empty message when nothing came), then the response."""
        out: list[str] = []
        if not self.items:
            self.open_kind = "text"
            out += self.begin_text()
        status = status_of(answer.finish_reason)
        self.open_kind = None
        out += self.end_block("incomplete" if status == "incomplete" else "completed")
        response = self.frame.response(status, self.items, answer).model_dump(mode="json")
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        out.append(self._event(kind, response=response))
        return out

    def failure(self, exc: BaseException) -> list[str]:
        """`error`, then `response.failed` with what was made so far."""
        error = stream_failure(exc, self.frame.request_id, "openai")["error"]
        out = [
            self._event("error", code=error["code"], message=error["message"], param=error["param"])
        ]
        if self._open is not None:
            self._open.status = "incomplete"
        code = _RESPONSE_CODES.get(error["code"], "server_error")
        failed = self.frame.response(
            "failed", self.items, error=ResponseError(code=code, message=error["message"])
        )
        out.append(self._event("response.failed", response=failed.model_dump(mode="json")))
        return out

    def end(self) -> list[str]:
        return []


def response_events(
    items: AsyncGenerator[Chunk | Answer, None], events: ResponseEvents
) -> AsyncIterator[str]:
    """The stream's SSE frames. Closing it (the client left) closes `items`, which stops
    the generation."""
    return drive(items, events)
