"""Request tracing: accept or create X-Request-ID, echo it, add X-Response-Time."""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avito_ai.observability.logging import request_id_var

# At most 128 characters of a conservative set: safe in logs, headers and file names.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:@+=\-]{1,128}$")


def choose_request_id(supplied: str | None) -> str:
    """The client's id when it is safe to echo and log, otherwise a fresh UUID4."""
    if supplied and _SAFE_ID.fullmatch(supplied):
        return supplied
    return str(uuid.uuid4())


def request_id_of(scope: Scope) -> str:
    """The id the middleware chose for this request (for handlers and error mapping)."""
    state = scope.get("state") or {}
    rid = state.get("request_id")
    return rid if isinstance(rid, str) else request_id_var.get()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                supplied = value.decode("latin-1")
                break
        rid = choose_request_id(supplied)
        scope.setdefault("state", {})["request_id"] = rid
        # Each request runs in its own task, so this does not leak into other requests.
        request_id_var.set(rid)
        started = time.perf_counter()

        rid_bytes = rid.encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Replaces any X-Request-ID set further in (error responses carry one).
                took = f"{time.perf_counter() - started:.3f}s".encode()
                message["headers"] = [
                    *(h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"),
                    (b"x-request-id", rid_bytes),
                    (b"x-response-time", took),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)
