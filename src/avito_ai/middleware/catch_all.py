"""An unexpected exception becomes a 500 here, inside the other middlewares.

Starlette's outermost ServerErrorMiddleware would answer it and then re-raise, and the
server then drops the connection: the client's next request on it failed (ECONNRESET),
and the 500 missed the request id, CORS and security headers that every answer carries.
Answered here, it is an ordinary response and the connection stays usable.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class CatchAllMiddleware:
    def __init__(self, app: ASGIApp, *, on_error: Callable[[Scope, Exception], Response]) -> None:
        self.app = app
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:  # half an answer is out: nothing sane can follow it
                raise
            await self.on_error(scope, exc)(scope, receive, send)
