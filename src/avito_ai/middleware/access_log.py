"""One access line per request: method, path, status, duration, client, request id."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("avito_ai.access")


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
            client = scope.get("client")
            addr = f"{client[0]}:{client[1]}" if client else "-"
            path = scope.get("path", "")
            logger.info(
                '%s - "%s %s" %d %.3fs',
                addr,
                scope.get("method", "-"),
                path,
                status,
                duration,
                extra={
                    "client": addr,
                    "method": scope.get("method"),
                    "path": path,
                    "status": status,
                    "duration_s": round(duration, 6),
                },
            )
