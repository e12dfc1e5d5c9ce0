"""Cap request bodies while they stream in: Content-Length up front, and counted bytes
for chunked or length-less bodies. Nothing is read whole before the check."""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    """`limit_for(path)` gives the byte limit of a route; over it the app sees a 413
    HTTPException raised from `receive`. (An HTTPException, because FastAPI re-raises those
    from body parsing while it turns other exceptions into a generic 400.) The error
    mapping in api/errors.py gives it the `payload_too_large` body."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        message = f"Request body too large. Maximum size: {limit / 1048576:g} MB"
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await self._refuse(scope, receive, send, message)
                    return
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise HTTPException(413, detail=message)
            return msg

        await self.app(scope, counting_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, message: str) -> None:
        """Answer 413 through the app's own error mapping without reading the body."""

        async def refusing_receive() -> Message:
            raise HTTPException(413, detail=message)

        await self.app(scope, refusing_receive, send)
