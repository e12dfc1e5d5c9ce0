"""Token budgets: tokens per client per minute and per day, reserved when a generation is
admitted and settled when it ends.

A budget checked before a request and charged after it let a burst through whole: 12
concurrent requests of one client with TOKENS_PER_MINUTE=300 used 1,226 tokens. So each
request *reserves* what it may use (its prompt's tokens plus `max_tokens`) in one atomic
step of the storage (a Lua script on Redis, shared by gunicorn workers and replicas; one
synchronous step in memory), and a reservation that does not fit is a 429 naming the
budget. When the request ends, cancelled or not, the reservation is settled against what
it used (prompt plus generated tokens): the rest is given back.

A reservation larger than a whole budget is cut to the budget, so it fits an empty window
and the request can run at all; such a request can overspend by what it uses past the
budget, which bounds the overspend of any burst by one request's reservation.

Windows are fixed and start with a client's first tokens (`minute`: 60 s, `day`: 86,400 s).
An unreachable storage is decided by RATE_LIMIT_FAIL_MODE, as for request limits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from avito_ai.clients import ANONYMOUS, Client
from avito_ai.config import Settings
from avito_ai.engines.base import (
    CountsPromptTokens,
    Engine,
    EngineState,
    GenerationRequest,
)
from avito_ai.engines.prompts import estimate_prompt_tokens
from avito_ai.errors import RateLimited, RateLimitUnavailable
from avito_ai.observability.logging import Throttled

logger = logging.getLogger(__name__)

WINDOWS = (("minute", 60), ("day", 86400))
STORAGE_TIMEOUT_S = 0.5  # as the request limits' storage


def prompt_tokens(engine: Engine, request: GenerationRequest, max_pixels: int) -> int:
    """The prompt's tokens: counted by the engine when it can, else estimated."""
    if isinstance(engine, CountsPromptTokens) and engine.status().state is EngineState.READY:
        return engine.prompt_tokens(request)
    return estimate_prompt_tokens(request, max_pixels)


Keys = Sequence[str]
Ints = Sequence[int]
# (the 1-based index of the first window that did not fit, or 0; each key's use; each key's
# seconds left)
Reserved = tuple[int, list[int], list[int]]


class BudgetStore(Protocol):
    """Counters with an expiry, changed atomically across windows."""

    async def reserve(self, keys: Keys, limits: Ints, amounts: Ints, expiries: Ints) -> Reserved:
        """Add `amounts` to every key if each fits its limit, else change nothing."""
        ...

    async def adjust(self, keys: Keys, deltas: Ints, expiries: Ints) -> None:
        """Add `deltas` (negative: give back, never below 0 nor into a window that has
        ended; positive: charge, starting a window if none is open)."""
        ...

    async def read(self, key: str) -> tuple[int, int]:
        """(use, seconds left) of one key; (0, 0) when none."""
        ...


class MemoryBudgetStore:
    """One process's counters. Every operation runs without awaiting: atomic on the loop."""

    SWEEP_EVERY_S = 60.0

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (used, expires at)
        self._next_sweep = 0.0

    def _live(self, key: str, now: float) -> tuple[int, float] | None:
        entry = self._counts.get(key)
        if entry is not None and entry[1] <= now:
            del self._counts[key]
            return None
        return entry

    def _sweep(self, now: float) -> None:
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_EVERY_S
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}

    async def reserve(self, keys: Keys, limits: Ints, amounts: Ints, expiries: Ints) -> Reserved:
        now = time.time()
        self._sweep(now)
        entries = [self._live(key, now) for key in keys]
        used = [entry[0] if entry else 0 for entry in entries]
        left = [math.ceil(entry[1] - now) if entry else 0 for entry in entries]
        for index, (use, limit, amount) in enumerate(zip(used, limits, amounts, strict=True)):
            if use + amount > limit:
                return index + 1, used, left
        for i, (key, amount, expiry) in enumerate(zip(keys, amounts, expiries, strict=True)):
            entry = entries[i]
            expires = entry[1] if entry else now + expiry
            self._counts[key] = (used[i] + amount, expires)
            used[i] += amount
            left[i] = math.ceil(expires - now)
        return 0, used, left

    async def adjust(self, keys: Keys, deltas: Ints, expiries: Ints) -> None:
        now = time.time()
        for key, delta, expiry in zip(keys, deltas, expiries, strict=True):
            entry = self._live(key, now)
            if delta < 0 and entry is not None:
                self._counts[key] = (max(0, entry[0] + delta), entry[1])
            elif delta > 0:
                used, expires = entry if entry else (0, now + expiry)
                self._counts[key] = (used + delta, expires)

    async def read(self, key: str) -> tuple[int, int]:
        now = time.time()
        entry = self._live(key, now)
        return (entry[0], math.ceil(entry[1] - now)) if entry else (0, 0)


# KEYS: the windows' keys; ARGV: per window, its limit, the amount and its expiry (s).
_RESERVE = """
local n = #KEYS
local used, left = {}, {}
for i = 1, n do
  used[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  left[i] = math.max(0, redis.call('TTL', KEYS[i]))
end
for i = 1, n do
  if used[i] + tonumber(ARGV[3 * i - 1]) > tonumber(ARGV[3 * i - 2]) then
    return {i, used, left}
  end
end
for i = 1, n do
  used[i] = redis.call('INCRBY', KEYS[i], tonumber(ARGV[3 * i - 1]))
  if redis.call('TTL', KEYS[i]) < 0 then
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3 * i]))
  end
  left[i] = redis.call('TTL', KEYS[i])
end
return {0, used, left}
"""
# KEYS: the windows' keys; ARGV: per window, the change and its expiry (s).
_ADJUST = """
for i = 1, #KEYS do
  local delta = tonumber(ARGV[2 * i - 1])
  if delta < 0 then
    if redis.call('EXISTS', KEYS[i]) == 1 then
      if redis.call('INCRBY', KEYS[i], delta) < 0 then
        redis.call('SET', KEYS[i], 0, 'KEEPTTL')
      end
    end
  elseif delta > 0 then
    redis.call('INCRBY', KEYS[i], delta)
    if redis.call('TTL', KEYS[i]) < 0 then
      redis.call('EXPIRE', KEYS[i], tonumber(ARGV[2 * i]))
    end
  end
end
return 0
"""


class RedisBudgetStore:
    """Counters in Redis, changed by Lua scripts: one round trip, atomic across workers."""

    def __init__(self, uri: str) -> None:
        import redis.asyncio as aioredis

        url = "unix://" + uri.removeprefix("redis+unix://") if uri.startswith("redis+") else uri
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=STORAGE_TIMEOUT_S, socket_connect_timeout=STORAGE_TIMEOUT_S
        )
        self._reserve = self._redis.register_script(_RESERVE)
        self._adjust = self._redis.register_script(_ADJUST)

    async def reserve(self, keys: Keys, limits: Ints, amounts: Ints, expiries: Ints) -> Reserved:
        args = [value for row in zip(limits, amounts, expiries, strict=True) for value in row]
        refused, used, left = await self._reserve(keys=list(keys), args=args)
        return int(refused), [int(u) for u in used], [max(0, int(s)) for s in left]

    async def adjust(self, keys: Keys, deltas: Ints, expiries: Ints) -> None:
        args = [value for row in zip(deltas, expiries, strict=True) for value in row]
        await self._adjust(keys=list(keys), args=args)

    async def read(self, key: str) -> tuple[int, int]:
        used = await self._redis.get(key)
        left = await self._redis.ttl(key)
        return int(used or 0), max(0, int(left))


def budget_store(uri: str) -> BudgetStore:
    """RATE_LIMIT_STORAGE_URI: the same storage as the request limits."""
    return MemoryBudgetStore() if uri.startswith("memory://") else RedisBudgetStore(uri)


@dataclass
class Reservation:
    """Tokens held for one request in each of its client's windows, until settled."""

    client: Client
    keys: list[str]
    amounts: list[int]
    expiries: list[int]
    settled: bool = False


class TokenBudgets:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = budget_store(settings.rate_limit_storage_uri)
        self._storage_log = Throttled(logger)
        self._settling: set[asyncio.Future[None]] = set()

    def limits_for(self, client: Client) -> dict[str, int]:
        policy = client.policy
        per_minute = policy.tokens_per_minute if policy else None
        per_day = policy.tokens_per_day if policy else None
        return {
            "minute": self.settings.tokens_per_minute if per_minute is None else per_minute,
            "day": self.settings.tokens_per_day if per_day is None else per_day,
        }

    def active(self, client: Client) -> bool:
        return any(self.limits_for(client).values())

    @staticmethod
    def _key(client: Client, window: str) -> str:
        return f"avito-tokens/{window}/{client.id}"

    def _failed(self, what: str, exc: Exception) -> None:
        # (Imported here: the gunicorn master imports this module before it has made the
        # metrics folder.)
        from avito_ai.observability.metrics import RATE_LIMIT_STORAGE_ERRORS

        RATE_LIMIT_STORAGE_ERRORS.inc()
        self._storage_log.error("Token budget storage unreachable (%s): %s", what, exc)

    async def reserve(self, client: Client, tokens: int) -> Reservation | None:
        """Hold `tokens` in each of the client's budgets, or 429 naming the one it does not
        fit. Sets the headers' figures on `client.budget`. None: nothing to settle (no
        budget, or the storage is unreachable and RATE_LIMIT_FAIL_MODE=open)."""
        limits = self.limits_for(client)
        windows = [(name, seconds, limits[name]) for name, seconds in WINDOWS if limits[name]]
        if not windows:
            return None
        keys = [self._key(client, name) for name, _, _ in windows]
        amounts = [min(tokens, limit) for _, _, limit in windows]
        expiries = [seconds for _, seconds, _ in windows]
        try:
            refused, used, left = await self.store.reserve(
                keys, [limit for _, _, limit in windows], amounts, expiries
            )
        except Exception as exc:
            self._failed("reserving", exc)
            if self.settings.rate_limit_fail_mode == "closed":
                raise RateLimitUnavailable("Token budgets are unavailable; retry shortly") from exc
            return None
        figures: dict[str, int] = {}
        for (name, _, limit), use, seconds in zip(windows, used, left, strict=True):
            suffix = "" if name == "minute" else "-day"
            figures[f"limit-tokens{suffix}"] = limit
            figures[f"remaining-tokens{suffix}"] = max(0, limit - use)
            figures[f"reset-tokens{suffix}"] = seconds if use else 0
        if client is not ANONYMOUS:  # (the default is shared: no headers to report to)
            client.budget.update(figures)
        if refused:
            name, _, limit = windows[refused - 1]
            retry = max(1, left[refused - 1])
            raise RateLimited(
                f"Token budget exceeded: {limit} tokens per {name} ({used[refused - 1]} used "
                f"or held, this request may use up to {tokens}); retry in {retry} s",
                retry_after=retry,
            )
        return Reservation(client, keys, amounts, expiries)

    async def settle(self, reservation: Reservation | None, used: int) -> None:
        """Give back what the request did not use (or charge what it used past its
        reservation). Runs once per reservation, shielded from the request's cancellation."""
        if reservation is None or reservation.settled:
            return
        reservation.settled = True
        deltas = [max(0, used) - amount for amount in reservation.amounts]
        if not any(deltas):
            return
        task = asyncio.ensure_future(self._adjust(reservation, deltas, used))
        self._settling.add(task)  # a strong reference until it is done
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def _adjust(self, reservation: Reservation, deltas: list[int], used: int) -> None:
        try:
            await self.store.adjust(reservation.keys, deltas, reservation.expiries)
        except Exception as exc:  # the answer is given: log (throttled), do not fail it
            self._failed(f"settling {used} tokens of {reservation.client.name}", exc)

    async def usage(self, client: Client) -> dict[str, Any]:
        """The client's use against its budgets (for /api/metrics and the page)."""
        view: dict[str, Any] = {"client": client.name, "priority": client.priority}
        for window, _seconds in WINDOWS:
            limit = self.limits_for(client)[window]
            try:
                used: int | None = (await self.store.read(self._key(client, window)))[0]
            except Exception:
                used = None  # storage unreachable
            view[f"tokens_per_{window}"] = {"used": used, "limit": limit or None}
        return view
