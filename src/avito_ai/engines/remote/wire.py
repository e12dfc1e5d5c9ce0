"""The OpenAI-compatible wire, as the remote backend speaks it: the request an upstream
gets (`upstream_payload`: chat or completions, images as JPEG data URIs, constraints in
the upstream's own fields) and the event stream it answers (`parse_event`, bounded and
checked: an upstream is not trusted to send what it should).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from avito_ai.engines.base import (
    ALL_CONSTRAINTS,
    ConstraintKind,
    FinishReason,
    GenerationRequest,
    ImagePart,
    OutputConstraint,
    TextPart,
    TokenLogprob,
)
from avito_ai.engines.images import fit_image


def api_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def image_data_uri(part: ImagePart, max_pixels: int = 1003520) -> str:
    """The image as the upstream gets it: at most `max_pixels` (AVISION_MAX_PIXELS, what
    the model would see anyway) and JPEG, not a full-size PNG (a 24 MP photo was a 39 MB
    request body and seconds of encoding)."""
    image = fit_image(part.image, max_pixels)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


Flavour = Literal["openai", "vllm", "sglang"]
# Constraints each kind of upstream takes: any OpenAI-compatible server takes
# response_format; regexes and grammars travel in vLLM's and SGLang's own fields.
CONSTRAINTS_OF: dict[Flavour, frozenset[ConstraintKind]] = {
    "openai": frozenset({"json_schema", "json_object"}),
    "vllm": ALL_CONSTRAINTS,
    "sglang": ALL_CONSTRAINTS,
}


def constraint_fields(constraint: OutputConstraint, flavour: Flavour) -> dict[str, Any]:
    """The request fields that carry a constraint, in the upstream's own terms."""
    if constraint.kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if constraint.kind == "json_schema":
        spec: dict[str, Any] = {
            "name": constraint.name,
            "schema": constraint.schema,
            "strict": constraint.strict,
        }
        if constraint.description:
            spec["description"] = constraint.description
        return {"response_format": {"type": "json_schema", "json_schema": spec}}
    if flavour == "vllm":
        return {"structured_outputs": {constraint.kind: constraint.pattern}}
    return {"regex" if constraint.kind == "regex" else "ebnf": constraint.pattern}


def upstream_payload(
    request: GenerationRequest,
    model: str,
    max_pixels: int = 1003520,
    priority: bool = False,
    flavour: Flavour = "openai",
) -> tuple[str, dict[str, Any]]:
    """The OpenAI request (path, JSON body) for one of our GenerationRequests. `priority`:
    the upstream schedules by priority (vLLM's `priority` field, lower first); `flavour`:
    which server it is, for the fields beyond OpenAI's (constraints)."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if s.top_k:
        body["top_k"] = s.top_k
    if s.repetition_penalty != 1.0:
        body["repetition_penalty"] = s.repetition_penalty
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    if s.stop:
        body["stop"] = list(s.stop)
    if s.seed is not None:
        body["seed"] = s.seed
    if s.ignore_eos:
        body["ignore_eos"] = True
    if s.n > 1:
        body["n"] = s.n  # vLLM, SGLang and this service understand it
    if priority:
        body["priority"] = request.priority
    if request.constraint is not None:
        body.update(constraint_fields(request.constraint, flavour))
    chat = request.prompt is None
    if s.logprobs:  # chat: a switch and a count; completions: the count alone
        body.update(
            {"logprobs": True, "top_logprobs": s.top_logprobs}
            if chat
            else {"logprobs": s.top_logprobs}
        )
    if request.prompt is not None:
        body["prompt"] = request.prompt
        return "/completions", body
    messages = []
    for message in request.messages:
        if all(isinstance(p, TextPart) for p in message.content):
            content: Any = "".join(p.text for p in message.content if isinstance(p, TextPart))
        else:
            content = [
                {"type": "text", "text": p.text}
                if isinstance(p, TextPart)
                else {"type": "image_url", "image_url": {"url": image_data_uri(p, max_pixels)}}
                for p in message.content
            ]
        messages.append({"role": message.role, "content": content})
    body["messages"] = messages
    # Qwen3's chat template thinks by default on vLLM/SGLang; ours is off unless asked.
    body["chat_template_kwargs"] = {"enable_thinking": request.enable_thinking}
    return "/chat/completions", body


def error_kind(error: str | None) -> str:
    """An upstream's last error without its addresses ("ConnectError", "HTTP 503")."""
    if not error:
        return "unhealthy"
    return error.split(":", 1)[0]


def error_message(response_body: bytes) -> str:
    try:
        data = json.loads(response_body)
    except ValueError:
        return response_body[:300].decode(errors="replace")
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(data.get("message") or error)


class InvalidAnswer(Exception):
    """What an upstream sent is not what the OpenAI API reference says it sends."""


class UpstreamError(Exception):
    """The upstream reported an error inside its stream."""


# Longest event line an upstream may send: a token's event is a few hundred bytes; one
# line of 400 MB with no newline was buffered whole (memory 75 -> 200 MB in 10 s).
MAX_LINE_BYTES = 1 << 20
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


@dataclass(frozen=True)
class Event:
    pieces: tuple[Piece, ...] = ()
    usage: tuple[int, int] | None = None  # (prompt, completion)
    error: str | None = None


def _number(value: Any, what: str) -> float:
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


def _count(usage: dict[str, Any], name: str, bound: int) -> int:
    value = usage.get(name)
    if type(value) is not int or not 0 <= value <= bound:
        shown = str(value)[:40]
        raise InvalidAnswer(f"usage.{name} must be a whole number from 0 to {bound}, not {shown}")
    return value


def parse_event(data: bytes, bounds: UsageBounds, choices_asked: int = 1) -> Event:
    """One `data:` event of a chat or text completion stream, checked against the shapes
    of the API reference. Raises InvalidAnswer."""
    try:
        event = json.loads(data)
    except ValueError:
        shown = data[:100].decode(errors="replace")
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
        finish: FinishReason | None = None
        reason = choice.get("finish_reason")
        if reason is not None:
            if not isinstance(reason, str) or reason not in KNOWN_FINISH:
                raise InvalidAnswer(f"unknown finish_reason {str(reason)[:40]}")
            finish = KNOWN_FINISH[reason]
        pieces.append(Piece(index, "".join(text), finish, _logprobs(choice)))
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


async def sse_lines(response: httpx.Response) -> AsyncIterator[bytes]:
    """The lines of an event stream, as bytes: httpx's aiter_lines decodes every chunk to
    text and splits it again, a cost paid per token on every stream. A line longer than
    MAX_LINE_BYTES is an invalid answer, not a reason to buffer without end."""
    pending = b""
    async for data in response.aiter_bytes():
        lines = (pending + data).split(b"\n")
        pending = lines.pop()
        if len(pending) > MAX_LINE_BYTES:
            raise InvalidAnswer(f"a line longer than {MAX_LINE_BYTES} bytes")
        for line in lines:
            if len(line) > MAX_LINE_BYTES:
                raise InvalidAnswer(f"a line longer than {MAX_LINE_BYTES} bytes")
            yield line.rstrip(b"\r")
    if pending:
        yield pending.rstrip(b"\r")
