"""The storage shared by the request limits (middleware/rate_limit.py) and the token
budgets (services/budgets.py): RATE_LIMIT_STORAGE_URI, `memory://` (one process) or Redis
(shared by workers and replicas, kept across restarts): one server (`redis://`,
`rediss://`, `redis+unix://`), a Cluster (`redis+cluster://host:port,host:port`) or a
primary found through Sentinel (`redis+sentinel://host:port,host:port/service_name`), the
URI forms `limits` reads (docs/redis.md).

Request limits use `limits.aio`'s moving-window strategy on it; budgets use counters with
an expiry, changed atomically across windows (one synchronous step in memory, a Lua script
on Redis, its keys in one Cluster slot).
"""

from __future__ import annotations

import math
import time
import urllib.parse
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from limits.aio.storage import MovingWindowSupport, Storage
from limits.storage import storage_from_string

STORAGE_TIMEOUT_S = 0.5  # a Redis that does not answer within this is unreachable


def _client_options() -> dict[str, Any]:
    """How every Redis call is bounded: STORAGE_TIMEOUT_S to connect and to answer, and
    one immediate retry on a new connection (one pooled before a restart or a failover
    is stale), then RATE_LIMIT_FAIL_MODE decides. (redis-py's default, 10 retries backing
    off up to 1 s each, held requests for seconds while a Cluster failed over.)"""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return {
        "socket_timeout": STORAGE_TIMEOUT_S,
        "socket_connect_timeout": STORAGE_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 1),
    }


class MemoryWindows(Storage, MovingWindowSupport):
    """Moving windows in this process, for `limits.aio`'s MovingWindowRateLimiter (through
    its public storage interface).

    `limits`' own memory storages sweep every key after any traffic: the asyncio one hands
    each key to a thread, the synchronous one starts a thread every 10 ms (with 30,000
    clients that doubled the cost of a request). Here each window is trimmed when it is
    used, and keys left idle are dropped once a minute (SWEEP_INTERVAL_S), inline: nothing
    runs between requests, and every operation is one synchronous step on the event loop.
    Refused requests store nothing, so a key holds at most its limit's timestamps.
    """

    SWEEP_INTERVAL_S = 60.0

    def __init__(self) -> None:
        super().__init__()
        # key -> (its window in seconds, the times of its entries, oldest first)
        self._windows: dict[str, tuple[int, deque[float]]] = {}
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (count, expires at)
        self._next_sweep = time.time() + self.SWEEP_INTERVAL_S

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def _window(self, key: str, expiry: int, now: float) -> deque[float]:
        if now >= self._next_sweep:
            self._sweep(now)
        entry = self._windows.get(key)
        if entry is None:
            events: deque[float] = deque()
            self._windows[key] = (expiry, events)
            return events
        events = entry[1]
        cutoff = now - expiry
        while events and events[0] < cutoff:
            events.popleft()
        return events

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_INTERVAL_S
        self._windows = {
            key: (expiry, events)
            for key, (expiry, events) in self._windows.items()
            if events and events[-1] >= now - expiry
        }
        self._counters = {key: value for key, value in self._counters.items() if value[1] > now}

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        now = time.time()
        events = self._window(key, expiry, now)
        if len(events) + amount > limit:
            return False
        events.extend([now] * amount)
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = time.time()
        events = self._window(key, expiry, now)
        return (events[0], len(events)) if events else (now, 0)

    def _counter(self, key: str, now: float) -> tuple[int, float] | None:
        entry = self._counters.get(key)
        if entry is not None and entry[1] <= now:
            del self._counters[key]
            return None
        return entry

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        count, expires = self._counter(key, now) or (0, now + expiry)
        self._counters[key] = (count + amount, expires)
        return count + amount

    async def get(self, key: str) -> int:
        entry = self._counter(key, time.time())
        return entry[0] if entry else 0

    async def get_expiry(self, key: str) -> float:
        now = time.time()
        entry = self._counter(key, now)
        return entry[1] if entry else now

    async def check(self) -> bool:
        return True

    async def reset(self) -> int | None:
        count = len(self._windows) + len(self._counters)
        self._windows.clear()
        self._counters.clear()
        return count

    async def clear(self, key: str) -> None:
        self._windows.pop(key, None)
        self._counters.pop(key, None)


def make_storage(uri: str) -> Storage:
    """The request limits' storage: memory, or `limits`' Redis storage for the URI (one
    server, Cluster or Sentinel), each operation bounded by STORAGE_TIMEOUT_S."""
    if uri.startswith("memory://"):
        return MemoryWindows()
    options = _client_options()
    if uri.startswith("redis+sentinel://"):  # (the sentinels are asked with the same bound)
        options["sentinel_kwargs"] = _client_options()
    storage = storage_from_string("async+" + uri, implementation="redispy", **options)
    assert isinstance(storage, Storage) and isinstance(storage, MovingWindowSupport)
    return storage


Keys = Sequence[str]
Ints = Sequence[int]
# (the 1-based index of the first window that did not fit, or 0; each key's use; each key's
# seconds left)
Reserved = tuple[int, list[int], list[int]]


class BudgetStore(Protocol):
    """Counters with an expiry, changed atomically across windows."""

    async def reserve(
        self, keys: Keys, limits: Ints, amounts: Ints, expiries: Ints, once: str | None = None
    ) -> Reserved:
        """Add `amounts` to every key if each fits its limit, else change nothing. `once`:
        a key naming this operation (in the keys' slot): the same call again (a client's
        retry after a timeout) answers as the first did and changes nothing."""
        ...

    async def adjust(
        self, keys: Keys, deltas: Ints, expiries: Ints, once: str | None = None
    ) -> None:
        """Add `deltas` (negative: give back, never below 0 nor into a window that has
        ended; positive: charge, starting a window if none is open). `once`: as above."""
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

    async def reserve(
        self, keys: Keys, limits: Ints, amounts: Ints, expiries: Ints, once: str | None = None
    ) -> Reserved:
        now = time.time()  # (`once` unused: nothing here is retried)
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

    async def adjust(
        self, keys: Keys, deltas: Ints, expiries: Ints, once: str | None = None
    ) -> None:
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


# Both scripts run at most once per operation: redis-py retries a command whose answer
# timed out (STORAGE_TIMEOUT_S; an event loop busy for longer on a loaded machine is
# enough), and a script that had run would run again: a reservation charged twice and
# settled once (the restart test's budget was overcharged by ~8 lines' tokens a group).
# So a `once` key after the windows' keys: its first run stores its answer there
# (ONCE_S), a retry finds it and answers the same.
_ONCE = """
local n = #ARGV / {per}
local once = KEYS[n + 1]
if once then
  local seen = redis.call('GET', once)
  if seen then return cjson.decode(seen) end
end
"""
_REMEMBER = """
if once then redis.call('SET', once, cjson.encode(result), 'EX', {seconds}) end
return result
"""
ONCE_S = 30  # the retry is immediate (one, no backoff): kept briefly, as each request makes two
# KEYS: the windows' keys (and the `once` key); ARGV: per window, its limit, the amount and
# its expiry (s).
_RESERVE = (
    _ONCE.format(per=3)
    + """
local used, left = {}, {}
for i = 1, n do
  used[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  left[i] = math.max(0, redis.call('TTL', KEYS[i]))
end
for i = 1, n do
  if used[i] + tonumber(ARGV[3 * i - 1]) > tonumber(ARGV[3 * i - 2]) then
    local result = {i, used, left}
"""
    + _REMEMBER.format(seconds=ONCE_S)
    + """
  end
end
for i = 1, n do
  used[i] = redis.call('INCRBY', KEYS[i], tonumber(ARGV[3 * i - 1]))
  if redis.call('TTL', KEYS[i]) < 0 then
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3 * i]))
  end
  left[i] = redis.call('TTL', KEYS[i])
end
local result = {0, used, left}
"""
    + _REMEMBER.format(seconds=ONCE_S)
)
# KEYS: the windows' keys (and the `once` key); ARGV: per window, the change and its expiry.
_ADJUST = (
    _ONCE.format(per=2)
    + """
for i = 1, n do
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
local result = 0
"""
    + _REMEMBER.format(seconds=ONCE_S)
)


def redis_client(uri: str) -> Any:
    """A redis-py asyncio client for a RATE_LIMIT_STORAGE_URI, read as `limits` reads it:
    `redis+cluster://[user:password@]host:port[,host:port...]` (any of the nodes: the rest
    are discovered), `redis+sentinel://[user:password@]host:port[,host:port...]/service`
    (the password is the primary's and the sentinels'), else a redis-py URL
    (`redis+unix:///path` as `unix:///path`). Every call bounded (_client_options)."""
    import redis.asyncio as aioredis

    scheme, _, rest = uri.partition("://")
    if scheme not in ("redis+cluster", "redis+sentinel"):
        url = "unix://" + rest if scheme == "redis+unix" else uri
        return aioredis.Redis.from_url(url, **_client_options())
    parsed = urllib.parse.urlsplit(uri)
    auth: dict[str, Any] = {
        name: urllib.parse.unquote(value)
        for name, value in (("username", parsed.username), ("password", parsed.password))
        if value
    }
    hosts = parsed.netloc.rpartition("@")[2]
    nodes = [(host, int(port)) for host, _, port in (h.rpartition(":") for h in hosts.split(","))]
    if scheme == "redis+cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        startup = [ClusterNode(host, port) for host, port in nodes]
        return RedisCluster(startup_nodes=startup, **auth, **_client_options())
    service = parsed.path.strip("/")
    if not service:
        raise ValueError("redis+sentinel:// needs the service name: host:port/service_name")
    from redis.asyncio.sentinel import Sentinel

    sentinel_options = {**auth, **_client_options()}
    sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_options, **auth, **_client_options())
    return sentinel.master_for(service)


class RedisBudgetStore:
    """Counters in Redis, changed by Lua scripts: one round trip, atomic across workers.
    A script's keys share a Cluster slot (budgets.py tags them with the client's id)."""

    def __init__(self, uri: str) -> None:
        self._redis = redis_client(uri)
        self._reserve = self._redis.register_script(_RESERVE)
        self._adjust = self._redis.register_script(_ADJUST)

    async def reserve(
        self, keys: Keys, limits: Ints, amounts: Ints, expiries: Ints, once: str | None = None
    ) -> Reserved:
        args = [value for row in zip(limits, amounts, expiries, strict=True) for value in row]
        names = [*keys, once] if once else list(keys)
        refused, used, left = await self._reserve(keys=names, args=args)
        return int(refused), [int(u) for u in used], [max(0, int(s)) for s in left]

    async def adjust(
        self, keys: Keys, deltas: Ints, expiries: Ints, once: str | None = None
    ) -> None:
        args = [value for row in zip(deltas, expiries, strict=True) for value in row]
        await self._adjust(keys=[*keys, once] if once else list(keys), args=args)

    async def read(self, key: str) -> tuple[int, int]:
        used = await self._redis.get(key)
        left = await self._redis.ttl(key)
        return int(used or 0), max(0, int(left))


def budget_store(uri: str) -> BudgetStore:
    """RATE_LIMIT_STORAGE_URI: the same storage as the request limits."""
    return MemoryBudgetStore() if uri.startswith("memory://") else RedisBudgetStore(uri)
