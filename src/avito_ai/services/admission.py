"""Fair admission in front of every engine: token budgets, per-client concurrency, a fair
queue with priority classes. One client cannot starve the rest.

* **Fair queue** (`Admission`, one per model): up to `capacity` requests generate at once
  (the engine's batch); the rest wait, and a freed place goes to the highest priority
  class that has someone waiting, round-robin across the clients of that class (a client
  that sent 40 requests gets one turn, then the next client gets one), not first-come.
  The queue is bounded (MAX_QUEUE_SIZE): past it, a fast 503 `overloaded` with
  Retry-After. A waiter whose client disconnects leaves at once (its task is cancelled).
* **Per-client concurrency**: a client with `concurrency` requests generating is skipped
  in the rotation until one of them ends.
* **Token budgets** (`TokenBudgets`): tokens per minute and per day per client (prompt
  plus generated, counted from what was used), in the rate limits' storage (memory, or
  Redis: shared by workers and replicas, kept across restarts). A client over a budget
  gets 429 `rate_limit_exceeded` naming it, with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from avito_ai.clients import DEFAULT_CLASS, PRIORITY_CLASSES, Client
from avito_ai.config import Role, Settings
from avito_ai.errors import Overloaded, RateLimited, RateLimitUnavailable, ValidationFailed

logger = logging.getLogger(__name__)


def priority_of(client: Client) -> str:
    """The request's class: X-Priority when the client's key may use it, else the key's."""
    asked = client.requested_priority
    if not asked:
        return client.priority
    if asked not in PRIORITY_CLASSES:
        known = ", ".join(PRIORITY_CLASSES)
        raise ValidationFailed(f"X-Priority must be one of: {known}", param="X-Priority")
    allowed = client.policy.classes if client.policy else frozenset({DEFAULT_CLASS})
    if asked not in allowed:
        raise ValidationFailed(
            f"X-Priority: {asked} is not allowed for this client (allowed: "
            f"{', '.join(sorted(allowed))}); a key's `classes` field in API_KEYS_FILE grants it",
            param="X-Priority",
        )
    return asked


@dataclass(eq=False)
class _Waiter:
    client: str
    limit: int
    admitted: asyncio.Future[None]


@dataclass
class Admission:
    """Places for generating requests, handed out fairly (see the module docstring)."""

    capacity: int
    max_waiting: int
    running: int = 0
    waiting: int = 0
    by_client: dict[str, int] = field(default_factory=dict)
    # class rank -> client -> its waiters, in arrival order; the dict's order is the turn.
    queues: dict[int, OrderedDict[str, deque[_Waiter]]] = field(default_factory=dict)

    @asynccontextmanager
    async def place(self, client: str, priority: str, limit: int = 0) -> AsyncIterator[None]:
        """Hold a place while the body runs; waits for one (fairly) when all are taken."""
        if self.running < self.capacity and self._under(client, limit):
            self._start(client)
        else:
            if self.waiting >= self.max_waiting:
                raise Overloaded("Server is overloaded: the queue is full, retry later")
            waiter = _Waiter(client, limit, asyncio.get_running_loop().create_future())
            self._enqueue(PRIORITY_CLASSES[priority], waiter)
            try:
                await waiter.admitted
            except BaseException:
                if waiter.admitted.done() and not waiter.admitted.cancelled():
                    self._finish(client)  # admitted as it was cancelled: give it back
                else:
                    self._withdraw(PRIORITY_CLASSES[priority], waiter)
                raise
        try:
            yield
        finally:
            self._finish(client)

    def _under(self, client: str, limit: int) -> bool:
        return limit <= 0 or self.by_client.get(client, 0) < limit

    def _start(self, client: str) -> None:
        self.running += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1

    def _finish(self, client: str) -> None:
        self.running -= 1
        left = self.by_client[client] - 1
        if left:
            self.by_client[client] = left
        else:
            del self.by_client[client]
        self._dispatch()

    def _enqueue(self, rank: int, waiter: _Waiter) -> None:
        queue = self.queues.setdefault(rank, OrderedDict())
        queue.setdefault(waiter.client, deque()).append(waiter)
        self.waiting += 1

    def _withdraw(self, rank: int, waiter: _Waiter) -> None:
        line = self.queues.get(rank, OrderedDict()).get(waiter.client)
        if line is not None and waiter in line:
            line.remove(waiter)
            self.waiting -= 1
            if not line:
                del self.queues[rank][waiter.client]

    def _dispatch(self) -> None:
        while self.running < self.capacity:
            waiter = self._next()
            if waiter is None:
                return
            self._start(waiter.client)
            waiter.admitted.set_result(None)

    def _next(self) -> _Waiter | None:
        """The first client in turn, in the highest class, that may run one more."""
        for rank in sorted(self.queues):
            queue = self.queues[rank]
            for client in list(queue):
                line = queue[client]
                if not self._under(client, line[0].limit):
                    continue
                waiter = line.popleft()
                self.waiting -= 1
                if line:
                    queue.move_to_end(client)  # its next request waits for the others' turn
                else:
                    del queue[client]
                return waiter
        return None


WINDOWS = (("minute", 60), ("day", 86400))


class TokenBudgets:
    """Tokens per client per minute and per day, in fixed windows that start with the
    client's first tokens (the same storage as the request limits)."""

    def __init__(self, settings: Settings) -> None:
        # The request limits' storage kind, timeouts and expiry sweep. (Imported here: the
        # gunicorn master imports this module before it has made the metrics folder.)
        from avito_ai.middleware.rate_limit import make_storage

        self.settings = settings
        self.storage = make_storage(settings.rate_limit_storage_uri)

    def limits_for(self, client: Client) -> dict[str, int]:
        policy = client.policy
        per_minute = policy.tokens_per_minute if policy else None
        per_day = policy.tokens_per_day if policy else None
        return {
            "minute": self.settings.tokens_per_minute if per_minute is None else per_minute,
            "day": self.settings.tokens_per_day if per_day is None else per_day,
        }

    @staticmethod
    def _key(client: Client, window: str) -> str:
        return f"avito-tokens/{window}/{client.id}"

    async def check(self, client: Client) -> dict[str, int]:
        """Refuse (429) a client with a budget used up; what is left, for the headers. An
        unreachable storage is decided by RATE_LIMIT_FAIL_MODE, as for request limits."""
        if not any(self.limits_for(client).values()):
            return {}
        try:
            return await self._check(client)
        except RateLimited:
            raise
        except Exception as exc:
            logger.error("Token budget storage unreachable: %s", exc)
            if self.settings.rate_limit_fail_mode == "closed":
                raise RateLimitUnavailable("Token budgets are unavailable; retry shortly") from exc
            return {}

    async def _check(self, client: Client) -> dict[str, int]:
        left: dict[str, int] = {}
        for window, _seconds in WINDOWS:
            limit = self.limits_for(client)[window]
            if not limit:
                continue
            used = await self.storage.get(self._key(client, window))
            reset = max(
                1, round(await self.storage.get_expiry(self._key(client, window)) - time.time())
            )
            suffix = "" if window == "minute" else "-day"
            left[f"limit-tokens{suffix}"] = limit
            left[f"remaining-tokens{suffix}"] = max(0, limit - used)
            left[f"reset-tokens{suffix}"] = reset if used else 0
            if used >= limit:
                raise RateLimited(
                    f"Token budget exceeded: {limit} tokens per {window} "
                    f"({used} used); retry in {reset} s",
                    retry_after=reset,
                )
        return left

    async def spend(self, client: Client, tokens: int) -> None:
        if tokens <= 0:
            return
        try:
            for window, seconds in WINDOWS:
                if self.limits_for(client)[window]:
                    await self.storage.incr(self._key(client, window), seconds, tokens)
        except Exception as exc:  # the answer is already given: log, do not fail it
            logger.error("Could not count %d tokens of %s: %s", tokens, client.name, exc)

    async def usage(self, client: Client) -> dict[str, Any]:
        """The client's use against its budgets (for /api/metrics and the page)."""
        view: dict[str, Any] = {"client": client.name, "priority": client.priority}
        for window, _seconds in WINDOWS:
            limit = self.limits_for(client)[window]
            try:
                used: int | None = await self.storage.get(self._key(client, window))
            except Exception:
                used = None  # storage unreachable
            view[f"tokens_per_{window}"] = {"used": used, "limit": limit or None}
        return view


# in-process engines batch MAX_BATCH_SIZE; in-process vision answers one at a time; remote
# and engine-process backends batch far more (vLLM's default max_num_seqs).
REMOTE_CAPACITY = 256


def capacity_for(role: Role, settings: Settings) -> int:
    own: int = getattr(settings, f"{role}_max_concurrency")
    if own:
        return own
    backend = settings.role(role).backend
    if backend in ("openai", "vllm", "sglang", "command"):
        return REMOTE_CAPACITY
    if role == "avision" and backend != "fake":
        return 1
    return settings.max_batch_size


class Governor:
    """Everything fair admission keeps for one app: a queue per model, the budgets."""

    def __init__(self, settings: Settings, engines: Mapping[Role, object]) -> None:
        self.settings = settings
        self.budgets = TokenBudgets(settings)
        self.admissions = {
            role: Admission(capacity_for(role, settings), settings.max_queue_size)
            for role in engines
        }
        for engine in engines.values():
            engine._avito_governor = self  # type: ignore[attr-defined]

    def concurrency_for(self, client: Client) -> int:
        own = client.policy.concurrency if client.policy else None
        return self.settings.client_concurrency if own is None else own


def governor_for(engine: object) -> Governor | None:
    """The governor of the app serving this engine (None: an engine used on its own)."""
    governor: Governor | None = getattr(engine, "_avito_governor", None)
    return governor
