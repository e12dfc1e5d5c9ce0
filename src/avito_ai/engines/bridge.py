"""The one link between consumers on event loops and an engine's single worker thread.

Every thread-driven engine (the transformers text scheduler, the transformers vision engine,
and the backends to come) runs its model on ONE worker thread: the model, its cache and its
batch are touched by that thread only, so they need no locks. What crosses the boundary:

* the waiting queue, a deque under one condition variable: consumers append (bounded by
  `max_queue_size`, so overload is an immediate `Overloaded`), the worker pops;
* each ticket's `cancelled` flag: written by the consumer when it goes away, read by the
  worker at step boundaries (a stale read costs at most one extra step);
* results: the worker collects a step's chunks in an outbox and hands them over with ONE
  `loop.call_soon_threadsafe` per event loop per step (`flush`), into each ticket's
  asyncio.Queue.

The consumer side (`WorkerBridge.stream`) honours the request deadline while it waits, and
withdraws its ticket however it ends (finished, client gone, task cancelled, error), so a
queued request leaves the queue at once and a running one leaves the batch within a step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from typing import Generic, TypeVar

from avito_ai.engines.base import Chunk
from avito_ai.errors import Overloaded, ShuttingDown, Timeout

log = logging.getLogger(__name__)

P = TypeVar("P")
Item = Chunk | BaseException


class Ticket(Generic[P]):
    """One request in flight: its payload for the worker, its queue back to the consumer."""

    __slots__ = ("cancelled", "deadline", "done", "loop", "payload", "queue")

    def __init__(
        self,
        payload: P,
        loop: asyncio.AbstractEventLoop,
        *,
        deadline: float | None,
    ) -> None:
        self.payload = payload
        self.loop = loop
        self.deadline = deadline  # time.monotonic(); None means none
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        # Written by the consumer when it goes away; read by the worker between steps.
        self.cancelled = False
        # Written by the worker once the final item has been sent.
        self.done = False

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


class WorkerBridge(Generic[P]):
    """Waiting queue, worker thread lifecycle and result delivery for one engine."""

    def __init__(self, *, max_queue_size: int, name: str) -> None:
        self.max_queue_size = max_queue_size
        self.name = name
        self._cond = threading.Condition()
        self._waiting: deque[Ticket[P]] = deque()  # guarded by _cond
        self._stopping = False  # guarded by _cond
        self._thread: threading.Thread | None = None
        self._outbox: list[tuple[Ticket[P], Item]] = []  # worker-only

    # ----------------------------------------------------------------- lifecycle

    def start(self, target: Callable[[], None]) -> None:
        """Run `target` (the worker loop) on the engine's one worker thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=target, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the worker to stop, and wait for it. Blocking: use asyncio.to_thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        """False once the worker has exited (stopped, or crashed on a bug)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    # ------------------------------------------------------------- consumer side

    async def stream(self, payload: P, *, deadline: float | None) -> AsyncGenerator[Chunk, None]:
        """Queue `payload` and yield its chunks; the last one has finish_reason set.

        Raises Overloaded (queue full) or ShuttingDown at the first `__anext__`, before any
        compute; Timeout when `deadline` passes; whatever error the worker sends. Closing
        the generator, cancelling its task or raising out of it withdraws the ticket.
        """
        loop = asyncio.get_running_loop()
        ticket = Ticket(payload, loop, deadline=deadline)
        self._submit(ticket)
        try:
            while True:
                if deadline is None:
                    item = await ticket.queue.get()
                else:
                    try:
                        async with asyncio.timeout_at(loop.time() + deadline - time.monotonic()):
                            item = await ticket.queue.get()
                    except TimeoutError:
                        raise Timeout("Request timed out") from None
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.is_final:
                    return
        finally:
            if not ticket.done:
                self._withdraw(ticket)

    def _submit(self, ticket: Ticket[P]) -> None:
        with self._cond:
            if self._stopping or not self.alive:
                raise ShuttingDown("The model is shutting down")
            if len(self._waiting) >= self.max_queue_size:
                raise Overloaded("Server is overloaded, retry later")
            self._waiting.append(ticket)
            self._cond.notify()

    def _withdraw(self, ticket: Ticket[P]) -> None:
        """Consumer gone: free its queue place now, or its worker slot at the next step."""
        ticket.cancelled = True
        with self._cond:
            # Not found: already taken (or finished); the worker drops it at a step boundary.
            with contextlib.suppress(ValueError):
                self._waiting.remove(ticket)
            self._cond.notify()

    # --------------------------------------------------------------- worker side

    def wait_for_work(self, busy: bool = False) -> bool:
        """Block until a ticket waits (or return at once when `busy`); False: stop now."""
        with self._cond:
            while not self._stopping and not self._waiting and not busy:
                self._cond.wait()
            return not self._stopping

    def take(
        self, limit: int, admit: Callable[[Ticket[P], int], bool] | None = None
    ) -> list[Ticket[P]]:
        """Pop up to `limit` live tickets, in order. Cancelled ones are dropped; expired
        ones get Timeout. `admit(ticket, n_taken)` may refuse the next one: it stays first."""
        taken: list[Ticket[P]] = []
        now = time.monotonic()
        with self._cond:
            while self._waiting and len(taken) < limit:
                ticket = self._waiting[0]
                if ticket.cancelled:
                    self._waiting.popleft()
                    continue
                if ticket.expired(now):
                    self._waiting.popleft()
                    self.send(ticket, Timeout("Request timed out while queued"), final=True)
                    continue
                if admit is not None and not admit(ticket, len(taken)):
                    break
                taken.append(self._waiting.popleft())
        return taken

    def send(self, ticket: Ticket[P], item: Item, *, final: bool = False) -> None:
        """Queue `item` for the ticket's consumer; delivered by the next `flush`."""
        if final:
            ticket.done = True
        self._outbox.append((ticket, item))

    def end(self, ticket: Ticket[P], chunks: Sequence[Chunk]) -> None:
        """Send the chunks that end an answer; the last one is the final summary."""
        *text, final = chunks
        for chunk in text:
            self.send(ticket, chunk)
        self.send(ticket, final, final=True)

    def fail(self, tickets: Iterable[Ticket[P]], error: BaseException) -> None:
        """End every ticket not ended yet with `error`."""
        for ticket in tickets:
            if not ticket.done:
                self.send(ticket, error, final=True)

    def flush(self) -> None:
        """Hand the collected items to their event loops: one wake-up per loop."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Ticket[P], Item]]] = {}
        for ticket, item in self._outbox:
            by_loop.setdefault(ticket.loop, []).append((ticket, item))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for ticket, _ in items:
                    ticket.cancelled = True

    def close(self) -> None:
        """Worker exit: refuse new tickets and end every waiting one with ShuttingDown.

        The worker ends its running tickets itself (it knows their state), then flushes.
        """
        with self._cond:
            self._stopping = True
            waiting = list(self._waiting)
            self._waiting.clear()
        for ticket in waiting:
            self.send(ticket, ShuttingDown("The model is shutting down"), final=True)


def _deliver(items: Sequence[tuple[Ticket[P], Item]]) -> None:
    """Runs on the consumer's event loop."""
    for ticket, item in items:
        ticket.queue.put_nowait(item)
