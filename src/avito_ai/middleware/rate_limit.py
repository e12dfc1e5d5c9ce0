"""Per-client rate limits (per minute and per hour) with the `limits` library.

The client is the one middleware/auth.py identified: its API key when one was presented and
valid, otherwise the connecting peer's address. That address is already the real client when
the peer is a trusted proxy (FORWARDED_ALLOW_IPS, handled by uvicorn/gunicorn), so a client
cannot dodge its limit by sending its own X-Forwarded-For. Which paths count: paths.py.

Storage (avito_ai/storage.py) is `memory://` (one process) or Redis (shared by workers and
replicas: one server, Cluster or Sentinel); `limits.aio`'s MovingWindowRateLimiter counts
on it without blocking the event loop. A moving window gives exact counts: the 11th
request within any 60 seconds is refused.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avito_ai.errors import AvitoError, RateLimited, RateLimitUnavailable
from avito_ai.middleware.auth import address_id, client_of, in_process
from avito_ai.observability.logging import Throttled
from avito_ai.observability.metrics import RATE_LIMIT_STORAGE_ERRORS
from avito_ai.paths import app_path, is_limited
from avito_ai.storage import make_storage

logger = logging.getLogger("avito_ai.rate_limit")

ErrorResponder = Callable[[Scope, AvitoError], Response]


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
    ) -> None:
        self.app = app
        self.windows: list[tuple[RateLimitItem, str]] = [
            (RateLimitItemPerMinute(per_minute), f"{per_minute} requests per minute"),
            (RateLimitItemPerHour(per_hour), f"{per_hour} requests per hour"),
        ]
        self.limiter = MovingWindowRateLimiter(make_storage(storage_uri))
        self.fail_open = fail_mode == "open"
        self.error_responder = error_responder
        self.policy = ", ".join(f"{item.amount};w={item.get_expiry()}" for item, _ in self.windows)
        self.policy_bytes = self.policy.encode()
        self._storage_log = Throttled(logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not is_limited(app_path(scope), scope["method"]) or in_process(scope):
            await self.app(scope, receive, send)
            return
        client = client_of(scope)
        key = client.id if client is not None else address_id(scope)
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
                extra = budget_headers(client.budget) if client and client.budget else ()
                message["headers"] = [*message.get("headers", ()), *ours, *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _check(self, key: str) -> tuple[RateLimited | None, str]:
        """Count one request in every window: (refusal or None, `RateLimit` header value).

        Windows are hit in order (minute first): a request refused by the minute window
        does not use up the hourly budget.
        """
        limiter = self.limiter
        for item, wording in self.windows:
            if not await limiter.hit(item, key):
                stats = await limiter.get_window_stats(item, key)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                refusal = RateLimited(f"Rate limit exceeded: {wording}", retry_after=retry)
                return refusal, f"limit={item.amount}, remaining=0, reset={retry}"
        # Report the window with the least room left.
        tightest: tuple[int, int, float] | None = None
        for item, _ in self.windows:
            stats = await limiter.get_window_stats(item, key)
            if tightest is None or stats.remaining < tightest[1]:
                tightest = (item.amount, stats.remaining, stats.reset_time)
        assert tightest is not None
        amount, remaining, reset_at = tightest
        reset = max(0, math.ceil(reset_at - time.time()))
        return None, f"limit={amount}, remaining={max(0, remaining)}, reset={reset}"

    def _warn_storage(self, exc: Exception) -> None:
        self._storage_log.error(
            "Rate-limit storage unreachable (%s: %s); failing %s",
            type(exc).__name__,
            exc,
            "open: requests are not limited" if self.fail_open else "closed: requests get 503",
        )
