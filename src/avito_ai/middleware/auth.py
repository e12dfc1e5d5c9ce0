"""Who the client is, decided once per request, and optional API keys (API_KEYS /
API_KEYS_FILE) for the paths that need one (avito_ai/paths.py).

Keys arrive as `Authorization: Bearer <key>` or `X-API-Key: <key>`, are compared in
constant time, and are never logged. The request's `Client` (clients.py: the key's policy
and name, else the address; the X-Priority it asked for) goes in `scope["state"]["client"]`:
the rate limit, the token budgets, fair admission and the routes (api/deps.py `ClientDep`)
all read that one object.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from avito_ai.clients import DEFAULT_CLASS, Client, KeyPolicy, key_id
from avito_ai.errors import AvitoError, Unauthorized
from avito_ai.paths import app_path, needs_key

ErrorResponder = Callable[[Scope, AvitoError], Response]

# A request the service makes to itself (a batch line, avito_ai/batches/runner.py) carries
# its client here, in the scope's state: only code inside the process can put an object
# there (no header can), and such a request is its owner's, in the owner's budgets.
IN_PROCESS_CLIENT = "in_process_client"


def in_process(scope: Scope) -> bool:
    """A request the service made to itself (not counted in the per-request rate limits:
    its batch was, once; its tokens count in the owner's budgets)."""
    return (scope.get("state") or {}).get(IN_PROCESS_CLIENT) is not None


def address_id(scope: Scope, ipv6_prefix: int = 64) -> str:
    """A client without a key is its address; an IPv6 address by its network prefix (/64
    by default), since anyone with one address has all 2^64 of its subnet."""
    client = scope.get("client")
    if not client:
        return "ip:unknown"
    host: str = client[0]
    if ":" not in host:  # IPv4 (or a name): the address is the key, no parsing needed
        return f"ip:{host}"
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return f"ip:{client[0]}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 client a.b.c.d
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ipaddress.ip_network(f'{address}/{ipv6_prefix}', strict=False)}"
    return f"ip:{address}"


def requested_priority(scope: Scope) -> str | None:
    """X-Priority as sent (whether the client may use it is checked at admission)."""
    requested = None
    for name, value in scope["headers"]:
        if name == b"x-priority":
            requested = value.decode("latin-1").strip().lower()
    return requested


def client_of(scope: Scope) -> Client | None:
    """The request's client, as the identifying middleware set it."""
    client: Client | None = (scope.get("state") or {}).get("client")
    return client


def presented_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return str(token).strip()
        elif name == b"x-api-key" and value.strip():
            return str(value.decode("latin-1")).strip()
    return None


class ClientMiddleware:
    """Builds the request's `Client`; marks a request that needs a valid key and has none
    (refused further in, by AuthRefusalMiddleware)."""

    def __init__(self, app: ASGIApp, *, policies: list[KeyPolicy], ipv6_prefix: int = 64) -> None:
        self.app = app
        self._policies = policies
        self._keys = [p.key.encode() for p in policies]
        self.ipv6_prefix = ipv6_prefix

    def _match(self, key: str) -> KeyPolicy | None:
        candidate = key.encode()
        # Compare against every key so timing does not reveal which one nearly matched.
        matches = [hmac.compare_digest(candidate, k) for k in self._keys]
        return next((p for p, hit in zip(self._policies, matches, strict=True) if hit), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        preset = state.get(IN_PROCESS_CLIENT)
        if isinstance(preset, Client):
            state["client"] = preset
            await self.app(scope, receive, send)
            return
        key = presented_key(scope) if self._keys else None
        policy = self._match(key) if key is not None else None
        if policy is not None and key is not None:
            client = Client(
                id=f"key:{key_id(key)}",
                name=policy.name,
                policy=policy,
                priority=policy.priority,
                requested_priority=requested_priority(scope),
            )
        else:
            client = Client(
                id=address_id(scope, self.ipv6_prefix),
                name="anonymous",
                priority=DEFAULT_CLASS,
                requested_priority=requested_priority(scope),
            )
            if self._keys and needs_key(app_path(scope), scope["method"]):
                message = (
                    "Missing API key: send Authorization: Bearer <key> or X-API-Key"
                    if key is None
                    else "Invalid API key"
                )
                # Refused further in, after the rate limit has counted the attempt against
                # the client's address: guessing keys costs the guesser its budget.
                state["auth_refusal"] = Unauthorized(message)
        state["client"] = client
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
