"""OpenAI's answer shapes: an Answer → a chat completion or a text completion, and the
chunks of a streamed one (`chat.completion.chunk` or `text_completion`)."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel

from avito_ai.api.errors import stream_failure
from avito_ai.api.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionLogprobs,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCallOut,
    ToolCallOut,
    TopLogprob,
    Usage,
)
from avito_ai.api.openai.protocol import TokenLogprob as WireTokenLogprob
from avito_ai.api.sse import event
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
        ],
        refusal=None,  # set, so a streamed chunk (which sends what is set) has it too
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


def tool_call_deltas(pieces: Sequence[ToolCallPiece]) -> list[DeltaToolCall]:
    """Streamed calls in OpenAI's shape, one entry per call in a chunk (the SDKs join the
    entries of a chunk by index as new calls): a call's first entry has its id and name,
    with the arguments that came with them; the next ones further pieces of its arguments."""
    out: list[DeltaToolCall] = []
    for piece in merged_pieces(list(pieces)):
        if piece.id is not None:
            function = DeltaFunctionCall.model_construct(name=piece.name, arguments=piece.arguments)
            out.append(
                DeltaToolCall.model_construct(
                    index=piece.index, id=piece.id, type="function", function=function
                )
            )
        else:
            function = DeltaFunctionCall.model_construct(arguments=piece.arguments)
            out.append(DeltaToolCall.model_construct(index=piece.index, function=function))
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


class OpenAIChunks(ABC):
    """What both of OpenAI's streams share (api/streaming.py drives them): one id, model and
    creation time in every chunk; choices (n > 1) interleave, each chunk naming its
    `index`; the usage chunk when asked for; an error body, then `data: [DONE]`."""

    CHUNK: ClassVar[type[BaseModel]]  # the chunk's class, its `object`, chat or text ids
    OBJECT: ClassVar[str]
    CHAT: ClassVar[bool]

    def __init__(
        self,
        request_id: str,
        model: str,
        *,
        n: int = 1,
        logprobs: bool = False,
        include_usage: bool = False,
        created: int | None = None,
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.n = n
        self.logprobs = logprobs
        self.include_usage = include_usage
        self.created = int(time.time()) if created is None else created

    def start(self) -> list[str]:
        return [_frame(c) for c in self.opening_chunks()]

    def delta(self, chunk: Chunk) -> list[str]:
        return [_frame(self.delta_chunk(chunk))]

    def finish(self, answer: Answer) -> list[str]:
        frames = [_frame(c) for c in self.finish_chunks(answer)]
        if self.include_usage:
            frames.append(_frame(self.usage_chunk(answer)))
        return frames

    def failure(self, exc: BaseException) -> list[str]:
        return [event(stream_failure(exc, self.request_id, "openai"))]

    def end(self) -> list[str]:
        return [event("[DONE]")]

    def opening_chunks(self) -> list[BaseModel]:
        return []

    def finish_chunks(self, answer: Answer) -> list[BaseModel]:
        """Each choice's last chunk, with its finish_reason."""
        return [self._chunk([self._finish(c.index, c.finish_reason)]) for c in answer.choices]

    def usage_chunk(self, answer: Answer) -> BaseModel:
        """No choices, the usage (sent last, when asked for)."""
        return self._chunk([], usage=usage(answer))

    @abstractmethod
    def delta_chunk(self, chunk: Chunk) -> BaseModel: ...

    def _chunk(self, choices: list[Any], **extra: Any) -> BaseModel:
        return self.CHUNK.model_construct(
            id=completion_id(self.request_id, chat=self.CHAT),
            object=self.OBJECT,
            created=self.created,
            model=self.model,
            choices=choices,
            **extra,
        )

    @abstractmethod
    def _finish(self, index: int, reason: str) -> BaseModel: ...


class ChatChunks(OpenAIChunks):
    """`chat.completion.chunk`s: each choice opens with the assistant role, then deltas of
    thinking, content and tool calls, then its finish_reason."""

    CHUNK, OBJECT, CHAT = ChatCompletionChunk, "chat.completion.chunk", True

    def delta(self, chunk: Chunk) -> list[str]:
        if chunk.reasoning or chunk.tool_calls or self.logprobs:
            return super().delta(chunk)
        # Most deltas carry content only: their frame is the one the models give (made once
        # per choice) with the text in its place, not the models built and dumped again for
        # every token (12% of a worker's CPU at saturation).
        halves = self._content_frames.get(chunk.index)
        if halves is None:
            placeholder = dataclasses.replace(chunk, text=_PLACEHOLDER)
            halves = _frame(self.delta_chunk(placeholder)).split(_PLACEHOLDER_JSON)
            self._content_frames[chunk.index] = halves
        if len(halves) != 2:
            return super().delta(chunk)
        return [halves[0] + json.dumps(chunk.text, ensure_ascii=False) + halves[1]]

    @functools.cached_property
    def _content_frames(self) -> dict[int, list[str]]:
        return {}

    def opening_chunks(self) -> list[BaseModel]:
        opening = DeltaMessage.model_construct(role="assistant", content="")
        return [
            self._chunk(
                [ChatChunkChoice.model_construct(index=i, delta=opening, finish_reason=None)]
            )
            for i in range(self.n)
        ]

    def delta_chunk(self, chunk: Chunk) -> BaseModel:
        delta: dict[str, Any] = {}
        if chunk.reasoning:
            delta["reasoning_content"] = delta["reasoning"] = chunk.reasoning
        if chunk.text or not (chunk.reasoning or chunk.tool_calls):
            delta["content"] = chunk.text
        if chunk.tool_calls:
            delta["tool_calls"] = tool_call_deltas(chunk.tool_calls)
        choice: dict[str, Any] = {
            "index": chunk.index,
            "delta": DeltaMessage.model_construct(**delta),
            "finish_reason": None,
        }
        if self.logprobs:
            choice["logprobs"] = chat_logprobs(chunk.logprobs or ())
        return self._chunk([ChatChunkChoice.model_construct(**choice)])

    def _finish(self, index: int, reason: str) -> ChatChunkChoice:
        empty = DeltaMessage.model_construct()
        return ChatChunkChoice.model_construct(index=index, delta=empty, finish_reason=reason)


class TextChunks(OpenAIChunks):
    """`text_completion` chunks (/v1/completions): text deltas, with each token's logprobs
    and offset when asked for, then each choice's finish_reason."""

    def __init__(self, request_id: str, model: str, **options: Any) -> None:
        super().__init__(request_id, model, **options)
        self._offsets: dict[int, int] = {}

    CHUNK, OBJECT, CHAT = CompletionChunk, "text_completion", False

    def delta_chunk(self, chunk: Chunk) -> BaseModel:
        wire = None
        if self.logprobs:
            tokens = chunk.logprobs or ()
            offset = self._offsets.get(chunk.index, 0)
            self._offsets[chunk.index] = offset + sum(len(t.token) for t in tokens)
            wire = completion_logprobs(tokens, offset)
        choice = CompletionChunkChoice.model_construct(
            index=chunk.index, text=chunk.text, finish_reason=None, logprobs=wire
        )
        return self._chunk([choice])

    def _finish(self, index: int, reason: str) -> CompletionChunkChoice:
        return CompletionChunkChoice.model_construct(index=index, text="", finish_reason=reason)


_PLACEHOLDER = "\ue000avito-delta-text\ue000"
_PLACEHOLDER_JSON = json.dumps(_PLACEHOLDER, ensure_ascii=False)


def wire(chunk: BaseModel) -> dict[str, Any]:
    """A chunk as sent: the fields it sets (a delta names only what it carries)."""
    return chunk.model_dump(exclude_unset=True)


def _frame(chunk: BaseModel) -> str:
    return event(wire(chunk))
