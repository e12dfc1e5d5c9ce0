"""A fleet of OpenAI-compatible upstreams (vLLM, SGLang, llama.cpp, another instance of
this service) behind the same Engine protocol as the in-process backend.

Everything users see stays ours (limits, keys, validation, metrics, request ids); tokens
come from the upstreams:

* Balancing: least outstanding requests among healthy upstreams.
* Health: `GET <base>/v1/models` every UPSTREAM_HEALTH_INTERVAL seconds; the engine is
  ready while at least one upstream answers. An upstream that fails 3 times in a row is
  ejected until a probe succeeds again.
* Retries: a connection failure, a timeout or a 5xx/429 *before the first token* moves the
  request to another upstream (each tried once); after the first token nothing is
  retried (the client already has part of an answer) and the stream ends with an error.
* Cancellation: closing our iterator closes the upstream HTTP stream, which vLLM, SGLang
  and this service treat as an abort, so the upstream stops generating.
* Timeouts: UPSTREAM_CONNECT_TIMEOUT to connect, UPSTREAM_READ_TIMEOUT of silence
  mid-stream; the request deadline bounds the whole.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from PIL import Image

from avito_ai.config import Settings
from avito_ai.engines.base import (
    ALL_CONSTRAINTS,
    Capabilities,
    ChoiceEnd,
    Chunk,
    ConstraintKind,
    EngineState,
    EngineStatus,
    FinishReason,
    GenerationRequest,
    ImagePart,
    OutputConstraint,
    Role,
    TextPart,
    TokenLogprob,
    final_chunk,
)
from avito_ai.engines.prompts import estimate_prompt_tokens
from avito_ai.errors import ModelUnavailable, Overloaded, Timeout, ValidationFailed

logger = logging.getLogger(__name__)

EJECT_AFTER_FAILURES = 3


@dataclass(eq=False)
class Upstream:
    base: str  # ends with /v1
    healthy: bool = False
    outstanding: int = 0
    failures: int = 0
    last_error: str | None = None

    def record_failure(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.failures >= EJECT_AFTER_FAILURES and self.healthy:
            self.healthy = False
            logger.warning(
                "Upstream %s ejected after %d failures: %s", self.base, self.failures, error
            )

    def record_success(self) -> None:
        self.failures = 0
        self.last_error = None
        self.healthy = True


class _Retryable(Exception):
    """This upstream could not start the answer; another one may."""

    def __init__(self, message: str, *, overloaded: bool = False) -> None:
        super().__init__(message)
        self.overloaded = overloaded


def api_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def image_data_uri(part: ImagePart, max_pixels: int = 1003520) -> str:
    """The image as the upstream gets it: at most `max_pixels` (AVISION_MAX_PIXELS, what
    the model would see anyway) and JPEG, not a full-size PNG (a 24 MP photo was a 39 MB
    request body and seconds of encoding)."""
    image = part.image.convert("RGB") if part.image.mode != "RGB" else part.image
    width, height = image.size
    if width * height > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
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


def _error_kind(error: str | None) -> str:
    """An upstream's last error without its addresses ("ConnectError", "HTTP 503")."""
    if not error:
        return "unhealthy"
    return error.split(":", 1)[0]


def _error_message(response_body: bytes) -> str:
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
        return Event(error=_error_message(data))
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


async def _sse_lines(response: httpx.Response) -> AsyncIterator[bytes]:
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


class RemoteEngine:
    def __init__(
        self,
        role: Role,
        settings: Settings,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: httpx.MockTransport
        send_priority: bool = False,  # an upstream that schedules by priority (vLLM)
        flavour: Flavour = "openai",  # the kind of server, for constraints beyond OpenAI's
    ) -> None:
        self.role: Role = role
        self.send_priority = send_priority
        self.flavour: Flavour = flavour
        self._transport = transport
        self.settings = settings
        own = settings.role(role)
        self.upstreams = [Upstream(api_base(u)) for u in own.upstream_urls]
        key = own.upstream_api_key
        self.model: str | None = own.upstream_model
        self._headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
        self._client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._state = EngineState.LOADING
        self._reason: str | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self._client = httpx.AsyncClient(
            headers=self._headers,
            timeout=httpx.Timeout(s.upstream_read_timeout, connect=s.upstream_connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            transport=self._transport,
        )
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop(), name=f"health-{self.role}")

    async def stop(self) -> None:
        self._state = EngineState.STOPPED
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self._client is not None:
            await self._client.aclose()

    def capabilities(self) -> Capabilities:
        # n > 1 travels as n: the upstream makes the choices from one prefill.
        return Capabilities(
            constraints=CONSTRAINTS_OF[self.flavour], logprobs=True, top_logprobs=20, choices=True
        )

    def status(self) -> EngineStatus:
        state = self._state
        reason = self._reason
        if state is not EngineState.STOPPED:
            if any(u.healthy for u in self.upstreams):
                state, reason = EngineState.READY, None
            elif state is EngineState.READY or reason:
                state = EngineState.FAILED
                # Which error, not which address: health is read without a key (the
                # addresses are in the log's "unhealthy" lines).
                reason = "no upstream answers: " + "; ".join(
                    f"upstream {i} ({_error_kind(u.last_error)})"
                    for i, u in enumerate(self.upstreams, 1)
                )
        healthy = sum(u.healthy for u in self.upstreams)
        return EngineStatus(
            self.role,
            state,
            model_id=self.model,
            device=f"remote ({healthy}/{len(self.upstreams)} upstreams healthy)",
            dtype=None,
            reason=reason,
            engine="openai",
        )

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.upstream_health_interval)
            try:
                await self.check_health()
            except Exception:  # never let the probe loop die
                logger.exception("Upstream health check failed")

    async def check_health(self) -> None:
        await asyncio.gather(*(self._probe(u) for u in self.upstreams))
        if any(u.healthy for u in self.upstreams):
            self._state = EngineState.READY
            self._reason = None
        elif self._state is not EngineState.STOPPED:
            self._reason = "no upstream answers"

    async def _probe(self, upstream: Upstream) -> None:
        assert self._client is not None
        try:
            r = await self._client.get(
                upstream.base + "/models", timeout=self.settings.upstream_connect_timeout
            )
            r.raise_for_status()
            models = [m.get("id") for m in r.json().get("data", []) if isinstance(m, dict)]
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            was = upstream.healthy
            upstream.healthy = False
            upstream.last_error = f"{type(exc).__name__}: {exc}"[:200]
            if was:
                logger.warning("Upstream %s unhealthy: %s", upstream.base, upstream.last_error)
            return
        if not upstream.healthy:
            logger.info(
                "Upstream %s healthy (models: %s)", upstream.base, ", ".join(map(str, models))
            )
        upstream.record_success()
        if self.model is None and models:
            self.model = str(models[0])

    # --- generation --------------------------------------------------------------------

    def _candidates(self) -> list[Upstream]:
        """Healthy upstreams, least outstanding first (random among equals)."""
        healthy = [u for u in self.upstreams if u.healthy]
        random.shuffle(healthy)
        return sorted(healthy, key=lambda u: u.outstanding)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if self._client is None or self._state is EngineState.STOPPED:
            raise ModelUnavailable(f"{self.role} upstreams are not connected")
        if self.model is None:
            raise ModelUnavailable(f"{self.role}: no upstream has answered yet")
        args = (
            request,
            self.model,
            self.settings.avision_max_pixels,
            self.send_priority,
            self.flavour,
        )
        if any(isinstance(p, ImagePart) for m in request.messages for p in m.content):
            path, body = await asyncio.to_thread(upstream_payload, *args)  # scaled, encoded
        else:  # text: microseconds, not worth a thread hop under load
            path, body = upstream_payload(*args)
        tried: list[str] = []
        overloaded = 0
        last = ""
        for upstream in self._candidates():
            tried.append(upstream.base)
            try:
                # aclosing: a client that leaves closes the upstream stream now (vLLM and
                # SGLang abort the request), not when the generator is collected.
                stream = self._stream_from(upstream, path, body, request)
                async with contextlib.aclosing(stream) as chunks:
                    async for chunk in chunks:
                        yield chunk
                return
            except _Retryable as exc:
                overloaded += exc.overloaded
                last = str(exc)
                logger.warning("Upstream %s could not start the answer: %s", upstream.base, exc)
                continue
        if not tried:
            raise ModelUnavailable(f"No healthy {self.role} upstream")
        if overloaded == len(tried):
            raise Overloaded(f"All {self.role} upstreams are busy, retry later")
        raise ModelUnavailable(
            f"No {self.role} upstream could answer (tried {len(tried)}; the last: {last})"
        )

    async def _stream_from(
        self, upstream: Upstream, path: str, body: dict[str, Any], request: GenerationRequest
    ) -> AsyncGenerator[Chunk, None]:
        assert self._client is not None
        started = time.monotonic()
        first_token: float | None = None
        n = request.sampling.n
        pieces = [0] * n  # per choice: deltas, its token count when the upstream gives none
        usage: tuple[int, int] | None = None
        finishes: dict[int, FinishReason] = {}
        done = False
        upstream.outstanding += 1
        headers = {"X-Request-ID": request.request_id}
        bounds = UsageBounds(
            prompt=4 * estimate_prompt_tokens(request, self.settings.avision_max_pixels) + 4096,
            completion=request.sampling.max_tokens * request.sampling.n,
        )
        try:
            try:
                async with self._client.stream(
                    "POST", upstream.base + path, json=body, headers=headers
                ) as response:
                    if response.status_code >= 400:
                        message = _error_message(await response.aread())
                        self._raise_for_status(upstream, response.status_code, message)
                    kind = response.headers.get("content-type", "")
                    if not kind.startswith("text/event-stream"):
                        kind = kind or "no content type"
                        raise InvalidAnswer(f"a 200 that is not an event stream ({kind})")
                    async for line in _sse_lines(response):
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            # Read on to the end of the body (nothing more comes): a response
                            # left unread closes its connection instead of going back to the
                            # pool, and every request would open a new one.
                            done = True
                            continue
                        event = parse_event(data, bounds, n)
                        if event.error is not None:
                            raise UpstreamError(event.error)
                        usage = event.usage or usage
                        for piece in event.pieces:
                            if piece.finish is not None:
                                finishes[piece.index] = piece.finish
                            if piece.text or piece.logprobs:
                                first_token = first_token or time.monotonic()
                                pieces[piece.index] += 1
                                yield Chunk(
                                    piece.text,
                                    index=piece.index,
                                    logprobs=piece.logprobs or None,
                                )
                    if len(finishes) < n or not done:
                        missing = "a finish_reason" if len(finishes) < n else "data: [DONE]"
                        raise InvalidAnswer(f"the stream ended without {missing}")
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                upstream.record_failure(f"{type(exc).__name__}: {exc}")
                if first_token is None:
                    raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
                if isinstance(exc, httpx.TimeoutException):
                    raise Timeout("The upstream stopped sending tokens") from exc
                raise ModelUnavailable("The upstream connection broke mid-answer") from exc
            except (InvalidAnswer, UpstreamError) as exc:
                what = "sent an invalid answer" if isinstance(exc, InvalidAnswer) else "failed"
                upstream.record_failure(f"{what}: {exc}")
                logger.error("%s upstream %s %s: %s", self.role, upstream.base, what, exc)
                message = f"The {self.role} upstream {what}: {exc}"
                if first_token is None:
                    raise _Retryable(message) from None
                raise ModelUnavailable(message) from None
        finally:
            upstream.outstanding -= 1
        prompt, completion = usage if usage is not None else (0, sum(pieces))
        final = final_chunk(
            finishes[0],
            input_tokens=prompt,
            generated_tokens=completion,
            created=request.created,
            scheduled=started,
            first_token=first_token,
            finished=time.monotonic(),
        )
        if n > 1:  # (each choice's own count: its deltas, one token each on vLLM and SGLang)
            ends = tuple(ChoiceEnd(i, finishes[i], pieces[i]) for i in range(n))
            final = dataclasses.replace(final, choices=ends)
        yield final

    @staticmethod
    def _raise_for_status(upstream: Upstream, status: int, message: str) -> None:
        if status >= 500 or status == 429:
            upstream.record_failure(f"HTTP {status}: {message}")
            raise _Retryable(f"HTTP {status}: {message}", overloaded=status in (429, 503))
        if status in (401, 403):
            raise ModelUnavailable(f"The upstream refused our credentials (HTTP {status})")
        if status == 404:
            raise ModelUnavailable(f"The upstream does not serve this model: {message}")
        raise ValidationFailed(f"Upstream refused the request: {message}")
