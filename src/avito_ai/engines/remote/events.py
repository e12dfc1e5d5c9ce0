"""The event stream an OpenAI-compatible upstream answers with, parsed and checked: an
upstream is not trusted to send what it should (bounded lines, known finish reasons,
usage within bounds, logprobs of the documented shapes)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import httpx
from httpx_sse import EventSource

from avito_ai.engines.base import FinishReason, TokenLogprob, ToolCallPiece, new_call_id
from avito_ai.engines.remote.wire import error_message


class InvalidAnswer(Exception):
    """What an upstream sent is not what the OpenAI API reference says it sends."""


class UpstreamError(Exception):
    """The upstream reported an error inside its stream."""


# Calls one answer may make (an index beyond it is not an upstream's parser at work).
MAX_CALLS = 128
# finish_reason values of the API reference (and vLLM's "abort"): all end the answer.
KNOWN_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "stop",
    "tool_calls": "stop",
    "function_call": "stop",
    "abort": "stop",
}


@dataclass(frozen=True)
class UsageBounds:
    """The largest usage figures an answer to this request can have: a prompt's tokens are
    at most one per byte of its text plus its images and template (4x the budgets' estimate,
    plus room); generated ones at most max_tokens."""

    prompt: int
    completion: int


@dataclass(frozen=True)
class Piece:
    """What one choice of an event brings."""

    index: int
    text: str = ""
    finish: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    reasoning: str = ""
    # Pieces of the tool calls the upstream's parser made: the first names the call (its
    # id, the upstream's or a new one), the next carry its arguments.
    calls: tuple[ToolCallPiece, ...] = ()


@dataclass(frozen=True)
class Event:
    pieces: tuple[Piece, ...] = ()
    usage: tuple[int, int] | None = None  # (prompt, completion)
    error: str | None = None


def _number(value: Any, what: str) -> float:
    """A log probability: a number <= 0; null is -inf, as SGLang (orjson) and pydantic
    write a probability of zero (JSON has no infinity), -Infinity too (Python's json)."""
    if value is None:
        return float("-inf")
    if type(value) not in (int, float) or not value <= 0:
        raise InvalidAnswer(f"{what} must be a number <= 0")
    return float(value)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > 1024:
        raise InvalidAnswer(f"{what} must be a string")
    return value


def _bytes(value: Any, token: str) -> tuple[int, ...]:
    if value is None:
        return tuple(token.encode())
    if not isinstance(value, list) or not all(type(b) is int and 0 <= b < 256 for b in value):
        raise InvalidAnswer("logprobs bytes must be a list of bytes")
    return tuple(value)


def _logprobs(choice: dict[str, Any]) -> tuple[TokenLogprob, ...]:
    """A choice's logprobs, in the chat shape (content entries) or the completions shape
    (parallel lists)."""
    found = choice.get("logprobs")
    if found is None:
        return ()
    if not isinstance(found, dict):
        raise InvalidAnswer("logprobs must be an object")
    if "content" in found:
        entries = found["content"] or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InvalidAnswer("logprobs.content must be a list of objects")
        out = []
        for e in entries:
            token = _text(e.get("token"), "logprobs token")
            alternatives = e.get("top_logprobs") or []
            if not isinstance(alternatives, list):
                raise InvalidAnswer("top_logprobs must be a list")
            top = tuple(
                (
                    _text(a.get("token"), "top_logprobs token"),
                    _number(a.get("logprob"), "top_logprobs logprob"),
                    _bytes(a.get("bytes"), str(a.get("token"))),
                )
                for a in alternatives
                if isinstance(a, dict)
            )
            out.append(
                TokenLogprob(
                    token, _number(e.get("logprob"), "logprob"), _bytes(e.get("bytes"), token), top
                )
            )
        return tuple(out)
    tokens, scores = found.get("tokens") or [], found.get("token_logprobs") or []
    tops = found.get("top_logprobs") or [{}] * len(tokens)
    if not (isinstance(tokens, list) and isinstance(scores, list) and isinstance(tops, list)):
        raise InvalidAnswer("logprobs must hold lists")
    if not len(tokens) == len(scores) == len(tops):
        raise InvalidAnswer("logprobs lists differ in length")
    return tuple(
        TokenLogprob(
            _text(token, "logprobs token"),
            _number(score, "token_logprobs"),
            tuple(str(token).encode()),
            tuple(
                (_text(k, "top_logprobs token"), _number(v, "top_logprobs"), tuple(str(k).encode()))
                for k, v in (top or {}).items()
            ),
        )
        for token, score, top in zip(tokens, scores, tops, strict=True)
    )


def tool_call_deltas(found: Any) -> tuple[ToolCallPiece, ...]:
    """An upstream's tool call deltas (OpenAI's stream shape): a call begins with its name
    (and id), its arguments follow in pieces."""
    if found is None:
        return ()
    if not isinstance(found, list) or not all(isinstance(c, dict) for c in found):
        raise InvalidAnswer("tool_calls must be a list of objects")
    out = []
    for call in found:
        index = call.get("index", 0)
        function = call.get("function") or {}
        if type(index) is not int or not 0 <= index < MAX_CALLS or not isinstance(function, dict):
            raise InvalidAnswer("a tool call delta needs an index and a function object")
        name = function.get("name")
        arguments = function.get("arguments") or ""
        if (name is not None and not isinstance(name, str)) or not isinstance(arguments, str):
            raise InvalidAnswer("a tool call's name and arguments must be strings")
        call_id = call.get("id")
        if call_id is not None and (not isinstance(call_id, str) or len(call_id) > 128):
            raise InvalidAnswer("a tool call's id must be a string")
        if name is None:
            out.append(ToolCallPiece(index, None, None, arguments))
        else:  # the call begins
            out.append(ToolCallPiece(index, call_id or new_call_id(), name, arguments))
    return tuple(out)


def renamed_calls(calls: tuple[ToolCallPiece, ...]) -> tuple[ToolCallPiece, ...]:
    """The same calls under new ids (a copy of a choice makes calls of its own)."""
    return tuple(
        piece
        if piece.id is None
        else ToolCallPiece(piece.index, new_call_id(), piece.name, piece.arguments)
        for piece in calls
    )


def _count(usage: dict[str, Any], name: str, bound: int) -> int:
    value = usage.get(name)
    if type(value) is not int or not 0 <= value <= bound:
        shown = str(value)[:40]
        raise InvalidAnswer(f"usage.{name} must be a whole number from 0 to {bound}, not {shown}")
    return value


def parse_event(data: str | bytes, bounds: UsageBounds, choices_asked: int = 1) -> Event:
    """One `data:` event of a chat or text completion stream, checked against the shapes
    of the API reference. Raises InvalidAnswer."""
    try:
        event = json.loads(data)
    except ValueError:
        shown = data[:100] if isinstance(data, str) else data[:100].decode(errors="replace")
        raise InvalidAnswer(f"an event that is not JSON: {shown}") from None
    if not isinstance(event, dict):
        raise InvalidAnswer("an event that is not a JSON object")
    if "error" in event:
        return Event(error=error_message(data))
    pieces: list[Piece] = []
    choices = event.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise InvalidAnswer("choices must be a list")
    for choice in choices or ():
        if not isinstance(choice, dict):
            raise InvalidAnswer("each choice must be an object")
        index = choice.get("index", 0)
        if type(index) is not int or not 0 <= index < choices_asked:
            raise InvalidAnswer(f"a choice index {str(index)[:20]} (asked for {choices_asked})")
        delta = choice.get("delta")
        if delta is not None and not isinstance(delta, dict):
            raise InvalidAnswer("delta must be an object")
        text: list[str] = []
        for piece in ((delta or {}).get("content"), choice.get("text")):
            if piece is not None and not isinstance(piece, str):
                raise InvalidAnswer("content and text must be strings")
            if piece:
                text.append(piece)
        reasoning = ""
        for field_name in ("reasoning_content", "reasoning"):  # vLLM's older and newer names
            thought = (delta or {}).get(field_name)
            if thought is not None and not isinstance(thought, str):
                raise InvalidAnswer(f"{field_name} must be a string")
            reasoning = reasoning or thought or ""
        finish: FinishReason | None = None
        reason = choice.get("finish_reason")
        if reason is not None:
            if not isinstance(reason, str) or reason not in KNOWN_FINISH:
                raise InvalidAnswer(f"unknown finish_reason {str(reason)[:40]}")
            finish = KNOWN_FINISH[reason]
        calls = tool_call_deltas((delta or {}).get("tool_calls"))
        pieces.append(Piece(index, "".join(text), finish, _logprobs(choice), reasoning, calls))
    usage = event.get("usage")
    counts: tuple[int, int] | None = None
    if usage is not None:
        if not isinstance(usage, dict):
            raise InvalidAnswer("usage must be an object")
        counts = (
            _count(usage, "prompt_tokens", bounds.prompt),
            _count(usage, "completion_tokens", bounds.completion),
        )
    return Event(tuple(pieces), counts)


# Longest line an upstream may send, in characters: a token's event is a few hundred; one
# line of 400 MB with no newline was buffered whole (memory 75 -> 200 MB in 10 s).
MAX_LINE_CHARS = 1 << 20


class _BoundedText:
    """The response as httpx-sse reads it (its headers, its text), refusing a line longer
    than MAX_LINE_CHARS instead of buffering it without end (httpx-sse buffers a line
    until it ends). httpx-sse reads only these two of a response."""

    def __init__(self, response: httpx.Response) -> None:
        self.headers = response.headers
        self._response = response

    async def aiter_text(self) -> AsyncIterator[str]:
        line = 0  # characters since the last line break
        async for text in self._response.aiter_text():
            end = max(text.rfind("\n"), text.rfind("\r"))
            line = len(text) - end - 1 if end >= 0 else line + len(text)
            if line > MAX_LINE_CHARS:
                raise InvalidAnswer(f"a line longer than {MAX_LINE_CHARS} characters")
            yield text
        # The stream's end ends its last event too: an upstream whose body stops without
        # the blank line after it (the spec would drop that event) is read as before.
        yield "\n\n"


async def sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data` of each event of an upstream's stream (httpx-sse parses the stream)."""
    source = EventSource(cast(httpx.Response, _BoundedText(response)))
    async for sse in source.aiter_sse():
        yield sse.data
