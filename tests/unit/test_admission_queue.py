"""The fair admission queue (services/admission.py `Admission`) driven directly, without
HTTP: each request is a task holding a place until the test lets it go, so the order in
which places are granted is exact, not a matter of timing."""

from __future__ import annotations

import asyncio

import pytest

from avito_ai.errors import Overloaded, RateLimited
from avito_ai.services.admission import Admission


class Request:
    """One request: a task that takes a place and holds it until `finish()`."""

    def __init__(
        self,
        queue: Admission,
        client: str,
        granted: list[str],
        *,
        name: str | None = None,
        priority: str = "interactive",
        limit: int = 0,
    ) -> None:
        self.name = name or client
        self.release = asyncio.Event()
        self.holding = False
        self.task = asyncio.create_task(self._run(queue, client, priority, limit, granted))

    async def _run(
        self, queue: Admission, client: str, priority: str, limit: int, granted: list[str]
    ) -> None:
        async with queue.place(client, priority, limit):
            granted.append(self.name)
            self.holding = True
            await self.release.wait()
        self.holding = False

    async def finish(self) -> None:
        self.release.set()
        await self.task
        await settle()


async def settle() -> None:
    """Let every task that can run do so (grants are handed out synchronously)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def arrive(
    queue: Admission, client: str, granted: list[str], count: int = 1, **kw: object
) -> list[Request]:
    """`count` requests of `client`, arriving in order (each has reached the queue before
    the next is sent)."""
    requests = []
    for n in range(count):
        requests.append(Request(queue, client, granted, name=f"{client}{n}", **kw))  # type: ignore[arg-type]
        await settle()
    return requests


async def finish_all(requests: list[Request]) -> None:
    """Finish whichever request holds a place, one at a time, until all are done."""
    while not all(r.task.done() for r in requests):
        holder = next(r for r in requests if r.holding)
        await holder.finish()


def assert_empty(queue: Admission) -> None:
    assert (queue.running, queue.waiting) == (0, 0)
    assert queue.by_client == {} and queue.waiting_by_client == {}
    assert all(not line for lines in queue.queues.values() for line in lines.values())


async def test_free_places_are_granted_at_once_and_given_back() -> None:
    queue = Admission(capacity=2, max_waiting=10)
    granted: list[str] = []
    a, b = await arrive(queue, "a", granted, 2)
    assert granted == ["a0", "a1"]
    assert (queue.running, queue.waiting, queue.by_client) == (2, 0, {"a": 2})
    await a.finish()
    assert (queue.running, queue.by_client) == (1, {"a": 1})
    await b.finish()
    assert_empty(queue)


async def test_a_flooding_client_does_not_starve_another() -> None:
    """One place; a client has 1 running and 5 waiting when another sends one request:
    that one gets the second freed place, not the seventh."""
    queue = Admission(capacity=1, max_waiting=100)
    granted: list[str] = []
    flood = await arrive(queue, "flood", granted, 6)
    one = await arrive(queue, "one", granted)
    assert (queue.running, queue.waiting) == (1, 6)
    assert queue.waiting_by_client == {"flood": 5, "one": 1}
    await finish_all(flood + one)
    # flood1 was in turn first (its client was queued first); then the other client.
    assert granted == ["flood0", "flood1", "one0", "flood2", "flood3", "flood4", "flood5"]
    assert_empty(queue)


async def test_waiting_clients_take_turns_one_request_each() -> None:
    queue = Admission(capacity=1, max_waiting=100)
    granted: list[str] = []
    holder = await arrive(queue, "x", granted)
    waiting = [
        *await arrive(queue, "a", granted, 3),
        *await arrive(queue, "b", granted, 2),
        *await arrive(queue, "c", granted, 1),
    ]
    await finish_all(holder + waiting)
    assert granted == ["x0", "a0", "b0", "c0", "a1", "b1", "a2"]
    assert_empty(queue)


async def test_a_higher_class_is_granted_before_waiting_batch_work() -> None:
    queue = Admission(capacity=1, max_waiting=100)
    granted: list[str] = []
    batch = await arrive(queue, "nightly", granted, 4, priority="batch")
    ui = await arrive(queue, "console", granted, 2, priority="interactive")
    await finish_all(batch + ui)
    # The one running goes on; both interactive requests (arrived last) go next.
    assert granted == ["nightly0", "console0", "console1", "nightly1", "nightly2", "nightly3"]
    assert_empty(queue)


async def test_round_robin_holds_within_each_class() -> None:
    queue = Admission(capacity=1, max_waiting=100)
    granted: list[str] = []
    holder = await arrive(queue, "x", granted)
    waiting = [
        *await arrive(queue, "b1", granted, 2, priority="batch"),
        *await arrive(queue, "b2", granted, 1, priority="batch"),
        *await arrive(queue, "i1", granted, 2),
        *await arrive(queue, "i2", granted, 1),
    ]
    await finish_all(holder + waiting)
    assert granted == ["x0", "i10", "i20", "i11", "b10", "b20", "b11"]
    assert_empty(queue)


async def test_a_client_runs_at_most_its_concurrency() -> None:
    queue = Admission(capacity=4, max_waiting=100)
    granted: list[str] = []
    capped = await arrive(queue, "two", granted, 3, limit=2)
    assert granted == ["two0", "two1"]
    # Its third waits although places are free; another client is not held up by it.
    assert (queue.running, queue.waiting, queue.by_client) == (2, 1, {"two": 2})
    other = await arrive(queue, "other", granted)
    assert granted == ["two0", "two1", "other0"]
    assert queue.by_client == {"two": 2, "other": 1}
    await other[0].finish()
    assert queue.waiting == 1  # a freed place it may not use: still waiting
    await capped[0].finish()
    assert granted[-1] == "two2" and queue.by_client == {"two": 2}
    await finish_all(capped)
    assert_empty(queue)


async def test_a_client_at_its_concurrency_is_skipped_in_the_rotation() -> None:
    queue = Admission(capacity=2, max_waiting=100)
    granted: list[str] = []
    capped = await arrive(queue, "one", granted, 2, limit=1)  # one0 runs, one1 waits
    other = await arrive(queue, "other", granted, 2)  # other0 runs, other1 waits
    assert granted == ["one0", "other0"] and queue.waiting == 2
    await other[0].finish()
    # "one" is first in turn, but already runs its one: the place goes to "other".
    assert granted[-1] == "other1"
    assert queue.waiting_by_client == {"one": 1}
    await capped[0].finish()
    assert granted[-1] == "one1"
    await finish_all(capped + other)
    assert_empty(queue)


async def test_a_client_past_its_waiting_bound_is_refused_with_429() -> None:
    queue = Admission(capacity=1, max_waiting=10, max_waiting_per_client=2)
    granted: list[str] = []
    hog = await arrive(queue, "hog", granted, 3)  # 1 running, 2 waiting: its bound
    with pytest.raises(RateLimited) as refused:
        async with queue.place("hog", "interactive"):
            raise AssertionError("admitted past CLIENT_MAX_WAITING")
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.retry_after == 1
    assert "CLIENT_MAX_WAITING" in refused.value.message
    assert "already has 2 waiting" in refused.value.message
    assert (queue.running, queue.waiting) == (1, 2)  # the refusal changed nothing
    other = await arrive(queue, "other", granted)  # another client still gets in line
    assert queue.waiting_by_client == {"hog": 2, "other": 1}
    await finish_all(hog + other)
    assert granted == ["hog0", "hog1", "other0", "hog2"]
    assert_empty(queue)


async def test_no_waiting_bound_of_its_own_when_zero() -> None:
    queue = Admission(capacity=1, max_waiting=5, max_waiting_per_client=0)
    granted: list[str] = []
    hog = await arrive(queue, "hog", granted, 6)  # 1 running and 5 waiting: all of them
    assert (queue.running, queue.waiting) == (1, 5)
    await finish_all(hog)
    assert_empty(queue)


async def test_a_full_queue_is_overloaded_for_everyone() -> None:
    queue = Admission(capacity=1, max_waiting=2, max_waiting_per_client=1)
    granted: list[str] = []
    held = [*await arrive(queue, "a", granted, 2), *await arrive(queue, "b", granted)]
    assert (queue.running, queue.waiting) == (1, 2)
    for client in ("c", "a"):  # a newcomer, and one also past its own bound: 503 first
        with pytest.raises(Overloaded) as refused:
            async with queue.place(client, "interactive"):
                raise AssertionError("admitted past MAX_QUEUE_SIZE")
        assert refused.value.code == "overloaded" and refused.value.retry_after == 1
    assert (queue.running, queue.waiting) == (1, 2)
    await held[0].finish()  # a place in the queue is free again
    late = await arrive(queue, "c", granted)
    assert queue.waiting == 2
    await finish_all(held + late)
    assert granted == ["a0", "a1", "b0", "c0"]
    assert_empty(queue)


async def test_a_cancelled_waiter_leaves_at_once_and_is_never_granted() -> None:
    queue = Admission(capacity=1, max_waiting=2)
    granted: list[str] = []
    holder = await arrive(queue, "x", granted)
    gone, stays = *await arrive(queue, "gone", granted), *await arrive(queue, "stays", granted)
    assert queue.waiting == 2
    gone.task.cancel()  # its client disconnected
    await settle()
    assert gone.task.cancelled()
    assert (queue.running, queue.waiting) == (1, 1)
    assert queue.waiting_by_client == {"stays": 1}
    assert all("gone" not in lines for lines in queue.queues.values())
    late = await arrive(queue, "late", granted)  # its place in the queue is free again
    assert queue.waiting == 2
    await finish_all([*holder, stays, *late])
    assert granted == ["x0", "stays0", "late0"]
    assert_empty(queue)


async def test_a_waiter_cancelled_as_it_was_granted_gives_the_place_on() -> None:
    """Granted and cancelled in the same turn of the loop (its result set, its task not yet
    resumed): the place is given back and goes to the next waiter."""
    queue = Admission(capacity=1, max_waiting=10)
    granted: list[str] = []
    holder, unlucky, next_one = [
        *await arrive(queue, "x", granted),
        *await arrive(queue, "unlucky", granted),
        *await arrive(queue, "next", granted),
    ]
    seen: list[dict[str, int]] = []

    def cancel_it() -> None:  # runs after x has finished, before unlucky0's task resumes
        seen.append(dict(queue.by_client))
        unlucky.task.cancel()

    holder.release.set()
    asyncio.get_running_loop().call_soon(cancel_it)
    await settle()
    assert seen == [{"unlucky": 1}]  # x's place had gone to it
    assert unlucky.task.cancelled() and "unlucky0" not in granted
    assert queue.by_client == {"next": 1} and granted == ["x0", "next0"]
    await next_one.finish()
    assert_empty(queue)


async def test_a_waiter_cancelled_while_a_place_is_freed_does_not_take_it() -> None:
    queue = Admission(capacity=1, max_waiting=10)
    granted: list[str] = []
    holder, gone, next_one = [
        *await arrive(queue, "x", granted),
        *await arrive(queue, "gone", granted),
        *await arrive(queue, "next", granted),
    ]
    holder.release.set()  # x finishes ...
    gone.task.cancel()  # ... in the same turn of the loop as the next in line leaves
    await settle()
    assert gone.task.cancelled()
    await holder.task  # (it raised InvalidStateError, and the place was lost)
    assert granted == ["x0", "next0"] and queue.by_client == {"next": 1}
    await next_one.finish()
    assert_empty(queue)


async def test_a_freed_place_goes_to_the_next_waiter_at_once() -> None:
    queue = Admission(capacity=2, max_waiting=10)
    granted: list[str] = []
    first = await arrive(queue, "a", granted, 2)
    waiting = await arrive(queue, "b", granted, 2)
    assert (queue.running, queue.waiting) == (2, 2)
    first[1].release.set()
    await first[1].task  # on its way out it handed its place on
    assert (queue.running, queue.waiting, queue.by_client) == (2, 1, {"a": 1, "b": 1})
    await settle()
    assert granted == ["a0", "a1", "b0"]
    await first[0].finish()
    assert granted == ["a0", "a1", "b0", "b1"] and queue.waiting == 0
    await finish_all(first + waiting)
    assert_empty(queue)


async def test_an_error_in_the_body_gives_the_place_back() -> None:
    queue = Admission(capacity=1, max_waiting=10)
    granted: list[str] = []
    with pytest.raises(RuntimeError):
        async with queue.place("a", "interactive"):
            assert queue.running == 1
            raise RuntimeError("the generation failed")
    assert_empty(queue)
    waiting = await arrive(queue, "b", granted)
    assert granted == ["b0"]
    await finish_all(waiting)
