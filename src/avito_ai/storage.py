"""The storage shared by the request limits (middleware/rate_limit.py) and the token
budgets (services/budgets.py): RATE_LIMIT_STORAGE_URI, `memory://` (one process) or Redis
(shared by workers and replicas, kept across restarts).

Request limits use `limits`' moving windows on it; budgets use counters with an expiry,
changed atomically across windows (one synchronous step in memory, a Lua script on Redis).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from limits.aio.storage import MovingWindowSupport, Storage
from limits.storage import MemoryStorage, storage_from_string

STORAGE_TIMEOUT_S = 0.5  # a Redis that does not answer within this is unreachable


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
