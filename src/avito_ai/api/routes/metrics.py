"""Metrics: the seed's JSON view (/api/metrics) and Prometheus (/metrics)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from avito_ai.api.deps import StateDep
from avito_ai.observability.app_metrics import application_view, current_totals, prometheus_text
from avito_ai.observability.system import gpu_metrics, system_metrics

router = APIRouter(tags=["monitoring"])


def _gpu_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0


@router.get("/api/metrics", summary="System, GPU and application metrics (JSON)")
async def metrics(state: StateDep, request: Request) -> dict[str, Any]:
    placements = [s.device for s in (e.status() for e in state.engines.values()) if s.device]
    gpu_device = next((d for d in placements if d.startswith("cuda")), "cuda:0")

    def gather() -> dict[str, Any]:  # psutil, NVML and the workers' metric files: blocking
        return {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "uptime_seconds": int(state.uptime_seconds),
            "system": system_metrics(),
            "gpu": gpu_metrics(_gpu_index(gpu_device)),
            "application": application_view(state.metrics_baseline),
        }

    return await asyncio.to_thread(gather)


@router.post("/api/metrics/reset", summary="Reset the application metrics (all workers)")
async def reset_metrics(state: StateDep) -> dict[str, Any]:
    state.metrics_baseline.store(current_totals())
    return {"success": True, "application": application_view(state.metrics_baseline)}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus() -> Response:
    return Response(prometheus_text(), media_type=CONTENT_TYPE_LATEST)
