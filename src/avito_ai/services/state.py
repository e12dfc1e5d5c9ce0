"""What the running service holds: settings, the engines, readiness and drain state.

Every front door reads it (through `api/deps.py`); `lifespan.py` starts and stops it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from avito_ai.config import Settings
from avito_ai.engines.base import Engine, EngineState, Role
from avito_ai.engines.registry import device_problem
from avito_ai.observability.app_metrics import Baseline
from avito_ai.services import drain
from avito_ai.services.admission import Governor
from avito_ai.services.generation import GenerationService

logger = logging.getLogger("avito_ai.lifespan")  # start/stop lines, as before


@dataclass(eq=False)
class ServiceState:
    settings: Settings
    engines: dict[Role, Engine]
    started_at: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
    draining: bool = False
    metrics_baseline: Baseline = field(default_factory=Baseline)
    _load_tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        drain.register(self)
        # Fair admission in front of every engine (services/admission.py).
        self.governor = Governor(self.settings, self.engines)
        self.generation = GenerationService(self.settings, self.engines, self.governor)

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_monotonic

    def models(self) -> dict[str, dict[str, Any]]:
        return {role: engine.status().as_dict() for role, engine in self.engines.items()}

    def readiness_problems(self) -> list[str]:
        """Why the service should not receive traffic now; empty when ready."""
        problems: list[str] = []
        if self.draining:
            problems.append("shutting down")
        problem = device_problem(self.settings.engines)
        if problem:
            problems.append(problem)
        for role, engine in self.engines.items():
            status = engine.status()
            if status.state is EngineState.NOT_CONFIGURED or status.state is EngineState.READY:
                continue
            public = status.as_dict()
            detail = f": {public['reason']}" if public["reason"] else ""
            model = f" ({public['model']})" if public["model"] else ""
            problems.append(f"{role}{model} is {status.state.value}{detail}")
        return problems

    async def start_engines(self) -> None:
        for role, engine in self.engines.items():
            self._load_tasks.append(
                asyncio.create_task(self._start_one(role, engine), name=f"load-{role}")
            )

    @staticmethod
    async def _start_one(role: Role, engine: Engine) -> None:
        started = time.monotonic()
        try:
            await engine.start()
        except Exception:  # engines report failures through status(); this is a safety net
            logger.exception("Loading %s failed", role)
            return
        status = engine.status()
        logger.info(
            "Model %s: %s%s in %.1fs",
            role,
            status.state.value,
            f" ({status.model_id} on {status.device}, {status.dtype})"
            if status.state is EngineState.READY
            else f" ({status.reason})"
            if status.reason
            else "",
            time.monotonic() - started,
        )

    async def stop_engines(self) -> None:
        self.draining = True
        for task in self._load_tasks:
            task.cancel()
        await asyncio.gather(*self._load_tasks, return_exceptions=True)
        results = await asyncio.gather(
            *(engine.stop() for engine in self.engines.values()), return_exceptions=True
        )
        for role, result in zip(self.engines, results, strict=True):
            if isinstance(result, BaseException):
                logger.error("Stopping %s failed: %s", role, result)
        logger.info("Models released")
