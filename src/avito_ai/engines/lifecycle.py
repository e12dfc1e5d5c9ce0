"""What the in-process engines (transformers, OpenVINO) share around their worker.

Each loads in the background (LOADING, then READY or FAILED with a readable reason), runs
its model on one worker thread, and reports FAILED if that thread ever dies (a bug, logged
with its traceback) instead of claiming to be ready.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator

from avito_ai.engines.base import Chunk, EngineState, EngineStatus, Role
from avito_ai.errors import ModelUnavailable, ShuttingDown

log = logging.getLogger(__name__)


class InProcessEngine:
    """Base of the in-process engines (transformers, OpenVINO): subclasses load, serve and say
    if the worker lives."""

    role: Role
    title: str  # "A-Vibe", "A-Vision": how messages name the model
    engine: str  # the backend, as /api/health names it

    def __init__(self, model_id: str | None) -> None:
        self._state = EngineState.LOADING
        self._reason: str | None = None
        self._model_id = model_id
        self._device: str | None = None  # where it runs, once known
        self._dtype: str | None = None

    def _worker_alive(self) -> bool:
        raise NotImplementedError

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
