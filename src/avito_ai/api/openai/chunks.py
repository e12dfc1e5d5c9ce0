"""OpenAI's answer shapes: an Answer → a chat completion or a text completion, and the
chunks of a streamed one (`chat.completion.chunk` or `text_completion`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from avito_ai.api.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    FunctionCallOut,
    ToolCallOut,
    TopLogprob,
    Usage,
)
from avito_ai.api.openai.protocol import TokenLogprob as WireTokenLogprob
from avito_ai.engines.base import Chunk, TokenLogprob, ToolCallPiece
from avito_ai.services.answers import Answer, ChoiceAnswer
from avito_ai.services.tools import merged_pieces


def completion_id(request_id: str, *, chat: bool) -> str:
    """OpenAI-style id, derived from the request id so logs and answers line up."""
    return ("chatcmpl-" if chat else "cmpl-") + request_id.replace("-", "")[:32]


def usage(answer: Answer) -> Usage:
    return Usage(
        prompt_tokens=answer.input_tokens,
        completion_tokens=answer.generated_tokens,
        total_tokens=answer.input_tokens + answer.generated_tokens,
    )


def chat_logprobs(tokens: Sequence[TokenLogprob] | None) -> ChoiceLogprobs | None:
    """OpenAI's chat `logprobs`: each token with its bytes and alternatives."""
    if tokens is None:
        return None
    return ChoiceLogprobs(
        content=[
            WireTokenLogprob(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.bytes),
                top_logprobs=[
                    TopLogprob(token=token, logprob=logprob, bytes=list(raw))
                    for token, logprob, raw in t.top
                ],
            )
            for t in tokens
        ]
    )


def completion_logprobs(
    tokens: Sequence[TokenLogprob] | None, offset: int = 0
) -> CompletionLogprobs | None:
    """The completions endpoint's older shape: parallel lists, alternatives as maps."""
    if tokens is None:
        return None
    offsets: list[int] = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[{token: logprob for token, logprob, _ in t.top} for t in tokens],
        text_offset=offsets,
    )


def assistant_message(choice: ChoiceAnswer) -> AssistantMessage:
    """The choice's message: content (null when it only called tools), calls, thinking."""
    calls = [
        ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments))
        for c in choice.tool_calls
    ]
    return AssistantMessage(
        content=choice.text if choice.text or not calls else None,
        tool_calls=calls or None,
        reasoning_content=choice.reasoning or None,
        reasoning=choice.reasoning or None,
    )


def tool_call_deltas(pieces: Sequence[ToolCallPiece]) -> list[dict[str, Any]]:
    """Streamed calls in OpenAI's shape, one entry per call in a chunk (the SDKs join the
    entries of a chunk by index as new calls): a call's first entry has its id and name,
    with the arguments that came with them; the next ones further pieces of its arguments."""
    out: list[dict[str, Any]] = []
    for piece in merged_pieces(list(pieces)):
        if piece.id is not None:
            function = {"name": piece.name, "arguments": piece.arguments}
            out.append(
                {"index": piece.index, "id": piece.id, "type": "function", "function": function}
            )
        else:
            out.append({"index": piece.index, "function": {"arguments": piece.arguments}})
    return out


def chat_completion(answer: Answer, request_id: str, model: str) -> ChatCompletion:
    return ChatCompletion(
        id=completion_id(request_id, chat=True),
        created=int(time.time()),
        model=model,
        choices=[
            ChatChoice(
                index=choice.index,
                message=assistant_message(choice),
                finish_reason=choice.finish_reason,
                logprobs=chat_logprobs(choice.logprobs),
            )
            for choice in answer.choices
        ],
        usage=usage(answer),
    )


def text_completion(answer: Answer, request_id: str, model: str, echo: str = "") -> Completion:
    """A /v1/completions answer; `echo` is the prompt when the client asked for it back."""
    return Completion(
        id=completion_id(request_id, chat=False),
        created=int(time.time()),
        model=model,
        choices=[
            CompletionChoice(
                index=choice.index,
                text=echo + choice.text,
                finish_reason=choice.finish_reason,
                logprobs=completion_logprobs(choice.logprobs, len(echo)),
            )
            for choice in answer.choices
        ],
        usage=usage(answer),
    )


@dataclass
class StreamChunks:
    """The bodies of one streamed answer's chunks (`chat.completion.chunk` or
    `text_completion`), with the same id, model and creation time in each. Choices
    (n > 1) interleave, each chunk naming its `index`."""

    request_id: str
    model: str
    chat: bool
    n: int = 1
    logprobs: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    _offsets: dict[int, int] = field(default_factory=dict)

    def _body(self, choice: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        return {
            "id": completion_id(self.request_id, chat=self.chat),
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [] if choice is None else [choice],
            **extra,
        }

    def openings(self) -> list[dict[str, Any]]:
        """Chat streams open each choice with the assistant role; text streams do not."""
        if not self.chat:
            return []
        return [
            self._body(
                {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            )
            for i in range(self.n)
        ]

    def _logprobs(self, index: int, tokens: Sequence[TokenLogprob] | None) -> Any:
        if not self.logprobs:
            return None
        if self.chat:
            wire = chat_logprobs(tokens or ())
            return wire.model_dump() if wire else None
        offset = self._offsets.get(index, 0)
        self._offsets[index] = offset + sum(len(t.token) for t in tokens or ())
        text = completion_logprobs(tokens or (), offset)
        return text.model_dump() if text else None

    def delta(self, chunk: Chunk) -> dict[str, Any]:
        logprobs = self._logprobs(chunk.index, chunk.logprobs)
        if self.chat:
            delta: dict[str, Any] = {}
            if chunk.reasoning:
                delta["reasoning_content"] = delta["reasoning"] = chunk.reasoning
            if chunk.text or not (chunk.reasoning or chunk.tool_calls):
                delta["content"] = chunk.text
            if chunk.tool_calls:
                delta["tool_calls"] = tool_call_deltas(chunk.tool_calls)
            choice: dict[str, Any] = {"index": chunk.index, "delta": delta, "finish_reason": None}
            if logprobs is not None:
                choice["logprobs"] = logprobs
            return self._body(choice)
        return self._body(
            {"index": chunk.index, "text": chunk.text, "finish_reason": None, "logprobs": logprobs}
        )

    def finishes(self, answer: Answer) -> list[dict[str, Any]]:
        """Each choice's last chunk, with its finish_reason."""
        if self.chat:
            return [
                self._body({"index": c.index, "delta": {}, "finish_reason": c.finish_reason})
                for c in answer.choices
            ]
        return [
            self._body({"index": c.index, "text": "", "finish_reason": c.finish_reason})
            for c in answer.choices
        ]

    def usage(self, answer: Answer) -> dict[str, Any]:
        return self._body(None, usage=usage(answer).model_dump())
