"""What the two in-process engines share around their worker: state, status, release.

Both load in the background (LOADING, then READY or FAILED with a readable reason), run
their model on one worker thread, and report FAILED if that thread ever dies (a bug,
logged with its traceback) instead of claiming to be ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncGenerator, AsyncIterator

from avito_ai.engines.base import Chunk, EngineState, EngineStatus, Role
from avito_ai.engines.transformers.device import Placement
from avito_ai.errors import ModelUnavailable, ShuttingDown

log = logging.getLogger(__name__)


class InProcessEngine:
    """Base of the transformers engines: subclasses load, serve and say if the worker lives."""

    role: Role
    title: str  # "A-Vibe", "A-Vision": how messages name the model

    def __init__(self, model_id: str | None) -> None:
        self._state = EngineState.LOADING
        self._reason: str | None = None
        self._model_id = model_id
        self._placement: Placement | None = None

    def _worker_alive(self) -> bool:
        raise NotImplementedError

    def status(self) -> EngineStatus:
        if self._state is EngineState.READY and not self._worker_alive():
            self._fail("the generation worker stopped unexpectedly; see the logs")
        placement = self._placement
        return EngineStatus(
            self.role,
            self._state,
            model_id=self._model_id,
            device=placement.device if placement else None,
            dtype=placement.dtype_name if placement else None,
            reason=None if self._state is EngineState.READY else self._reason,
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

    async def _released(self) -> None:
        """After the weights are dropped: give their memory back (CUDA caches too)."""
        await asyncio.to_thread(_free_memory, self._placement)


def _free_memory(placement: Placement | None) -> None:
    gc.collect()
    if placement is not None and placement.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
