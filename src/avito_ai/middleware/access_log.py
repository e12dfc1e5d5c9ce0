"""Per-request observation: one access line (method, path, status, duration, client,
request id) and the Prometheus HTTP metrics, from one measurement of the same request."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avito_ai.observability.metrics import HTTP_LATENCY, HTTP_REQUESTS

logger = logging.getLogger("avito_ai.access")

# The label children per (method, route, status): `labels()` validates and locks on every
# call, and the set is bounded (routes are templates). Metrics are never cleared, so a
# cached child stays the one that is exported.
_counted: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def _children(method: str, route: str, status: str) -> tuple[Any, Any]:
    children = _counted.get((method, route, status))
    if children is None:
        children = (HTTP_REQUESTS.labels(method, route, status), HTTP_LATENCY.labels(method, route))
        _counted[(method, route, status)] = children
    return children


def route_label(scope: Scope) -> str:
    """The matched route's template (bounded label values), not the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            duration = time.perf_counter() - started
            method = scope.get("method", "-")
            route = route_label(scope)
            requests, latency = _children(method, route, str(status))
            requests.inc()
            latency.observe(duration)
            client = scope.get("client")
            addr = f"{client[0]}:{client[1]}" if client else "-"
            path = scope.get("path", "")
            who = (scope.get("state") or {}).get("client")
            logger.info(
                '%s - "%s %s" %d %.3fs',
                addr,
                method,
                path,
                status,
                duration,
                extra={
                    "client": addr,
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_s": round(duration, 6),
                    # an API key's name (never the key), or "anonymous"
                    "client_name": who.name if who is not None else None,
                },
            )
