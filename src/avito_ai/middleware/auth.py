"""Optional API keys (API_KEYS / API_KEYS_FILE) for the AI endpoints and metrics reset.

Keys arrive as `Authorization: Bearer <key>` or `X-API-Key: <key>`, are compared in
constant time, and are never logged: the rate limiter sees only a short hash of the key.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from avito_ai.clients import KeyPolicy, key_id
from avito_ai.errors import AvitoError, Unauthorized

ErrorResponder = Callable[[Scope, AvitoError], Response]

PROTECTED_PREFIXES = ("/api/v1/", "/v1/")
PROTECTED_FORMS = ("/avibe", "/avision")


def is_protected(scope: Scope) -> bool:
    path: str = scope["path"]
    method: str = scope["method"]
    if method == "OPTIONS":
        return False
    if path.startswith(PROTECTED_PREFIXES) or path == "/v1":
        return True
    if path in PROTECTED_FORMS:
        return method == "POST"
    return path == "/api/metrics/reset"


def presented_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return str(token).strip()
        elif name == b"x-api-key" and value.strip():
            return str(value.decode("latin-1")).strip()
    return None


class ApiKeyMiddleware:
    def __init__(
        self, app: ASGIApp, *, policies: list[KeyPolicy], error_responder: ErrorResponder
    ) -> None:
        self.app = app
        self._policies = policies
        self._keys = [p.key.encode() for p in policies]
        self.error_responder = error_responder

    def _match(self, key: str) -> KeyPolicy | None:
        candidate = key.encode()
        # Compare against every key so timing does not reveal which one nearly matched.
        matches = [hmac.compare_digest(candidate, k) for k in self._keys]
        return next((p for p, hit in zip(self._policies, matches, strict=True) if hit), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._keys:
            await self.app(scope, receive, send)
            return
        key = presented_key(scope)
        policy = self._match(key) if key is not None else None
        if policy is not None and key is not None:
            state = scope.setdefault("state", {})
            state["api_key_id"] = key_id(key)
            state["api_key_policy"] = policy
        elif is_protected(scope):
            message = (
                "Missing API key: send Authorization: Bearer <key> or X-API-Key"
                if key is None
                else "Invalid API key"
            )
            # Refused further in, after the rate limit has counted the attempt against the
            # client's address: guessing keys costs the guesser its budget.
            scope.setdefault("state", {})["auth_refusal"] = Unauthorized(message)
        await self.app(scope, receive, send)


class AuthRefusalMiddleware:
    """Answers 401 for a request the API-key middleware refused (inside the rate limit)."""

    def __init__(self, app: ASGIApp, *, error_responder: ErrorResponder) -> None:
        self.app = app
        self.error_responder = error_responder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = (
            (scope.get("state") or {}).get("auth_refusal") if scope["type"] == "http" else None
        )
        if refusal is not None:
            await self.error_responder(scope, refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)
