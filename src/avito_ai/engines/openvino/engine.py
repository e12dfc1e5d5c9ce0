"""A-Vibe on OpenVINO GenAI's continuous-batching pipeline: the CPU default.

OpenVINO GenAI schedules the batch itself (paged KV cache, chunked prefill, prefix caching,
per-request sampling); this engine feeds it and streams what it produces. Prompts are built
and tokenized on the event loop (a template render and one tokenizer call). Everything that
touches the pipeline runs on ONE worker thread, through the same bridge as the transformers
engines (engines/bridge.py): each step it

1. cancels the requests whose client went away or whose deadline passed
   (`GenerationHandle.cancel()`: the pipeline drops them at this step);
2. adds waiting requests while fewer than MAX_BATCH_SIZE run;
3. runs one `step()` (the GIL is released inside), then reads every request's new tokens
   and feeds them through its text pipeline (detokenize, strip thinking, stop strings),
   ending the answers that finished.

Sampling is the pipeline's: temperature, top-p/k, repetition penalty and the request's own
`rng_seed`; stop strings are applied by the pipeline (it stops generating) and by the text
pipeline (it cuts the text exactly as the transformers engine does).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from avito_ai.config import Settings
from avito_ai.engines.base import (
    ALL_CONSTRAINTS,
    Capabilities,
    Chunk,
    EngineState,
    FinishReason,
    GenerationRequest,
    Role,
    TokenLogprob,
    final_chunk,
)
from avito_ai.engines.bridge import Ticket, WorkerBridge
from avito_ai.engines.lifecycle import InProcessEngine
from avito_ai.engines.models import EMBEDDED_MODEL_ID
from avito_ai.engines.openvino.detokenize import detokenizers
from avito_ai.engines.openvino.generation import Prepared, Row, constrain, generation_config
from avito_ai.engines.prompts import (
    FALLBACK_STOPS,
    chat_input,
    check_prompt_tokens,
    fallback_prompt,
    neutralize,
    special_spellings,
    takes_tools,
)
from avito_ai.engines.textstream import THINK_OPEN, Detokenizer, TextPipeline
from avito_ai.engines.threads import run_in_own_thread
from avito_ai.errors import ModelUnavailable, Timeout, ValidationFailed

if TYPE_CHECKING:
    from avito_ai.engines.openvino.loading import LoadedPipeline

log = logging.getLogger(__name__)


class OpenVINOTextEngine(InProcessEngine):
    """Engine for role "avibe" on OpenVINO GenAI. Construction is cheap; start() loads."""

    role: Role = "avibe"
    title = "A-Vibe"
    engine = "openvino"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.role("avibe").model or EMBEDDED_MODEL_ID)
        self._settings = settings
        self._pipe: Any = None
        self._tokenizer: Any = None
        self._has_template = False
        self._takes_tools = False
        self._specials: list[str] = []
        self._eos: frozenset[int] = frozenset()
        self._new_detokenizer: Callable[[], Detokenizer] | None = None
        self._token_bytes: Callable[[int], bytes] = lambda token: b""
        self._bridge: WorkerBridge[Prepared] = WorkerBridge(
            max_queue_size=settings.max_queue_size, name="avibe-openvino"
        )
        self._max_batch = settings.max_batch_size
        self._context = 0  # the model's context in tokens; 0: unknown
        self._rows: list[Row] = []  # worker-only
        # Requests cancelled since the last step (worker-only): the pipeline frees their
        # KV blocks at its next step, so one more step runs even when nothing else does.
        self._cancelled = False
        self._next_id = 0  # worker-only

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load in a thread; end READY or FAILED (with a reason). Never raises an error."""
        if self._state is EngineState.STOPPED:
            return
        from avito_ai.engines.openvino.loading import load_pipeline, resolve_source

        try:
            source = resolve_source(self._settings.role("avibe").model)
            self._model_id = source.model_id
            loaded = await run_in_own_thread(
                lambda: load_pipeline(source, self._settings), name="avibe-load"
            )
            if self.status().state is EngineState.STOPPED:  # stop() came during the load
                return
            self._install(loaded)
        except Exception as exc:
            log.exception("A-Vibe model failed to load")
            self._fail(str(exc) or type(exc).__name__)
            return
        self._state = EngineState.READY
        log.info(
            "A-Vibe ready: %s on OpenVINO CPU (%s) in %.1f s",
            self._model_id,
            loaded.precision,
            loaded.seconds,
        )

    def _install(self, loaded: LoadedPipeline) -> None:
        tokenizer = loaded.tokenizer
        self._has_template = bool(tokenizer.chat_template)
        self._takes_tools = takes_tools(tokenizer.chat_template)
        vocab = (
            t.decode("utf-8", "replace") if isinstance(t, bytes) else t
            for t in tokenizer.get_vocab()
        )
        self._specials = special_spellings(vocab)
        config = loaded.pipe.get_config()
        self._eos = frozenset({int(config.eos_token_id), *map(int, config.stop_token_ids)})
        self._new_detokenizer, self._token_bytes = detokenizers(tokenizer)
        self._context = loaded.context_length or 0
        self._pipe, self._tokenizer = loaded.pipe, tokenizer
        self._device, self._dtype = "cpu", loaded.precision
        self._bridge.start(self._run)

    async def stop(self) -> None:
        """Stop the worker (queued requests: ShuttingDown; running: "cancelled")."""
        self._stopping()
        await asyncio.to_thread(self._bridge.stop)
        self._pipe = self._tokenizer = None

    def _worker_alive(self) -> bool:
        return self._bridge.alive

    # ----------------------------------------------------------------- generation

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self._ensure_ready()
        prepared = self.prepare(request)
        async for chunk in self._relay(self._bridge.stream(prepared, deadline=request.deadline)):
            yield chunk

    def capabilities(self) -> Capabilities:
        # n > 1: num_return_sequences hung the pipeline here (2026.4.1, the embedded GGUF),
        # so the services run n generations (choices.py).
        return Capabilities(constraints=ALL_CONSTRAINTS, logprobs=True, top_logprobs=0)

    def prompt_tokens(self, request: GenerationRequest) -> int:
        self._ensure_ready()
        return self.prepare(request).prompt_tokens

    def prepare(self, request: GenerationRequest) -> Prepared:
        """Render and tokenize the prompt, map the sampling. Raises ValidationFailed."""
        sampling = request.sampling
        if sampling.max_tokens < 1:
            raise ValidationFailed("max_tokens must be at least 1", param="max_tokens")
        stops = tuple(s for s in sampling.stop if s)
        if request.prompt is not None:
            if not request.prompt:
                raise ValidationFailed("The prompt is empty", param="prompt")
            prompt, special = request.prompt, True
        else:
            plain, tools = chat_input(request, template_tools=self._takes_tools)
            if self._has_template:
                for message in plain:
                    message["content"] = neutralize(message["content"], self._specials)
                prompt = self._tokenizer.apply_chat_template(
                    plain,
                    add_generation_prompt=True,
                    tools=tools,
                    extra_context={"enable_thinking": request.enable_thinking},
                )
            else:
                prompt = fallback_prompt(plain)
                stops += FALLBACK_STOPS
            special = False  # the template wrote the special tokens it wants
        input_ids = self._tokenizer.encode(prompt, add_special_tokens=special).input_ids
        tokens = int(input_ids.shape[1])
        check_prompt_tokens(
            tokens, self._settings.max_prompt_tokens, raw=request.prompt is not None
        )
        room = self._context - tokens if self._context else sampling.max_tokens
        if room < 1:  # (the tokenizer cuts a longer prompt at the context: "at least")
            raise ValidationFailed(
                f"The prompt is at least {tokens} tokens; the model's context is "
                f"{self._context} tokens",
                param="prompt" if request.prompt is not None else "messages",
            )
        config = generation_config(sampling)
        config.max_new_tokens = min(sampling.max_tokens, room)
        opened = prompt.rstrip().endswith(THINK_OPEN)
        constrain(config, request, thinking_opened=opened)
        return Prepared(
            request=request,
            input_ids=input_ids,
            prompt_tokens=tokens,
            config=config,
            stop=stops,
            keep_thinking=request.enable_thinking,
            thinking_open=opened,
        )

    # ---------------------------------------------------------------- worker side

    def _run(self) -> None:
        bridge = self._bridge
        try:
            while bridge.wait_for_work(busy=bool(self._rows) or self._cancelled):
                self._drop_gone()
                for ticket in bridge.take(self._max_batch - len(self._rows)):
                    self._admit(ticket)
                if self._rows or self._cancelled:
                    self._cancelled = False
                    self._pipe.step()
                    self._collect(time.monotonic())
                bridge.flush()
        except BaseException:  # pragma: no cover - a bug in the worker or the pipeline
            log.exception("A-Vibe OpenVINO worker crashed")
            bridge.fail([r.ticket for r in self._rows], RuntimeError("The A-Vibe worker stopped"))
        finally:
            bridge.close()
            now = time.monotonic()
            for row in self._rows:
                self._cancel(row)
                if not row.ticket.done:
                    bridge.end(row.ticket, self._final(row, "cancelled", now))
            self._rows = []
            bridge.flush()
            if self._cancelled and self._pipe is not None:
                with contextlib.suppress(Exception):  # the pipeline is going away anyway
                    self._pipe.step()  # frees the cancelled requests' KV blocks

    def _drop_gone(self) -> None:
        """Cancel requests whose client left or whose deadline passed; free their slots."""
        now = time.monotonic()
        keep: list[Row] = []
        for row in self._rows:
            if row.ticket.cancelled:
                self._cancel(row)
            elif row.ticket.expired(now):
                self._cancel(row)
                self._bridge.fail([row.ticket], Timeout("Request timed out"))
            else:
                keep.append(row)
        self._rows = keep

    def _cancel(self, row: Row) -> None:
        row.handle.cancel()
        self._cancelled = True

    def _admit(self, ticket: Ticket[Prepared]) -> None:
        prepared = ticket.payload
        try:
            handle = self._pipe.add_request(self._next_id, prepared.input_ids, prepared.config)
        except Exception:  # e.g. a configuration the pipeline refuses
            # Its text (a C++ check with the build's paths) is for the log, not the client.
            request_id = prepared.request.request_id
            log.exception("add_request failed", extra={"request_id": request_id})
            refusal = ValidationFailed(
                "The model could not take this request's generation settings; the service "
                f"log has the details under request id {request_id}"
            )
            self._bridge.fail([ticket], refusal)
            return
        self._next_id += 1
        assert self._new_detokenizer is not None  # set before the worker starts
        text = TextPipeline(
            self._new_detokenizer(),
            stop=prepared.stop,
            keep_thinking=prepared.keep_thinking,
            thinking_open=prepared.thinking_open,
        )
        self._rows.append(Row(ticket, handle, text))

    def _collect(self, now: float) -> None:
        """Read every request's new tokens; end the answers that finished."""
        import openvino_genai as genai

        finished = genai.GenerationStatus.FINISHED
        running = genai.GenerationStatus.RUNNING
        keep: list[Row] = []
        for row in self._rows:
            if row.handle.can_read():
                self._read(row, now)
            status = row.handle.get_status()
            if row.finish is None and status == finished:
                row.finish = "stop"
            if row.finish is not None:
                if status == running:
                    self._cancel(row)  # a stop string (the text pipeline's) matched
                self._bridge.end(row.ticket, self._final(row, row.finish, now))
            elif status != running:  # IGNORED: it can never fit the KV cache
                self._bridge.fail(
                    [row.ticket],
                    ModelUnavailable(
                        "The request does not fit the KV cache; retry with a shorter prompt "
                        "or raise OPENVINO_KV_CACHE_GB"
                    ),
                )
            else:
                keep.append(row)
        self._rows = keep

    def _read(self, row: Row, now: float) -> None:
        import openvino_genai as genai

        length = genai.GenerationFinishReason.LENGTH
        for output in row.handle.read().values():
            scores = output.generated_log_probs if row.logprobs is not None else ()
            for i, token in enumerate(output.generated_ids):
                row.generated += 1
                if row.first_token_at is None:
                    row.first_token_at = now
                if row.logprobs is not None:
                    raw = self._token_bytes(int(token))
                    text = raw.decode("utf-8", "replace")
                    row.logprobs.append(TokenLogprob(text, float(scores[i]), tuple(raw)))
                if token in self._eos:
                    continue  # the end of the answer, not text
                delta = row.text.push(int(token))
                thought = row.text.take_reasoning()
                if delta or thought:
                    chunk = Chunk(
                        delta,
                        generated_tokens=row.generated,
                        logprobs=row.take(),
                        reasoning=thought,
                    )
                    self._bridge.send(row.ticket, chunk)
                if row.text.stopped:
                    row.finish = "stop"
                    return
            if output.finish_reason == length:
                row.finish = "length"
            elif output.finish_reason != genai.GenerationFinishReason.NONE:
                row.finish = "stop"

    def _final(self, row: Row, reason: FinishReason, now: float) -> list[Chunk]:
        tail = row.text.finish()
        thought = row.text.take_reasoning()
        final = final_chunk(
            reason,
            input_tokens=row.ticket.payload.prompt_tokens,
            generated_tokens=row.generated,
            created=row.ticket.payload.request.created,
            scheduled=row.scheduled_at,
            first_token=row.first_token_at,
            finished=now,
        )
        if row.logprobs:  # the tokens that made no text (the end, a held-back tail)
            final = dataclasses.replace(final, logprobs=row.take())
        return [Chunk(tail, reasoning=thought), final] if tail or thought else [final]
