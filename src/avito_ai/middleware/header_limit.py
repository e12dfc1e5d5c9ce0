"""Answers 431 for a request whose head the server's protocol flagged as too large
(avito_ai/http_limits.py), in the asking dialect's error shape."""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from avito_ai.errors import AvitoError, HeadersTooLarge

ErrorResponder = Callable[[Scope, AvitoError], Response]
SCOPE_FLAG = "header_refusal"  # set by the protocol (http_limits.SCOPE_FLAG)


class HeaderLimitMiddleware:
    def __init__(self, app: ASGIApp, *, error_responder: ErrorResponder) -> None:
        self.app = app
        self.error_responder = error_responder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = (scope.get("state") or {}).get(SCOPE_FLAG) if scope["type"] == "http" else None
        if refusal is not None:
            await self.error_responder(scope, HeadersTooLarge(refusal))(scope, receive, send)
            return
        await self.app(scope, receive, send)
