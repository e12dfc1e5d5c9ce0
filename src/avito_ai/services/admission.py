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
* **Waiting per client**: one client may have at most CLIENT_MAX_WAITING requests waiting
  (default a quarter of the queue); past it its next request is a 429, so one client
  cannot fill the queue and turn every other client away with 503s.
* **Token budgets** (services/budgets.py): tokens per minute and per day per client,
  reserved at admission and settled at the end, in the rate limits' storage (memory, or
  Redis: shared by workers and replicas, kept across restarts). A request that does not
  fit gets 429 `rate_limit_exceeded` naming the budget, with Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from avito_ai.clients import DEFAULT_CLASS, PRIORITY_CLASSES, Client
from avito_ai.config import Role, Settings
from avito_ai.engines.base import capabilities_of
from avito_ai.errors import Overloaded, RateLimited, ValidationFailed
from avito_ai.observability import metrics
from avito_ai.services.budgets import TokenBudgets

LOWEST_RANK = max(PRIORITY_CLASSES.values())


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
    max_waiting_per_client: int = 0  # 0: no bound of its own
    running: int = 0
    waiting: int = 0
    by_client: dict[str, int] = field(default_factory=dict)
    waiting_by_client: dict[str, int] = field(default_factory=dict)
    # class rank -> client -> its waiters, in arrival order; the dict's order is the turn.
    queues: dict[int, OrderedDict[str, deque[_Waiter]]] = field(default_factory=dict)
    gauge: Any = None  # the model's avito_admission_waiting child, when it has one
    # Requests above the lowest class (interactive ones) waiting or running, and when the
    # last of them ended: the Batch API's runner starts no line while they come.
    above_lowest: int = 0
    quiet_since: float = float("-inf")

    @asynccontextmanager
    async def place(self, client: str, priority: str, limit: int = 0) -> AsyncIterator[None]:
        """Hold a place while the body runs; waits for one (fairly) when all are taken."""
        if PRIORITY_CLASSES[priority] == LOWEST_RANK:
            async with self._place(client, priority, limit):
                yield
            return
        self.above_lowest += 1
        try:
            async with self._place(client, priority, limit):
                yield
        finally:
            self.above_lowest -= 1
            if not self.above_lowest:
                self.quiet_since = time.monotonic()

    @asynccontextmanager
    async def _place(self, client: str, priority: str, limit: int) -> AsyncIterator[None]:
        if self.running < self.capacity and self._under(client, limit):
            self._start(client)
        else:
            if self.waiting >= self.max_waiting:
                raise Overloaded("Server is overloaded: the queue is full, retry later")
            own = self.waiting_by_client.get(client, 0)
            if self.max_waiting_per_client and own >= self.max_waiting_per_client:
                raise RateLimited(
                    f"Too many requests waiting: this client already has {own} waiting for "
                    f"this model (CLIENT_MAX_WAITING); retry when one has finished",
                    retry_after=1,
                )
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
        self.waiting_by_client[waiter.client] = self.waiting_by_client.get(waiter.client, 0) + 1
        if self.gauge is not None:
            self.gauge.inc()

    def _left_queue(self, client: str) -> None:
        self.waiting -= 1
        if self.gauge is not None:
            self.gauge.dec()
        left = self.waiting_by_client[client] - 1
        if left:
            self.waiting_by_client[client] = left
        else:
            del self.waiting_by_client[client]

    def _withdraw(self, rank: int, waiter: _Waiter) -> None:
        line = self.queues.get(rank, OrderedDict()).get(waiter.client)
        if line is not None and waiter in line:
            line.remove(waiter)
            self._left_queue(waiter.client)
            if not line:
                del self.queues[rank][waiter.client]

    def _dispatch(self) -> None:
        while self.running < self.capacity:
            waiter = self._next()
            if waiter is None:
                return
            if waiter.admitted.done():  # cancelled, its task not yet run: it has left
                continue
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
                self._left_queue(client)
                if line:
                    queue.move_to_end(client)  # its next request waits for the others' turn
                else:
                    del queue[client]
                return waiter
        return None


def capacity_for(role: Role, settings: Settings, engine: object) -> int:
    """How many of a model's requests generate at once: the role's MAX_CONCURRENCY, else
    what its engine declares (an upstream batches far more, an in-process vision model
    answers one at a time), else the in-process batch (MAX_BATCH_SIZE)."""
    own = settings.role(role)
    if own.max_concurrency:
        return own.max_concurrency
    declared = capabilities_of(engine).capacity
    return settings.in_process.max_batch_size if declared is None else declared


class Governor:
    """Everything fair admission keeps for one app: a queue per model, the budgets."""

    def __init__(self, settings: Settings, engines: Mapping[Role, object]) -> None:
        self.settings = settings
        self.budgets = TokenBudgets(settings)
        per_client = settings.client_max_waiting or max(1, settings.max_queue_size // 4)
        self.admissions = {
            role: Admission(
                capacity_for(role, settings, engine),
                settings.max_queue_size,
                per_client,
                gauge=metrics.ADMISSION_WAITING.labels(role),
            )
            for role, engine in engines.items()
        }
        for role in engines:
            metrics.QUEUE_CAPACITY.labels(role).set(settings.max_queue_size)
        # The models whose interactive requests batches yield to: those of in-process
        # engines, where a batch sequence in the same step slows theirs (CPU). An engine that
        # declares its capacity (an upstream or engine process on a GPU, vLLM and SGLang
        # scheduling by priority themselves) batches many sequences at little cost each.
        self.yielded_to = [
            self.admissions[role]
            for role, engine in engines.items()
            if capabilities_of(engine).capacity is None
        ]

    def quiet_for(self) -> float:
        """Seconds since the last request above the lowest class ended on an in-process
        model of this process (0 while one waits or runs; inf if none ever came)."""
        if any(a.above_lowest for a in self.yielded_to):
            return 0.0
        last = max((a.quiet_since for a in self.yielded_to), default=float("-inf"))
        return time.monotonic() - last

    def concurrency_for(self, client: Client) -> int:
        own = client.policy.concurrency if client.policy else None
        return self.settings.client_concurrency if own is None else own
