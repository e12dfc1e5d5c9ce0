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
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
from opentelemetry.trace import SpanKind, StatusCode

from avito_ai.engines.base import (
    Capabilities,
    ChoiceEnd,
    Chunk,
    EngineState,
    EngineStatus,
    FinishReason,
    GenerationRequest,
    ImagePart,
    Role,
    final_chunk,
)
from avito_ai.engines.prompts import estimate_prompt_tokens
from avito_ai.engines.remote.events import (
    InvalidAnswer,
    UpstreamError,
    UsageBounds,
    parse_event,
    renamed_calls,
    sse_data,
)
from avito_ai.engines.remote.upstreams import RemoteConfig, Upstream
from avito_ai.engines.remote.wire import (
    Flavour,
    api_base,
    error_kind,
    error_message,
    upstream_capabilities,
    upstream_payload,
)
from avito_ai.errors import ModelUnavailable, Overloaded, Timeout, ValidationFailed
from avito_ai.observability.tracing import carrier, parent, tracer

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)


class _Retryable(Exception):
    """This upstream could not start the answer; another one may."""

    def __init__(self, message: str, *, overloaded: bool = False) -> None:
        super().__init__(message)
        self.overloaded = overloaded


class RemoteEngine:
    def __init__(
        self,
        config: RemoteConfig,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: httpx.MockTransport
        send_priority: bool = False,  # an upstream that schedules by priority (vLLM)
        flavour: Flavour = "openai",  # the kind of server, for constraints beyond OpenAI's
    ) -> None:
        self.role: Role = config.role
        self.send_priority = send_priority
        self.flavour: Flavour = flavour
        self._transport = transport
        self.config = config
        self.upstreams = [Upstream(api_base(u)) for u in config.urls]
        self.model: str | None = config.model
        self._headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._state = EngineState.LOADING
        self._reason: str | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        self._client = httpx.AsyncClient(
            headers=self._headers,
            timeout=httpx.Timeout(c.read_timeout, connect=c.connect_timeout),
            # Every connection a stream used stays pooled (no cap on idle ones: past a cap,
            # each stream beyond it opened a new TCP connection to the upstream, and a
            # burst of them timed out connecting). Idle ones are dropped after 4 s, before
            # an upstream's 5 s keep-alive (uvicorn's, so vLLM's and SGLang's) closes them
            # under a request sent at that moment.
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=None, keepalive_expiry=4.0
            ),
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
        return upstream_capabilities(self.flavour, images=self.role == "avision")

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
                    f"upstream {i} ({error_kind(u.last_error)})"
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
            engine="remote",
        )

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
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
                upstream.base + "/models", timeout=self.config.connect_timeout
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
        copies = 1
        if request.sampling.n > 1 and request.sampling.temperature <= 0:
            # At temperature 0 every choice is the one greedy answer: asked for once and
            # given n times, as the in-process engines do (vLLM refuses n > 1 when greedy).
            copies = request.sampling.n
            sampling = dataclasses.replace(request.sampling, n=1)
            request = dataclasses.replace(request, sampling=sampling)
        args = (
            request,
            self.model,
            self.config.max_pixels,
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
                stream = self._stream_from(upstream, path, body, request, copies)
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
        self,
        upstream: Upstream,
        path: str,
        body: dict[str, Any],
        request: GenerationRequest,
        copies: int = 1,  # each choice given this many times (greedy n > 1: see generate)
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
        span = tracer().start_span(
            "upstream",
            context=parent(request.trace),
            kind=SpanKind.CLIENT,
            attributes={"server.address": upstream.base, "gen_ai.request.model": body["model"]},
        )
        headers = {"X-Request-ID": request.request_id, **carrier(span)}
        bounds = UsageBounds(
            prompt=4 * estimate_prompt_tokens(request, self.config.max_pixels) + 4096,
            completion=request.sampling.max_tokens * request.sampling.n,
        )
        try:
            try:
                async with self._client.stream(
                    "POST", upstream.base + path, json=body, headers=headers
                ) as response:
                    span.set_attribute("http.response.status_code", response.status_code)
                    if response.status_code >= 400:
                        message = error_message(await response.aread())
                        self._raise_for_status(upstream, response.status_code, message)
                    kind = response.headers.get("content-type", "")
                    if not kind.startswith("text/event-stream"):
                        kind = kind or "no content type"
                        raise InvalidAnswer(f"a 200 that is not an event stream ({kind})")
                    async for data in sse_data(response):
                        if not data:  # an event without data (a ping): nothing to read
                            continue
                        if data.strip() == "[DONE]":
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
                            if piece.text or piece.logprobs or piece.reasoning or piece.calls:
                                first_token = first_token or time.monotonic()
                                pieces[piece.index] += 1
                                for index in range(piece.index, piece.index + copies):
                                    yield Chunk(
                                        piece.text,
                                        index=index,
                                        logprobs=piece.logprobs or None,
                                        reasoning=piece.reasoning,
                                        # the upstream's parsed calls, as they are (each
                                        # copy its own call ids)
                                        tool_calls=piece.calls
                                        if index == piece.index
                                        else renamed_calls(piece.calls),
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
        except Exception as exc:
            span.set_status(StatusCode.ERROR, str(exc))
            raise
        finally:
            upstream.outstanding -= 1
            span.end()
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
        elif copies > 1:  # one greedy answer as n choices, counted as n answers
            one = usage[1] if usage is not None else pieces[0]
            ends = tuple(ChoiceEnd(i, finishes[0], one) for i in range(copies))
            final = dataclasses.replace(final, generated_tokens=one * copies, choices=ends)
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
