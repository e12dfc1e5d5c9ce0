"""What the in-process engines (transformers, OpenVINO) share.

Each loads in the background (LOADING, then READY or FAILED with a readable reason), runs
its model on one worker thread, and reports FAILED if that thread ever dies (a bug, logged
with its traceback) instead of claiming to be ready (`InProcessEngine`). Whatever produces
the tokens (OpenVINO's pipeline, a batched forward, `generate()`), what a token means is
the same: `Output` counts it, sends its text through the text pipeline (detokenize, strip
thinking, stop strings) and ends the answer with the same closing chunks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from avito_ai.engines.base import (
    Chunk,
    EngineState,
    EngineStatus,
    FinishReason,
    Role,
    TokenLogprob,
    final_chunk,
)
from avito_ai.engines.textstream import TextPipeline
from avito_ai.errors import ModelUnavailable, ShuttingDown

log = logging.getLogger(__name__)


class Worker(Protocol):
    """The thread an in-process engine runs its model on (a WorkerBridge, a BatchScheduler)."""

    @property
    def alive(self) -> bool: ...

    @property
    def waiting_count(self) -> int: ...


class InProcessEngine:
    """Base of the in-process engines (transformers, OpenVINO): subclasses load and serve;
    `_worker` names their worker, `_running` counts the requests it is generating."""

    role: Role
    title: str  # "A-Vibe", "A-Vision": how messages name the model
    engine: str  # the backend, as /api/health names it

    def __init__(self, model_id: str | None) -> None:
        self._state = EngineState.LOADING
        self._reason: str | None = None
        self._model_id = model_id
        self._device: str | None = None  # where it runs, once known
        self._dtype: str | None = None

    def _worker(self) -> Worker | None:
        """The engine's worker; None before it starts (or once it is released)."""
        raise NotImplementedError

    def _running(self) -> int:
        """Requests the worker is generating now (read from another thread: a step's
        staleness at most)."""
        raise NotImplementedError

    def _worker_alive(self) -> bool:
        worker = self._worker()
        return worker is not None and worker.alive

    @property
    def waiting_count(self) -> int:
        """Requests queued for the worker."""
        worker = self._worker()
        return worker.waiting_count if worker is not None else 0

    @property
    def active_count(self) -> int:
        """Requests being generated."""
        return self._running()

    def status(self) -> EngineStatus:
        if self._state is EngineState.READY and not self._worker_alive():
            self._fail("the generation worker stopped unexpectedly; see the logs")
        return EngineStatus(
            self.role,
            self._state,
            model_id=self._model_id,
            device=self._device,
            dtype=self._dtype,
            reason=None if self._state is EngineState.READY else self._reason,
            engine=self.engine,
        )

    def _fail(self, reason: str) -> None:
        if self._state is EngineState.STOPPED:  # a load that ends after stop(): stay stopped
            return
        self._state, self._reason = EngineState.FAILED, reason
        log.error("%s: %s", self.title, reason)

    def _ensure_ready(self) -> None:
        """Raise ModelUnavailable (ShuttingDown once stopped) unless requests can be served."""
        status = self.status()
        if status.state is EngineState.READY:
            return
        if status.state is EngineState.STOPPED:
            raise ShuttingDown(f"{self.title} is shutting down")
        detail = f": {status.reason}" if status.reason else ""
        raise ModelUnavailable(f"{self.title} model is {status.state.value}{detail}")

    @staticmethod
    async def _relay(stream: AsyncGenerator[Chunk, None]) -> AsyncIterator[Chunk]:
        """Yield a worker stream's chunks. aclosing: when our consumer closes us, the worker
        stream is closed right now (not at garbage collection), so its ticket is withdrawn
        and the worker stops spending compute on it within a step."""
        async with contextlib.aclosing(stream) as chunks:
            async for chunk in chunks:
                yield chunk

    def _stopping(self) -> None:
        """First thing in stop(): readiness says why from now on, new requests get 503."""
        self._state, self._reason = EngineState.STOPPED, "shutting down"


class Output:
    """What one in-process generation has produced: its tokens through its text pipeline,
    its counts and moments, the log probabilities not sent yet; and the chunks that end it.
    Worker-side only."""

    __slots__ = (
        "_created",
        "_input_tokens",
        "first_token_at",
        "generated",
        "logprobs",
        "scheduled_at",
        "text",
    )

    def __init__(
        self,
        text: TextPipeline,
        *,
        input_tokens: int,
        created: float,
        logprobs: bool,
        scheduled_at: float | None = None,
    ) -> None:
        """`logprobs`: the client asked for them; `scheduled_at`: when work on it began
        (default: now)."""
        self.text = text
        self.generated = 0
        self.first_token_at: float | None = None
        self.scheduled_at = time.monotonic() if scheduled_at is None else scheduled_at
        # Each token's log probability since the last delta, when the client asked.
        self.logprobs: list[TokenLogprob] | None = [] if logprobs else None
        self._input_tokens = input_tokens
        self._created = created

    def token(
        self, token: int, now: float, logprob: TokenLogprob | None = None, *, text: bool = True
    ) -> Chunk | None:
        """Count one generated token (and its log probability, when asked for); its text,
        unless `text` is False (an end token), goes through the pipeline. Returns the delta
        it releases, or None."""
        self.generated += 1
        if self.first_token_at is None:
            self.first_token_at = now
        if logprob is not None and self.logprobs is not None:
            self.logprobs.append(logprob)
        if not text:
            return None
        delta = self.text.push(token)
        thought = self.text.take_reasoning()
        if not (delta or thought):
            return None
        return Chunk(
            delta, generated_tokens=self.generated, logprobs=self.take_logprobs(), reasoning=thought
        )

    @property
    def stopped(self) -> bool:
        """A stop string matched: the answer ends here."""
        return self.text.stopped

    def take_logprobs(self) -> tuple[TokenLogprob, ...] | None:
        """The log probabilities since the last call (None: not asked for)."""
        if self.logprobs is None:
            return None
        taken, self.logprobs = tuple(self.logprobs), []
        return taken

    def finish(self, reason: FinishReason, now: float) -> list[Chunk]:
        """The chunks that end the answer: any text still held back, then the summary."""
        tail = self.text.finish()
        thought = self.text.take_reasoning()
        final = final_chunk(
            reason,
            input_tokens=self._input_tokens,
            generated_tokens=self.generated,
            created=self._created,
            scheduled=self.scheduled_at,
            first_token=self.first_token_at,
            finished=now,
        )
        logprobs = self.take_logprobs()
        if logprobs:  # the tokens that made no text (the end, a held-back tail)
            final = dataclasses.replace(final, logprobs=logprobs)
        return [Chunk(tail, reasoning=thought), final] if tail or thought else [final]
