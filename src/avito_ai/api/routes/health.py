"""Health probes: basic health, readiness (models loaded, GPU present), liveness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from avito_ai import __version__
from avito_ai.api.deps import StateDep
from avito_ai.services.state import ServiceState

router = APIRouter(prefix="/api/health", tags=["health"])


@router.get(
    "",
    summary="Basic health: status, version, uptime and each model's state",
    response_model=dict[str, Any],
)
async def health(request: Request) -> JSONResponse:
    # The state straight from the app and a ready response: this is the probe load
    # balancers hit most, and it is rate-limited, so it is kept cheap (docs/benchmarks.md).
    state: ServiceState = request.app.state.avito
    problems = state.readiness_problems()
    status = "draining" if state.draining else ("healthy" if not problems else "degraded")
    return JSONResponse(
        {
            "status": status,
            "version": __version__,
            "environment": state.settings.environment,
            "uptime_seconds": round(state.uptime_seconds, 3),
            "models": state.models(),
        }
    )


@router.get(
    "/ready",
    summary="Readiness: 200 once every configured model is loaded (and a configured GPU exists)",
    responses={503: {"description": "Not ready: the body says which model and why"}},
)
async def ready(state: StateDep) -> JSONResponse:
    problems = state.readiness_problems()
    body = {"ready": not problems, "problems": problems, "models": state.models()}
    return JSONResponse(body, status_code=503 if problems else 200)


@router.get("/live", summary="Liveness: the process answers")
async def live() -> dict[str, str]:
    return {"status": "alive"}
