"""What a worker serves through when a role runs in an engine process.

Requests go through the remote backend (engines/remote/engine.py) to the engine's loopback
port, so retries, cancellation and metrics are the remote backend's. The engine's state
comes from the supervisor's state file (supervisor.py):

* starting / loading weights on the first start: LOADING (readiness 503; a request waits
  for the load, as with an in-process model);
* crashed, restarting, not responding: FAILED with Retry-After, so requests get a fast
  503 `model_unavailable` while the supervisor restarts it, never a hang;
* ready: READY once its health endpoint answers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from avito_ai.config import ProcessSettings, RoleSettings
from avito_ai.engines.base import (
    Capabilities,
    Chunk,
    EngineState,
    EngineStatus,
    GenerationRequest,
    Role,
)
from avito_ai.engines.process.supervisor import STATE_DIR_VAR, EngineRecord, state_path
from avito_ai.engines.remote.engine import RemoteEngine
from avito_ai.engines.remote.upstreams import RemoteConfig
from avito_ai.engines.remote.wire import Flavour, upstream_capabilities
from avito_ai.errors import ModelUnavailable

logger = logging.getLogger(__name__)

FIRST_LOAD = ("starting", "loading weights")
DOWN_RETRY_AFTER_S = 2
FIGURES_TTL_S = 1.0
# The engine's own metrics, by engine: (figure, metric names to sum, first found wins).
# `command` engines may be any of them, or this service (the stand-in engine).
_NAMES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "vllm": [
        ("running", ("vllm:num_requests_running",)),
        ("waiting", ("vllm:num_requests_waiting",)),
        ("kv_cache_usage", ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")),
    ],
    "sglang": [
        ("running", ("sglang:num_running_reqs",)),
        ("waiting", ("sglang:num_queue_reqs",)),
        ("kv_cache_usage", ("sglang:token_usage",)),
        ("spec_accept_length", ("sglang:spec_accept_length",)),
    ],
}
_NAMES["command"] = [
    ("running", ("vllm:num_requests_running", "sglang:num_running_reqs", "avito_requests_running")),
    ("waiting", ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "avito_requests_waiting")),
    (
        "kv_cache_usage",
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"),
    ),
    ("spec_accept_length", ("sglang:spec_accept_length",)),
]


def engine_figures(kind: str, text: str) -> dict[str, float]:
    """Key figures from an engine's Prometheus text: running and waiting requests, KV-cache
    use (0-1), and speculative decoding's acceptance (vLLM: accepted / drafted tokens;
    SGLang: mean accepted length) when it is on."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    figures: dict[str, float] = {}
    for figure, names in _NAMES.get(kind, _NAMES["command"]):
        found = next((sums[n] for n in names if n in sums), None)
        if found is not None:
            figures[figure] = found
    drafted = sums.get("vllm:spec_decode_num_draft_tokens_total")
    accepted = sums.get("vllm:spec_decode_num_accepted_tokens_total")
    if drafted and accepted is not None:
        figures["spec_acceptance_rate"] = accepted / drafted
    return figures


class ProcessEngine:
    def __init__(self, own: RoleSettings, process: ProcessSettings, remote: RemoteConfig) -> None:
        """`own`: the role's settings; `remote`: how to reach an upstream (its URL and model
        are the engine's, once the supervisor says where it listens)."""
        self.role: Role = own.role
        self.kind = own.backend
        self._remote_config = remote
        folder = process.engine_state_dir
        self.path: Path | None = state_path(folder, self.role) if folder else None
        self._remote: RemoteEngine | None = None
        self._stopped = False
        self._cached: tuple[float, EngineRecord | None] = (-1.0, None)
        self._figures: tuple[float, dict[str, float]] = (0.0, {})
        self._client: httpx.AsyncClient | None = None

    def supervised(self) -> EngineRecord | None:
        """The supervisor's latest word on the engine (re-read when the file changes)."""
        if self.path is None:
            return None
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return None
        if mtime != self._cached[0]:
            self._cached = (mtime, EngineRecord.read(self.path))
        return self._cached[1]

    async def start(self) -> None:
        engine = self.supervised()
        if engine is None:
            return  # status() says why
        base = f"http://127.0.0.1:{engine.port}"
        remote = dataclasses.replace(self._remote_config, urls=(base,), model=engine.served_model)
        # Both engines are started scheduling by priority (commands.py): send each request's.
        self._remote = RemoteEngine(
            remote, send_priority=self.kind in ("vllm", "sglang"), flavour=self.flavour
        )
        self._client = httpx.AsyncClient(base_url=base, timeout=1.0)
        await self._remote.start()

    async def stop(self) -> None:
        self._stopped = True
        if self._remote is not None:
            await self._remote.stop()
        if self._client is not None:
            await self._client.aclose()

    def status(self) -> EngineStatus:
        engine = self.supervised()
        kind = str(self.kind)
        if self._stopped:
            return EngineStatus(self.role, EngineState.STOPPED, engine=kind)
        if engine is None:
            return EngineStatus(
                self.role,
                EngineState.FAILED,
                engine=kind,
                reason=f"no {kind} engine process: the service starts it under `avito-ai serve` "
                f"or `gunicorn -c gunicorn_config.py` ({STATE_DIR_VAR} has no state for it)",
            )
        model = engine.served_model or (self._remote.model if self._remote else None)
        where = f"{kind} engine process"  # (its pid and port: the log, /api/metrics)
        if engine.state == "ready":
            return EngineStatus(self.role, EngineState.READY, model, where, engine=kind)
        reason = f"{kind} engine {engine.state}" + (f": {engine.reason}" if engine.reason else "")
        if engine.state in FIRST_LOAD and engine.restarts == 0:
            return EngineStatus(
                self.role, EngineState.LOADING, model, where, reason=reason, engine=kind
            )
        return EngineStatus(
            self.role,
            EngineState.FAILED,
            model,
            where,
            reason=reason,
            engine=kind,
            retry_after=engine.retry_after or 5,
        )

    def capabilities(self) -> Capabilities:
        """Known before the engine answers: what its kind of server takes."""
        return upstream_capabilities(self.flavour, images=self.role == "avision")

    @property
    def flavour(self) -> Flavour:
        return "vllm" if self.kind == "vllm" else "sglang" if self.kind == "sglang" else "openai"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        status = self.status()
        if status.state is not EngineState.READY or self._remote is None:
            raise ModelUnavailable(
                status.reason or f"{self.role} engine is not ready",
                retry_after=status.retry_after or 5,
            )
        if not any(u.healthy for u in self._remote.upstreams):
            await self._remote.check_health()  # ready since the last probe: look now
        try:
            async for chunk in self._remote.generate(request):
                yield chunk
        except ModelUnavailable as exc:
            # The engine went away between two looks of the supervisor (it restarts it).
            if exc.retry_after is None:
                exc.retry_after = DOWN_RETRY_AFTER_S
            raise

    async def engine_figures(self) -> dict[str, Any]:
        """The engine's state and key figures from its own /metrics (cached a second)."""
        engine = self.supervised()
        view: dict[str, Any] = {
            "engine": str(self.kind),
            "state": engine.state if engine else "absent",
            "pid": engine.pid if engine else None,
            "port": engine.port if engine else None,
            "restarts": engine.restarts if engine else 0,
        }
        if engine is None or engine.state != "ready" or self._client is None:
            return view
        taken, figures = self._figures
        if time.monotonic() - taken >= FIGURES_TTL_S:
            try:
                response = await self._client.get(engine.metrics_path)
                response.raise_for_status()
                figures = engine_figures(str(self.kind), response.text)
            except (httpx.HTTPError, ValueError) as exc:
                logger.debug("Engine metrics unavailable: %s", exc)
                figures = {}
            self._figures = (time.monotonic(), figures)
        return {**view, **figures}
