"""Metrics: the original specification's JSON view (/api/metrics) and Prometheus (/metrics)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from avito_ai.api.deps import ClientDep, StateDep
from avito_ai.engines.base import ReportsEngineFigures
from avito_ai.observability.app_metrics import (
    application_view,
    current_totals,
    dashboard_totals,
    engine_metrics_text,
    live_metrics_text,
    prometheus_text,
)
from avito_ai.observability.system import gpu_devices, gpu_metrics, system_metrics
from avito_ai.services.state import ServiceState

router = APIRouter(tags=["monitoring"])


def _gpu_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0


# /api/metrics is free to read (no rate limit: the page and dashboards poll it). The host's
# figures (psutil, NVML) are gathered at most once per this many seconds for all readers;
# the application's counters are read fresh every time, so a reset shows at once.
HOST_TTL_S = 1.0


class _HostSnapshot:
    def __init__(self) -> None:
        self.value: tuple[dict[str, Any], dict[str, Any]] | None = None
        self.taken = 0.0
        self.lock = asyncio.Lock()


def _host_snapshot(request: Request) -> _HostSnapshot:
    snapshot: _HostSnapshot | None = getattr(request.app.state, "host_metrics", None)
    if snapshot is None:
        snapshot = request.app.state.host_metrics = _HostSnapshot()
    return snapshot


def _host_figures(gpu_index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    return system_metrics(), gpu_metrics(gpu_index)


async def host_figures(
    state: ServiceState, request: Request
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(system, gpu) of this host, gathered at most once per HOST_TTL_S for all readers."""
    placements = [s.device for s in (e.status() for e in state.engines.values()) if s.device]
    gpu_index = _gpu_index(next((d for d in placements if d.startswith("cuda")), "cuda:0"))
    snapshot = _host_snapshot(request)
    async with snapshot.lock:  # a burst of readers waits for one gathering
        if snapshot.value is None or time.monotonic() - snapshot.taken >= HOST_TTL_S:
            # psutil and NVML block: off the event loop.
            snapshot.value = await asyncio.to_thread(_host_figures, gpu_index)
            snapshot.taken = time.monotonic()
        return snapshot.value


@router.get("/api/metrics", summary="System, GPU and application metrics (JSON)")
async def metrics(state: StateDep, client: ClientDep, request: Request) -> dict[str, Any]:
    system, gpu = await host_figures(state, request)
    # The workers' metric files: blocking reads too.
    application = await asyncio.to_thread(application_view, state.metrics_baseline)
    body = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "uptime_seconds": int(state.uptime_seconds),
        "system": system,
        "gpu": gpu,
        "application": application,
    }
    engines = await engine_views(state)
    if engines:  # engine processes (vLLM, SGLang): their own figures
        if state.settings.api_key_policies() and client.policy is None:
            # Their pids and ports are for the operator: with keys on, a client with one.
            for view in engines.values():
                view.pop("pid", None)
                view.pop("port", None)
        body["engines"] = engines
    # The asking client's own use of its token budgets, when it has any (the original
    # specification's shape is unchanged otherwise).
    if any(state.governor.budgets.limits_for(client).values()):
        body["client"] = await state.governor.budgets.usage(client)
    return body


def _number(value: Any) -> float | None:
    """NVML's figures as numbers ("45.00%" → 45.0, "12.3" → 12.3)."""
    try:
        return float(str(value).rstrip("%"))
    except ValueError:
        return None


@router.get(
    "/api/metrics/dashboard",
    summary="Cumulative figures of all workers now, for the live dashboard (/dashboard)",
)
async def dashboard_figures(state: StateDep, request: Request) -> dict[str, Any]:
    """The dashboard reads this every few seconds and draws rates and percentiles from two
    readings. Free to read (no rate limit), like /api/metrics."""
    _, gpu = await host_figures(state, request)
    totals = await asyncio.to_thread(dashboard_totals)
    return {
        "time": time.time(),
        **totals,
        "gpu": {
            "available": True,
            "name": gpu.get("gpu_name"),
            "utilization_percent": _number(gpu.get("gpu_utilization")),
            "memory_used_gb": _number(gpu.get("gpu_memory_used_gb")),
            "memory_total_gb": _number(gpu.get("gpu_memory_total_gb")),
        }
        if gpu.get("available")
        else {"available": False},
    }


@router.post("/api/metrics/reset", summary="Reset the application metrics (all workers)")
async def reset_metrics(state: StateDep) -> dict[str, Any]:
    state.metrics_baseline.store(current_totals())
    return {"success": True, "application": application_view(state.metrics_baseline)}


async def engine_views(state: ServiceState) -> dict[str, dict[str, Any]]:
    """Each engine process's state and key figures, by role (none without engine processes)."""
    views: dict[str, dict[str, Any]] = {}
    for role, engine in state.engines.items():
        if isinstance(engine, ReportsEngineFigures):
            views[role] = await engine.engine_figures()
    return views


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus(state: StateDep) -> Response:
    text = await asyncio.to_thread(prometheus_text)
    models: dict[str, tuple[str, str]] = {
        role: (status.state.value, status.engine or "-")
        for role, status in ((r, e.status()) for r, e in state.engines.items())
    }
    live = live_metrics_text(models, await asyncio.to_thread(gpu_devices))
    return Response(
        text + engine_metrics_text(await engine_views(state)) + live,
        media_type=CONTENT_TYPE_LATEST,
    )
