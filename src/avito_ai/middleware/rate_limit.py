"""Per-client rate limits (per minute and per hour) with the `limits` library.

The client is the API key when one was presented and valid (set by the auth middleware),
otherwise the connecting peer's address. That address is already the real client when the
peer is a trusted proxy (FORWARDED_ALLOW_IPS, handled by uvicorn/gunicorn), so a client
cannot dodge its limit by sending its own X-Forwarded-For.

Storage is `memory://` (one process) or Redis (shared by workers and replicas); the async
API keeps the event loop free. A moving window gives exact counts: the 11th request within
any 60 seconds is refused.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.aio.storage import MovingWindowSupport, Storage
from limits.storage import MemoryStorage, storage_from_string
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avito_ai.clients import CURRENT, DEFAULT_CLASS, Client, KeyPolicy
from avito_ai.errors import AvitoError, RateLimited, RateLimitUnavailable
from avito_ai.observability.logging import Throttled
from avito_ai.observability.metrics import RATE_LIMIT_STORAGE_ERRORS

logger = logging.getLogger("avito_ai.rate_limit")

# Probes and scrapes must never fail because of a limit; static assets and docs are cheap.
EXEMPT_PATHS = frozenset(
    {
        "/api/health/live",
        "/api/health/ready",
        "/api/health/models",
        "/metrics",
        "/docs",
        "/redoc",
        "/openapi.json",
    }
)
EXEMPT_PREFIXES = ("/static/", "/docs/")
# Reading the page, the dashboard and the metrics costs no model time: a newcomer opening
# the page a few times, or a dashboard polling, must not spend the budget meant for
# generations. (Their POSTs are counted.)
EXEMPT_READS = frozenset(
    {"/", "/dashboard", "/api/metrics", "/api/metrics/dashboard", "/favicon.ico"}
)
STORAGE_TIMEOUT_S = 0.5

ErrorResponder = Callable[[Scope, AvitoError], Response]


def is_exempt(scope: Scope) -> bool:
    path: str = scope["path"]
    method: str = scope["method"]
    return (
        method == "OPTIONS"
        or path in EXEMPT_PATHS
        or path.startswith(EXEMPT_PREFIXES)
        or (method in ("GET", "HEAD") and path in EXEMPT_READS)
    )


class WindowStorage(Protocol):
    """What the limits need of a `limits` storage (memory or Redis): moving windows for
    request counts, counters for the budgets' usage view (services/budgets.py)."""

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool: ...

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]: ...

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int: ...

    async def get(self, key: str) -> int: ...

    async def get_expiry(self, key: str) -> float: ...


class SweptMemoryStorage(MemoryStorage):
    """`limits`' memory storage, with expired entries swept every SWEEP_INTERVAL_S.

    The parent sweeps every key in a fresh thread 10 ms after any traffic: under load, a
    thread and a pass over every client seen in the last hour, a hundred times a second
    (with 30,000 clients that doubled the cost of a request). Expired entries are never
    counted either way (the window is read by time); the sweep only frees memory, so once
    a minute, the shorter window, is enough. (Overrides the parent's private
    scheduling hook; `limits` is pinned and tests/unit/test_rate_limit_storage.py checks it.)
    """

    SWEEP_INTERVAL_S = 60.0

    def __init__(self) -> None:
        self._next_sweep = 0.0
        super().__init__()

    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep and not self.timer.is_alive():
            self._next_sweep = now + self.SWEEP_INTERVAL_S
            sweep = self._MemoryStorage__expire_events  # type: ignore[attr-defined]
            self.timer = threading.Timer(0, sweep)
            self.timer.daemon = True
            self.timer.start()


class InlineMemoryStorage:
    """`limits`' synchronous memory storage, called inline from the event loop.

    Its operations do no I/O and take microseconds. (The asyncio memory storage of `limits`
    hands every stored key to a thread on each expiry sweep: that cost more than the rest
    of a request.)"""

    def __init__(self) -> None:
        self.storage = SweptMemoryStorage()

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.storage.acquire_entry(key, limit, expiry, amount)

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return self.storage.get_moving_window(key, limit, expiry)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.storage.incr(key, expiry, amount)

    async def get(self, key: str) -> int:
        return self.storage.get(key)

    async def get_expiry(self, key: str) -> float:
        return self.storage.get_expiry(key)


def make_storage(uri: str) -> WindowStorage:
    if uri.startswith("memory://"):
        return InlineMemoryStorage()
    storage = storage_from_string(
        "async+" + uri,
        implementation="redispy",
        socket_timeout=STORAGE_TIMEOUT_S,
        socket_connect_timeout=STORAGE_TIMEOUT_S,
    )
    assert isinstance(storage, Storage) and isinstance(storage, MovingWindowSupport)
    return storage


def client_key(scope: Scope, ipv6_prefix: int = 64) -> str:
    """Who is limited: the API key, else the address; an IPv6 address by its network
    prefix (/64 by default), since anyone with one address has all 2^64 of its subnet."""
    key_id = (scope.get("state") or {}).get("api_key_id")
    if key_id:
        return f"key:{key_id}"
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


def identify(scope: Scope, key: str) -> None:
    """The request's client for the layers further in (clients.CURRENT): its key's policy
    and name when it presented a valid key, else its address; and the X-Priority it asked
    for (whether it may is checked where the request is admitted)."""
    state = scope.get("state") or {}
    policy: KeyPolicy | None = state.get("api_key_policy")
    requested = None
    for name, value in scope["headers"]:
        if name == b"x-priority":
            requested = value.decode("latin-1").strip().lower()
    client = Client(
        id=key,
        name=policy.name if policy else "anonymous",
        policy=policy,
        priority=policy.priority if policy else DEFAULT_CLASS,
        requested_priority=requested,
    )
    CURRENT.set(client)
    scope.setdefault("state", {})["client"] = client


def budget_headers(budget: dict[str, int]) -> list[tuple[bytes, bytes]]:
    """What is left of the client's token budgets, as OpenAI names it."""
    return [(f"x-ratelimit-{name}".encode(), str(value).encode()) for name, value in budget.items()]


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        per_minute: int,
        per_hour: int,
        storage_uri: str,
        fail_mode: str,
        error_responder: ErrorResponder,
        ipv6_prefix: int = 64,
    ) -> None:
        self.app = app
        self.ipv6_prefix = ipv6_prefix
        self.windows: list[tuple[RateLimitItem, str]] = [
            (RateLimitItemPerMinute(per_minute), f"{per_minute} requests per minute"),
            (RateLimitItemPerHour(per_hour), f"{per_hour} requests per hour"),
        ]
        self.storage = make_storage(storage_uri)
        self.fail_open = fail_mode == "open"
        self.error_responder = error_responder
        self.policy = ", ".join(f"{item.amount};w={item.get_expiry()}" for item, _ in self.windows)
        self.policy_bytes = self.policy.encode()
        self._storage_log = Throttled(logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if is_exempt(scope):
            if scope["path"] == "/api/metrics":  # shows the client its own usage
                identify(scope, client_key(scope, self.ipv6_prefix))
            await self.app(scope, receive, send)
            return
        key = client_key(scope, self.ipv6_prefix)
        identify(scope, key)
        try:
            refusal, state = await self._check(key)
        except Exception as exc:  # storage unreachable: decided by RATE_LIMIT_FAIL_MODE
            RATE_LIMIT_STORAGE_ERRORS.inc()
            self._warn_storage(exc)
            if not self.fail_open:
                error = RateLimitUnavailable("Rate limiting is unavailable; retry shortly")
                await self.error_responder(scope, error)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if refusal is not None:
            response = self.error_responder(scope, refusal)
            response.headers["RateLimit-Policy"] = self.policy
            response.headers["RateLimit"] = state
            await response(scope, receive, send)
            return

        ours = [(b"ratelimit-policy", self.policy_bytes), (b"ratelimit", state.encode())]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Appended, not set: nothing further in writes these.
                client = (scope.get("state") or {}).get("client")
                extra = budget_headers(client.budget) if client and client.budget else ()
                message["headers"] = [*message.get("headers", ()), *ours, *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _check(self, key: str) -> tuple[RateLimited | None, str]:
        """Count one request in every window: (refusal or None, `RateLimit` header value).

        `limits`' moving window on its storage, as its MovingWindowRateLimiter does it, with
        each window's key built once. Windows are hit in order (minute first): a request
        refused by the minute window does not use up the hourly budget.
        """
        keys = []
        for item, wording in self.windows:
            window_key = item.key_for(key)
            expiry = item.get_expiry()
            if not await self.storage.acquire_entry(window_key, item.amount, expiry):
                start, _ = await self.storage.get_moving_window(window_key, item.amount, expiry)
                retry = max(1, math.ceil(start + expiry - time.time()))
                refusal = RateLimited(f"Rate limit exceeded: {wording}", retry_after=retry)
                return refusal, f"limit={item.amount}, remaining=0, reset={retry}"
            keys.append(window_key)
        # Report the window with the least room left.
        tightest: tuple[int, int, int] | None = None
        for (item, _), window_key in zip(self.windows, keys, strict=True):
            expiry = item.get_expiry()
            start, count = await self.storage.get_moving_window(window_key, item.amount, expiry)
            remaining = max(0, item.amount - count)
            reset = max(0, math.ceil(start + expiry - time.time()))
            if tightest is None or remaining < tightest[1]:
                tightest = (item.amount, remaining, reset)
        assert tightest is not None
        return None, f"limit={tightest[0]}, remaining={tightest[1]}, reset={tightest[2]}"

    def _warn_storage(self, exc: Exception) -> None:
        self._storage_log.error(
            "Rate-limit storage unreachable (%s: %s); failing %s",
            type(exc).__name__,
            exc,
            "open: requests are not limited" if self.fail_open else "closed: requests get 503",
        )
