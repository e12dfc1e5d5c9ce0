"""The generation service: every dialect's serving calls it, and it calls the engine.

One object per app (`ServiceState.generation`), given the engines and the fair-admission
governor explicitly. A request goes down once and comes back once: `ready_engine` (once
per request), then `complete` (a whole Answer) or `stream` (the deltas, then the Answer).
Here, and only here, a generation is bounded by its deadline, admitted fairly
(services/admission.py: the client's token budgets reserve what it may use, a place in the
model's fair queue is awaited, the tokens it used settle the reservation), measured
(waiting until the first chunk, running after it, the per-model histograms at the end),
collected into its Answer, and cancelled when its client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry.trace import StatusCode

from avito_ai.clients import ANONYMOUS, PRIORITY_CLASSES, Client
from avito_ai.config import Settings
from avito_ai.engines.base import (
    Chunk,
    Engine,
    EngineState,
    GenerationRequest,
    Role,
    SamplingParams,
    capabilities_of,
)
from avito_ai.errors import ClientDisconnected, ModelUnavailable, Timeout, ValidationFailed
from avito_ai.observability import metrics
from avito_ai.observability.tracing import carrier, tracer
from avito_ai.services.admission import Governor, priority_of
from avito_ai.services.answers import Answer, AnswerCollector
from avito_ai.services.budgets import Reservation, prompt_tokens
from avito_ai.services.choices import fan_out

T = TypeVar("T")
# Waits until the client has gone (api/deps.py `disconnect_waiter`); None: never.
Disconnect = Callable[[], Awaitable[None]] | None
LOAD_POLL_S = 0.05


def check_options(engine: Engine, sampling: SamplingParams, max_choices: int | None) -> None:
    """Refuse (400) before anything runs the options this engine cannot honour, and more
    choices than MAX_CHOICES."""
    if max_choices is not None and sampling.n > max_choices:
        raise ValidationFailed(f"n must be between 1 and {max_choices} (MAX_CHOICES)", param="n")
    can = capabilities_of(engine)
    backend = engine.status().engine or "this"
    if sampling.logprobs and not can.logprobs:
        raise ValidationFailed(
            f"The {engine.role} engine ({backend}) gives no log probabilities", param="logprobs"
        )
    if sampling.top_logprobs > can.top_logprobs:
        raise ValidationFailed(
            f"The {engine.role} engine ({backend}) gives "
            + (
                f"at most {can.top_logprobs} alternatives per token"
                if can.top_logprobs
                else "the chosen token's log probability only: top_logprobs must be 0"
            ),
            param="top_logprobs",
        )


class GenerationService:
    def __init__(
        self, settings: Settings, engines: Mapping[Role, Engine], governor: Governor | None
    ) -> None:
        self.settings = settings
        self.engines = engines
        self.governor = governor  # None: no fair admission (an engine driven on its own)

    async def ready_engine(self, role: Role) -> Engine:
        """The engine for a role once it can answer, or ModelUnavailable saying why not.

        A request that arrives while its model is still loading (a fresh start, a new
        gunicorn worker after a HUP reload) waits for the load, up to REQUEST_TIMEOUT,
        instead of failing: readiness keeps load balancers away meanwhile, and a client
        that did come gets an answer. A model that is not configured or failed to load
        answers 503 at once.
        """
        engine = self.engines[role]
        deadline = time.monotonic() + self.settings.request_timeout
        while True:
            status = engine.status()
            if status.state is EngineState.READY:
                return engine
            if status.state is EngineState.NOT_CONFIGURED:
                raise ModelUnavailable(status.reason or f"{role} is not configured")
            if status.state is not EngineState.LOADING:
                reason = f": {status.reason}" if status.reason else ""
                raise ModelUnavailable(
                    f"Model {role} is {status.state.value}{reason}", retry_after=status.retry_after
                )
            if time.monotonic() >= deadline:
                raise ModelUnavailable(f"Model {role} is still loading, retry shortly")
            await asyncio.sleep(LOAD_POLL_S)

    async def complete(
        self,
        engine: Engine,
        request: GenerationRequest,
        client: Client = ANONYMOUS,
        disconnected: Disconnect = None,
    ) -> Answer:
        """The whole answer. A client that leaves first cancels the generation: the server
        only notices a vanished client when it reads from the connection, and a long
        generation would otherwise run to its end."""

        async def collect() -> Answer:
            collector = AnswerCollector(request, parses_tools=capabilities_of(engine).parses_tools)
            async for chunk in self._chunks(engine, request, client):
                _, answer = collector.add(chunk)
                if answer is not None:
                    return answer
            raise ModelUnavailable("The model stopped without finishing the answer")

        return await unless_disconnected(collect(), disconnected)

    async def stream(
        self,
        engine: Engine,
        request: GenerationRequest,
        client: Client = ANONYMOUS,
        disconnected: Disconnect = None,
    ) -> AsyncGenerator[Chunk | Answer, None]:
        """Start generating and wait for the first chunk: errors before it (queue full,
        model unavailable, timeout while queued) raise here, so they are still proper HTTP
        errors. Then: each delta (text and logprobs; finish and timings stay off them),
        and the Answer last. Later errors raise from the iterator (the serving layer sends
        them as its dialect's error event). Closing it stops the engine's work."""
        iterator = self._chunks(engine, request, client)

        async def first_chunk() -> Chunk:
            return await anext(iterator)

        try:
            first = await unless_disconnected(first_chunk(), disconnected)
        except BaseException:
            await iterator.aclose()
            raise
        collector = AnswerCollector(request, parses_tools=capabilities_of(engine).parses_tools)
        return _deltas_then_answer(first, iterator, collector)

    async def _chunks(
        self, engine: Engine, request: GenerationRequest, client: Client, copies: int = 1
    ) -> AsyncGenerator[Chunk, None]:
        """The engine's chunks, bounded by the deadline even if the engine is stuck, after
        fair admission. `copies`: how many answers this generation gives (choices.py: one
        greedy answer given n times), each charged to the budgets as usage reports it."""
        role = engine.role
        governor = self.governor
        check_options(engine, request.sampling, self.settings.max_choices)
        if request.sampling.n > 1 and not capabilities_of(engine).choices:
            # The services make the n choices: each a generation of its own (and a request
            # for fair admission and the budgets), merged by index.
            def one(engine: Engine, single: GenerationRequest, copies: int) -> AsyncIterator[Chunk]:
                return self._chunks(engine, single, client, copies)

            async with contextlib.aclosing(fan_out(one, engine, request)) as merged:
                async for chunk in merged:
                    yield chunk
            return
        waiting = metrics.REQUESTS_WAITING.labels(role)
        running = metrics.REQUESTS_RUNNING.labels(role)
        used = _Used(copies=copies)
        reservation: Reservation | None = None
        async with contextlib.AsyncExitStack() as stack:
            if governor is not None:
                priority = priority_of(client)
                if governor.budgets.active(client):
                    used.prompt = prompt_tokens(engine, request, self.settings.avision.max_pixels)
                    # n choices made by the engine itself may each use max_tokens
                    wanted = used.prompt + request.sampling.max_tokens * request.sampling.n * copies
                    reservation = await governor.budgets.reserve(client, wanted)
                stack.push_async_callback(_settle, governor, client, reservation, used)
                request = dataclasses.replace(request, priority=PRIORITY_CLASSES[priority])
                admission = governor.admissions[role]
                limit = governor.concurrency_for(client)
                # n choices the engine makes itself hold n places (as many as can be had)
                places = min(request.sampling.n, admission.capacity, limit or request.sampling.n)
                waiting.inc()
                span = tracer().start_span(
                    "admission",
                    attributes={"gen_ai.request.model": role, "avito.priority": priority},
                )
                try:
                    async with asyncio.timeout(_remaining(request)):
                        for _ in range(places):
                            await stack.enter_async_context(
                                admission.place(client.id, priority, limit)
                            )
                except TimeoutError:
                    span.set_status(StatusCode.ERROR, "timed out waiting for its turn")
                    raise Timeout("Request timed out waiting for its turn") from None
                except Exception as exc:  # refused: the queue full, too many waiting
                    span.set_status(StatusCode.ERROR, str(exc))
                    raise
                finally:
                    span.end()
                    waiting.dec()
            chunks = _generate(engine, request, waiting, running, used)
            # aclosing: a client that leaves closes the engine's generator now, in this task.
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    yield chunk


async def _deltas_then_answer(
    first: Chunk, rest: AsyncGenerator[Chunk, None], collector: AnswerCollector
) -> AsyncGenerator[Chunk | Answer, None]:
    try:
        chunk: Chunk | None = first
        while chunk is not None:
            deltas, answer = collector.add(chunk)
            for delta in deltas:  # (a final chunk's text and logprobs too, as a delta)
                yield delta
            if answer is not None:
                yield answer
                return
            chunk = await anext(rest, None)
        raise ModelUnavailable("The model stopped without finishing the answer")
    finally:
        # Client gone or stream finished: either way the engine stops working for it.
        await rest.aclose()


async def unless_disconnected(work: Awaitable[T], disconnected: Disconnect) -> T:
    """Run `work`, cancelling it (and so the generation) if the client disconnects first."""
    if disconnected is None:
        return await work
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected("Client disconnected before the answer was ready")
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


def record_generation(role: str, final: Chunk) -> None:
    """Per-model Prometheus figures for one finished generation."""
    t = final.timings
    generated = final.generated_tokens or 0
    metrics.MODEL_REQUESTS.labels(role, final.finish_reason or "stop").inc()
    metrics.PROMPT_TOKENS.labels(role).inc(final.input_tokens or 0)
    metrics.GENERATION_TOKENS.labels(role).inc(generated)
    if t is None:
        return
    metrics.TIME_TO_FIRST_TOKEN.labels(role).observe(t.ttft_s)
    metrics.E2E_LATENCY.labels(role).observe(t.total_s)
    metrics.QUEUE_TIME.labels(role).observe(t.queue_s)
    if generated > 1:
        metrics.INTER_TOKEN_LATENCY.labels(role).observe(
            max(0.0, t.total_s - t.ttft_s) / (generated - 1)
        )


@dataclass
class _Used:
    """What one request used, for its client's budgets: nothing until it reached the engine;
    then its prompt (counted or estimated at admission, the engine's count once final) and
    the tokens generated so far."""

    reached: bool = False
    prompt: int = 0
    generated: int = 0
    copies: int = 1  # answers this generation gives: its generated tokens count so often

    @property
    def tokens(self) -> int:
        return self.prompt + self.generated * self.copies if self.reached else 0


async def _settle(
    governor: Governor, client: Client, reservation: Reservation | None, used: _Used
) -> None:
    if used.tokens:
        metrics.CLIENT_TOKENS.labels(client.name).inc(used.tokens)
    await governor.budgets.settle(reservation, used.tokens)


def _remaining(request: GenerationRequest) -> float | None:
    return None if request.deadline is None else request.deadline - time.monotonic()


class _Watchdog:
    """At `deadline` (time.monotonic()), cancels the task that `arm()`ed it if it is still
    `awaiting` (the first chunk may come in a task of its own, the rest in the response's);
    `fired()` says whether it did, and takes that cancellation back."""

    def __init__(self, deadline: float | None) -> None:
        self.awaiting = False
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False
        self._handle: asyncio.TimerHandle | None = None
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_at(loop.time() + deadline - time.monotonic(), self._expire)

    def arm(self) -> None:
        self._task = asyncio.current_task()
        self.awaiting = True

    def _expire(self) -> None:
        self._handle = None
        if self.awaiting and self._task is not None:
            self._cancelled = True
            self._task.cancel()

    def fired(self) -> bool:
        if not self._cancelled:
            return False
        self._cancelled = False
        assert self._task is not None
        # Another cancellation (the client gone) too: that one wins.
        return self._task.uncancel() == 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def _generate(
    engine: Engine, request: GenerationRequest, waiting: Any, running: Any, used: _Used
) -> AsyncGenerator[Chunk, None]:
    role = engine.role
    # The engine's generation as a span (a child of the request's): its first token an
    # event, its counts attributes; upstreams continue it (request.trace).
    span = tracer().start_span(
        "generate",
        attributes={
            "gen_ai.request.model": role,
            "gen_ai.request.max_tokens": request.sampling.max_tokens,
            "avito.request_id": request.request_id,
        },
    )
    request = dataclasses.replace(request, trace=carrier(span))
    iterator = engine.generate(request)
    waiting.inc()
    state = "waiting"
    finished = False
    used.reached = True
    # The deadline cancels this task, not wait_for's helper: the engine's generator must run
    # in this task, so a cancellation (client gone) unwinds it here and now, not in a helper
    # task that could still be running when we close it. One timer for the whole generation
    # (a timer per event cost 7% of the CPU of a stream): it cancels only while the engine is
    # awaited, never across a `yield` (this task is then running the consumer's code); a
    # deadline passed meanwhile is caught before the next await.
    watchdog = _Watchdog(request.deadline)
    try:
        while True:
            remaining = _remaining(request)
            if remaining is not None and remaining <= 0:
                raise Timeout("Request timed out")
            try:
                watchdog.arm()
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if watchdog.fired():
                    raise Timeout("Request timed out") from None
                raise
            except TimeoutError:
                raise Timeout("Request timed out") from None
            finally:
                watchdog.awaiting = False
            if watchdog.fired():  # as the engine answered
                raise Timeout("Request timed out")
            if state == "waiting":
                waiting.dec()
                running.inc()
                state = "running"
                span.add_event("first_token")
            if chunk.is_final:
                finished = True
                record_generation(role, chunk)
                span.set_attributes(
                    {
                        "gen_ai.usage.input_tokens": chunk.input_tokens or 0,
                        "gen_ai.usage.output_tokens": chunk.generated_tokens or 0,
                        "gen_ai.response.finish_reasons": [str(chunk.finish_reason)],
                    }
                )
                if chunk.input_tokens is not None:
                    used.prompt = chunk.input_tokens
            if chunk.generated_tokens is not None:
                used.generated = chunk.generated_tokens
            elif chunk.text:
                used.generated += 1  # an engine that does not count: a token per delta
            yield chunk
            if chunk.is_final:
                return
    except (GeneratorExit, asyncio.CancelledError):
        if not finished:  # the client went away: the engine's work for it is cancelled
            metrics.MODEL_REQUESTS.labels(role, "cancelled").inc()
            span.set_attribute("avito.cancelled", True)
        raise
    except Exception as exc:
        span.record_exception(exc)
        span.set_status(StatusCode.ERROR, str(exc))
        raise
    finally:
        watchdog.close()
        span.end()
        (waiting if state == "waiting" else running).dec()
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
