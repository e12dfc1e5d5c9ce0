"""Per-request observation: one access line (method, path, status, duration, client,
request id) and the Prometheus HTTP metrics, from one measurement of the same request."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avito_ai.observability.metrics import HTTP_LATENCY, HTTP_REQUESTS

logger = logging.getLogger("avito_ai.access")


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
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(duration)
            client = scope.get("client")
            addr = f"{client[0]}:{client[1]}" if client else "-"
            path = scope.get("path", "")
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
                },
            )
