"""Turn wire requests into GenerationRequests, pick the engine, collect the answer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from avito_ai.clients import CURRENT, PRIORITY_CLASSES, Client
from avito_ai.config import Settings
from avito_ai.engines.base import (
    Capabilities,
    ChatMessage,
    ChoiceEnd,
    Chunk,
    ContentPart,
    DeclaresCapabilities,
    Engine,
    EngineState,
    GenerationRequest,
    OutputConstraint,
    Role,
    SamplingParams,
    TextPart,
    Timings,
    TokenLogprob,
)
from avito_ai.errors import ModelUnavailable, Timeout, ValidationFailed
from avito_ai.observability import metrics
from avito_ai.schemas.native import SamplingFields
from avito_ai.services.admission import Governor, governor_for, priority_of
from avito_ai.services.budgets import Reservation, prompt_tokens
from avito_ai.services.choices import fan_out
from avito_ai.services.state import ServiceState


def validate_prompt(prompt: object, settings: Settings, *, field: str = "prompt") -> str:
    """The seed's prompt rules: present, a string, not blank, at most MAX_PROMPT_LENGTH."""
    if prompt is None:
        raise ValidationFailed("Prompt is required", param=field)
    if not isinstance(prompt, str):
        raise ValidationFailed("Prompt must be a string", param=field)
    if not prompt.strip():
        raise ValidationFailed("Prompt must not be empty", param=field)
    if len(prompt) > settings.max_prompt_length:
        raise ValidationFailed(
            f"Prompt too long. Maximum length: {settings.max_prompt_length} characters",
            param=field,
        )
    return prompt


def question_or_default(question: str | None, default: str) -> str:
    """The question asked about an image: none, or only whitespace, means `default`."""
    return question if question is not None and question.strip() else default


GREEDY_BELOW = 1e-5


def _capabilities(engine: Engine) -> Capabilities:
    return engine.capabilities() if isinstance(engine, DeclaresCapabilities) else Capabilities()


def check_options(engine: Engine, sampling: SamplingParams, max_choices: int | None) -> None:
    """Refuse (400) before anything runs the options this engine cannot honour, and more
    choices than MAX_CHOICES."""
    if max_choices is not None and sampling.n > max_choices:
        raise ValidationFailed(f"n must be between 1 and {max_choices} (MAX_CHOICES)", param="n")
    can = _capabilities(engine)
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


def sampling_params(
    fields: SamplingFields, role: Role, settings: Settings, *, max_tokens_field: str = "max_tokens"
) -> SamplingParams:
    """`max_tokens_field`: the name the client used for max_tokens (named in the error)."""
    cap = settings.role(role).max_tokens
    max_tokens = cap if fields.max_tokens is None else fields.max_tokens
    if not 1 <= max_tokens <= cap:
        raise ValidationFailed(
            f"{max_tokens_field} must be between 1 and {cap}", param=max_tokens_field
        )
    stop = (fields.stop,) if isinstance(fields.stop, str) else tuple(fields.stop or ())
    temperature = settings.temperature if fields.temperature is None else fields.temperature
    return SamplingParams(
        max_tokens=max_tokens,
        # As vLLM does: below 1e-5 sampling is greedy in all but name, and dividing logits
        # by such a temperature overflows float32 (transformers' sampling got NaNs).
        temperature=0.0 if temperature < GREEDY_BELOW else temperature,
        top_p=1.0 if fields.top_p is None else fields.top_p,
        top_k=fields.top_k or 0,
        repetition_penalty=fields.repetition_penalty or 1.0,
        presence_penalty=fields.presence_penalty or 0.0,
        frequency_penalty=fields.frequency_penalty or 0.0,
        stop=stop,
        seed=fields.seed,
        ignore_eos=fields.ignore_eos,
        logprobs=fields.logprobs or fields.top_logprobs > 0,
        top_logprobs=fields.top_logprobs,
    )


def chat_request(
    *,
    request_id: str,
    role: Role,
    user_content: list[ContentPart],
    fields: SamplingFields,
    settings: Settings,
    constraint: OutputConstraint | None = None,
) -> GenerationRequest:
    """A single-turn chat (optional system message) as the native API and forms send it."""
    messages: list[ChatMessage] = []
    if fields.system is not None and fields.system.strip():
        validate_prompt(fields.system, settings, field="system")
        messages.append(ChatMessage.text("system", fields.system))
    messages.append(ChatMessage(role="user", content=tuple(user_content)))
    return GenerationRequest(
        request_id=request_id,
        sampling=sampling_params(fields, role, settings),
        messages=messages,
        enable_thinking=fields.enable_thinking,
        deadline=time.monotonic() + settings.request_timeout,
        constraint=constraint,
    )


def text_request(
    prompt: object,
    fields: SamplingFields,
    settings: Settings,
    request_id: str,
    constraint: OutputConstraint | None = None,
) -> GenerationRequest:
    text = validate_prompt(prompt, settings)
    return chat_request(
        request_id=request_id,
        role="avibe",
        user_content=[TextPart(text)],
        fields=fields,
        settings=settings,
        constraint=constraint,
    )


LOAD_POLL_S = 0.05


async def ready_engine(state: ServiceState, role: Role) -> Engine:
    """The engine for a role once it can answer, or ModelUnavailable saying why not.

    A request that arrives while its model is still loading (a fresh start, a new gunicorn
    worker after a HUP reload) waits for the load, up to REQUEST_TIMEOUT, instead of
    failing: readiness keeps load balancers away meanwhile, and a client that did come
    gets an answer. A model that is not configured or failed to load answers 503 at once.
    """
    engine = state.engines[role]
    deadline = time.monotonic() + state.settings.request_timeout
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


@dataclass(frozen=True)
class ChoiceAnswer:
    index: int
    text: str
    finish_reason: str
    generated_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None  # when asked for


@dataclass(frozen=True)
class Answer:
    """A whole generation: the first choice's text and finish, every choice in `choices`,
    token counts of all of them."""

    text: str
    finish_reason: str
    input_tokens: int
    generated_tokens: int
    timings: Timings
    choices: tuple[ChoiceAnswer, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None  # the first choice's, when asked for

    @property
    def tokens_per_second(self) -> float:
        gen = self.timings.generation_s
        return round(self.generated_tokens / gen, 2) if gen > 0 else 0.0


class AnswerCollector:
    """Gathers a stream's chunks into the Answer (text and logprobs per choice)."""

    def __init__(self, logprobs: bool = False) -> None:
        self.logprobs = logprobs
        self._texts: dict[int, list[str]] = {}
        self._tokens: dict[int, list[TokenLogprob]] = {}

    def add(self, chunk: Chunk) -> Answer | None:
        """Take one chunk; the Answer once the final one came."""
        self._texts.setdefault(chunk.index, []).append(chunk.text)
        if chunk.logprobs:
            self._tokens.setdefault(chunk.index, []).extend(chunk.logprobs)
        if not chunk.is_final:
            return None
        if chunk.timings is None:
            raise ModelUnavailable("The model stopped without finishing the answer")
        ends = chunk.choices or (
            ChoiceEnd(0, chunk.finish_reason or "stop", chunk.generated_tokens or 0),
        )
        choices = tuple(
            ChoiceAnswer(
                end.index,
                "".join(self._texts.get(end.index, ())),
                end.finish_reason,
                end.generated_tokens,
                tuple(self._tokens.get(end.index, ())) if self.logprobs else None,
            )
            for end in sorted(ends, key=lambda e: e.index)
        )
        first = choices[0]
        return Answer(
            text=first.text,
            finish_reason=first.finish_reason,
            input_tokens=chunk.input_tokens or 0,
            generated_tokens=chunk.generated_tokens or 0,
            timings=chunk.timings,
            choices=choices,
            logprobs=first.logprobs,
        )


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


async def stream_chunks(engine: Engine, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
    """The engine's chunks, bounded by the request deadline even if the engine is stuck.

    Also the one place generation metrics are recorded (waiting until the first chunk,
    running after it, the per-model histograms when the final chunk arrives), and where
    fair admission applies (services/admission.py): the client's token budgets reserve what
    the request may use, a place in the model's fair queue is awaited, and the tokens the
    request used (prompt plus generated, cancelled or not, once it reached the engine)
    settle the reservation.
    """
    role = engine.role
    governor = governor_for(engine)
    check_options(engine, request.sampling, governor.settings.max_choices if governor else None)
    if request.sampling.n > 1 and not _capabilities(engine).choices:
        # The services make the n choices: each a generation of its own (and a request for
        # fair admission and the budgets), merged by index.
        async with contextlib.aclosing(fan_out(stream_chunks, engine, request)) as merged:
            async for chunk in merged:
                yield chunk
        return
    client = CURRENT.get()
    waiting, running = metrics.REQUESTS_WAITING.labels(role), metrics.REQUESTS_RUNNING.labels(role)
    used = _Used()
    reservation: Reservation | None = None
    async with contextlib.AsyncExitStack() as stack:
        if governor is not None:
            priority = priority_of(client)
            if governor.budgets.active(client):
                used.prompt = prompt_tokens(engine, request, governor.settings.avision_max_pixels)
                # n choices made by the engine itself may each use max_tokens
                wanted = used.prompt + request.sampling.max_tokens * request.sampling.n
                reservation = await governor.budgets.reserve(client, wanted)
            stack.push_async_callback(_settle, governor, client, reservation, used)
            request = dataclasses.replace(request, priority=PRIORITY_CLASSES[priority])
            admission = governor.admissions[role]
            limit = governor.concurrency_for(client)
            # n choices the engine makes itself hold n places (as many as can be had at all)
            places = min(request.sampling.n, admission.capacity, limit or request.sampling.n)
            waiting.inc()
            try:
                async with asyncio.timeout(_remaining(request)):
                    for _ in range(places):
                        await stack.enter_async_context(admission.place(client.id, priority, limit))
            except TimeoutError:
                raise Timeout("Request timed out waiting for its turn") from None
            finally:
                waiting.dec()
        chunks = _generate(engine, request, waiting, running, used)
        # aclosing: a client that leaves closes the engine's generator now, in this task.
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk


@dataclass
class _Used:
    """What one request used, for its client's budgets: nothing until it reached the engine;
    then its prompt (counted or estimated at admission, the engine's count once final) and
    the tokens generated so far."""

    reached: bool = False
    prompt: int = 0
    generated: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt + self.generated if self.reached else 0


async def _settle(
    governor: Governor, client: Client, reservation: Reservation | None, used: _Used
) -> None:
    if used.tokens:
        metrics.CLIENT_TOKENS.labels(client.name).inc(used.tokens)
    await governor.budgets.settle(reservation, used.tokens)


def _remaining(request: GenerationRequest) -> float | None:
    return None if request.deadline is None else request.deadline - time.monotonic()


async def _generate(
    engine: Engine, request: GenerationRequest, waiting: Any, running: Any, used: _Used
) -> AsyncGenerator[Chunk, None]:
    role = engine.role
    iterator = engine.generate(request)
    waiting.inc()
    state = "waiting"
    finished = False
    used.reached = True
    try:
        while True:
            remaining = _remaining(request)
            if remaining is not None and remaining <= 0:
                raise Timeout("Request timed out")
            # asyncio.timeout, not wait_for: the engine's generator must run in this task,
            # so a cancellation (client gone) unwinds it here and now, not in a helper task
            # that could still be running when we close it.
            try:
                async with asyncio.timeout(remaining):
                    chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise Timeout("Request timed out") from None
            if state == "waiting":
                waiting.dec()
                running.inc()
                state = "running"
            if chunk.is_final:
                finished = True
                record_generation(role, chunk)
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
        raise
    finally:
        (waiting if state == "waiting" else running).dec()
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def complete(engine: Engine, request: GenerationRequest) -> Answer:
    """Collect a whole answer (non-streaming endpoints)."""
    collector = AnswerCollector(request.sampling.logprobs)
    async for chunk in stream_chunks(engine, request):
        answer = collector.add(chunk)
        if answer is not None:
            return answer
    raise ModelUnavailable("The model stopped without finishing the answer")
