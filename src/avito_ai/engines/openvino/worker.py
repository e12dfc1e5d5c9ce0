"""What both OpenVINO engines share: one worker thread stepping a ContinuousBatchingPipeline.

OpenVINO GenAI schedules the batch itself (paged KV cache, chunked prefill, prefix caching,
per-request sampling); an engine feeds it and streams what it produces. Everything that
touches the pipeline runs on ONE worker thread, through the same bridge as the transformers
engines (engines/bridge.py): each step it

1. cancels the requests whose client went away or whose deadline passed
   (`GenerationHandle.cancel()`: the pipeline drops them at this step);
2. adds waiting requests while fewer than MAX_BATCH_SIZE run (`_add_request`: token ids
   for A-Vibe, a prompt and its images for A-Vision);
3. runs one `step()` (the GIL is released inside), then reads every request's new tokens
   and feeds them through its text pipeline (detokenize, strip thinking, stop strings),
   ending the answers that finished.

Subclasses load the pipeline, turn a request into a `Prepared` (`prepare`) and add it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from avito_ai.config import InProcessSettings, OpenVINOSettings
from avito_ai.engines.base import (
    ALL_CONSTRAINTS,
    Capabilities,
    Chunk,
    EngineState,
    FinishReason,
    GenerationRequest,
    TokenLogprob,
)
from avito_ai.engines.bridge import Ticket, WorkerBridge
from avito_ai.engines.inprocess import InProcessEngine
from avito_ai.engines.openvino.detokenize import detokenizers
from avito_ai.engines.openvino.generation import Prepared, Row
from avito_ai.engines.openvino.probe import shared_probe
from avito_ai.engines.prompts import special_spellings
from avito_ai.engines.textstream import Detokenizer, TextPipeline
from avito_ai.engines.threads import run_in_own_thread
from avito_ai.errors import ModelUnavailable, Timeout, ValidationFailed

log = logging.getLogger(__name__)


class PipelineEngine(InProcessEngine):
    """An engine on one ContinuousBatchingPipeline; subclasses load, prepare and add."""

    def __init__(
        self,
        model_id: str | None,
        local: InProcessSettings,
        settings: OpenVINOSettings,
        *,
        max_queue_size: int,
    ) -> None:
        super().__init__(model_id)
        self._local = local
        self._settings = settings
        self._pipe: Any = None
        self._tokenizer: Any = None  # openvino_genai.Tokenizer
        self._specials: list[str] = []  # the spellings a client's text may not hold
        self._context = 0  # the model's context in tokens; 0: unknown
        self._vocab_size = 0  # the tokenizer's; what a grammar's compile cost scales with
        self._eos: frozenset[int] = frozenset()
        self._new_detokenizer: Callable[[], Detokenizer] | None = None
        self._token_bytes: Callable[[int], bytes] = lambda token: b""
        self._bridge: WorkerBridge[Prepared] = WorkerBridge(
            max_queue_size=max_queue_size, name=f"{self.role}-openvino"
        )
        self._max_batch = local.max_batch_size
        self._rows: list[Row] = []  # worker-only
        # Requests cancelled since the last step (worker-only): the pipeline frees their
        # KV blocks at its next step, so one more step runs even when nothing else does.
        self._cancelled = False
        self._next_id = 0  # worker-only

    # ------------------------------------------------------------------ subclass hooks

    def _load(self) -> Any:
        """Find, check and load the model (blocking, in a thread); returns what `_install`
        takes, with `pipe`, `tokenizer`, `precision` and `seconds`. Raises ModelLoadError."""
        raise NotImplementedError

    def _install(self, loaded: Any) -> None:
        """Take what `_load` returned (on the event loop), before the worker starts."""

    def prepare(self, request: GenerationRequest) -> Prepared:
        """The request ready for the pipeline. Raises ValidationFailed."""
        raise NotImplementedError

    def _add_request(self, request_id: int, prepared: Prepared) -> Any:
        """`pipe.add_request(...)` for this engine's inputs; returns the handle."""
        raise NotImplementedError

    async def _prepared(self, request: GenerationRequest) -> Prepared:
        return self.prepare(request)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load in a thread; end READY or FAILED (with a reason). Never raises an error."""
        if self._state is EngineState.STOPPED:
            return
        try:
            loaded = await run_in_own_thread(self._load, name=f"{self.role}-load")
            if self.status().state is EngineState.STOPPED:  # stop() came during the load
                return
            self._install(loaded)
            self._start_worker(loaded.pipe, loaded.tokenizer, loaded.precision)
        except Exception as exc:
            log.exception("%s model failed to load", self.title)
            self._fail(str(exc) or type(exc).__name__)
            return
        self._state = EngineState.READY
        log.info(
            "%s ready: %s on OpenVINO CPU (%s) in %.1f s",
            self.title,
            self._model_id,
            loaded.precision,
            loaded.seconds,
        )

    def _start_worker(self, pipe: Any, tokenizer: Any, precision: str) -> None:
        """Take the loaded pipeline and start the worker."""
        vocab = (
            t.decode("utf-8", "replace") if isinstance(t, bytes) else t
            for t in tokenizer.get_vocab()
        )
        spellings = list(vocab)
        self._vocab_size = len(spellings)
        self._specials = [*special_spellings(spellings), *self._specials]
        config = pipe.get_config()
        self._eos = frozenset({int(config.eos_token_id), *map(int, config.stop_token_ids)})
        self._new_detokenizer, self._token_bytes = detokenizers(tokenizer)
        self._pipe, self._tokenizer = pipe, tokenizer
        self._device, self._dtype = "cpu", precision
        self._bridge.start(self._run)

    async def stop(self) -> None:
        """Stop the worker (queued requests: ShuttingDown; running: "cancelled")."""
        self._stopping()
        await asyncio.to_thread(self._bridge.stop)
        self._pipe = self._tokenizer = None

    def _worker(self) -> WorkerBridge[Prepared]:
        return self._bridge

    def _running(self) -> int:
        return len(self._rows)  # in the batch

    # ----------------------------------------------------------------- generation

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self._ensure_ready()
        prepared = await self._prepared(request)
        structured = prepared.config.structured_output_config
        if structured is not None:  # OpenVINO's own compiler accepts it first (probe.py)
            probe = shared_probe(self._local.model_cache_dir, self._settings.grammar_limit)
            await probe.check(structured.grammar, self._vocab_size, "response_format")
        async for chunk in self._relay(self._bridge.stream(prepared, deadline=request.deadline)):
            yield chunk

    def capabilities(self) -> Capabilities:
        # n > 1: num_return_sequences hung the pipeline here (2026.4.1, the embedded GGUF),
        # so the services run n generations (services/choices.py).
        return Capabilities(constraints=ALL_CONSTRAINTS, logprobs=True, top_logprobs=0)

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
                    if self._step():
                        self._collect(time.monotonic())
                bridge.flush()
        except BaseException:  # pragma: no cover - a bug in the worker or the pipeline
            log.exception("%s OpenVINO worker crashed", self.title)
            bridge.fail(
                [r.ticket for r in self._rows], RuntimeError(f"The {self.title} worker stopped")
            )
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

    def _step(self) -> bool:
        """One step of the pipeline. A step that raises (a request's configuration the
        pipeline's own checks let through) leaves the pipeline unusable: the requests in it
        fail with a reason, and a new pipeline is built in their place (the worker, the
        queue and every waiting request carry on). False: the step failed."""
        try:
            self._pipe.step()
            return True
        except Exception as exc:
            ids = [row.ticket.payload.request.request_id for row in self._rows]
            log.exception("%s OpenVINO step failed; requests %s fail", self.title, ids)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._bridge.fail(
                [row.ticket for row in self._rows],
                ModelUnavailable(
                    f"The {self.title} model failed on a request in this batch and was "
                    "restarted; retry the request"
                ),
            )
            self._rows = []
            self._restart_pipeline(reason)
            return False

    def _restart_pipeline(self, reason: str) -> None:
        """Build the pipeline again, on the worker thread (waiting requests wait)."""
        started = time.monotonic()
        if self._state is EngineState.READY:  # not after stop()
            self._state, self._reason = EngineState.LOADING, "restarting after a failed step"
        self._pipe = None
        self._pipe = self._load().pipe  # raises: the worker ends and the engine fails
        if self._state is EngineState.LOADING:
            self._state = EngineState.READY
        log.warning(
            "%s OpenVINO pipeline rebuilt in %.1f s after a failed step (%s)",
            self.title,
            time.monotonic() - started,
            reason[:200],
        )

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
            handle = self._add_request(self._next_id, prepared)
        except Exception:  # e.g. a configuration the pipeline refuses
            # Its text (a C++ check with the build's paths) is for the log, not the client.
            request_id = prepared.request.request_id
            log.exception("add_request failed", extra={"request_id": request_id})
            refusal = ValidationFailed(
                f"The model could not take this request's {prepared.what}; the service "
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
                        "(or fewer, smaller images) or raise OPENVINO_KV_CACHE_GB"
                    ),
                )
            else:
                keep.append(row)
        self._rows = keep

    def _read(self, row: Row, now: float) -> None:
        import openvino_genai as genai

        length = genai.GenerationFinishReason.LENGTH
        ours = row.output
        for output in row.handle.read().values():
            scores = output.generated_log_probs if ours.logprobs is not None else ()
            for i, token in enumerate(output.generated_ids):
                logprob = None
                if ours.logprobs is not None:
                    raw = self._token_bytes(int(token))
                    text = raw.decode("utf-8", "replace")
                    logprob = TokenLogprob(text, float(scores[i]), tuple(raw))
                # An end token is the end of the answer, not text.
                delta = ours.token(int(token), now, logprob, text=token not in self._eos)
                if delta is not None:
                    self._bridge.send(row.ticket, delta)
                if ours.stopped:
                    row.finish = "stop"
                    return
            if output.finish_reason == length:
                row.finish = "length"
            elif output.finish_reason != genai.GenerationFinishReason.NONE:
                row.finish = "stop"

    def _final(self, row: Row, reason: FinishReason, now: float) -> list[Chunk]:
        return row.output.finish(reason, now)
