"""The two most frequent probes, answered without FastAPI's router.

`GET /api/health` and `GET /api/health/live` are what load balancers and orchestrators
call, many times a second per replica. Every middleware still runs around them (request
id, access log and metrics, security headers, CORS, API keys, rate limit, HEAD); only the
router, the dependency solving and the response model are skipped, which was about a third
of a probe's cost (docs/benchmarks.md). The answers are the routes' own (same builders), and
the routes stay in the app for the OpenAPI document and for any request this does not
recognise (a root path, another method), so this is a shortcut, never a second behaviour.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from avito_ai import __version__
from avito_ai.services.state import ServiceState

LIVE_BODY: dict[str, str] = {"status": "alive"}


def health_body(state: ServiceState) -> dict[str, Any]:
    """`GET /api/health`: status, version, uptime and each model's state."""
    problems = state.readiness_problems()
    status = "draining" if state.draining else ("healthy" if not problems else "degraded")
    return {
        "status": status,
        "version": __version__,
        "environment": state.settings.environment,
        "uptime_seconds": round(state.uptime_seconds, 3),
        "models": state.models(),
    }


def render(body: dict[str, Any]) -> bytes:
    """Exactly what Starlette's JSONResponse writes."""
    return json.dumps(
        body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


class ProbeFastPath:
    """Innermost layer: answers the probes above, passes everything else on."""

    def __init__(self, app: ASGIApp, *, state: ServiceState, routes: list[Any]) -> None:
        self.app = app
        live = render(LIVE_BODY)
        self.bodies: dict[str, Callable[[], bytes]] = {
            "/api/health": lambda: render(health_body(state)),
            "/api/health/live": lambda: live,
        }
        # The matched route, as the router would have set it (the access log labels by it).
        self.routes = {
            route.path: route
            for route in routes
            if isinstance(route, APIRoute) and route.path in self.bodies
        }
        assert self.routes.keys() == self.bodies.keys(), "the probe routes moved"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            build = self.bodies.get(scope["path"])
            if build is not None:
                body = build()
                scope["route"] = self.routes[scope["path"]]
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-length", str(len(body)).encode()),
                            (b"content-type", b"application/json"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
