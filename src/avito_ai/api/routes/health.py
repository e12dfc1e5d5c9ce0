"""Health probes: basic health, readiness (models loaded, GPU present), liveness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from avito_ai.api.deps import StateDep
from avito_ai.api.probes import LIVE_BODY, health_body

router = APIRouter(prefix="/api/health", tags=["health"])


@router.get(
    "",
    summary="Basic health: status, version, uptime and each model's state",
    response_model=dict[str, Any],
)
async def health(state: StateDep) -> JSONResponse:
    # Usually answered by api/probes.py before routing; this is the documented route and
    # the fallback (e.g. behind a root path).
    return JSONResponse(health_body(state))


@router.get(
    "/ready",
    summary="Readiness: 200 once every configured model is loaded (and a configured GPU exists)",
    responses={503: {"description": "Not ready: the body says which model and why"}},
)
async def ready(state: StateDep) -> JSONResponse:
    problems = state.readiness_problems()
    body = {"ready": not problems, "problems": problems, "models": state.models()}
    return JSONResponse(body, status_code=503 if problems else 200)


@router.get(
    "/models",
    summary="Each model's state (loading, ready, failed, not_configured), always 200",
)
async def models(state: StateDep) -> dict[str, Any]:
    """What the web page's badges show, read every few seconds: free (no rate limit) and a
    200 whatever the state, unlike /ready, whose 503 is meant for load balancers."""
    return {"models": state.models()}


@router.get("/live", summary="Liveness: the process answers")
async def live() -> dict[str, str]:
    return LIVE_BODY
