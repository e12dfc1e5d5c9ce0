"""The budgets' storage, memory and a real Redis: a reservation fits whole or changes
nothing, and settling gives back (never below zero, never into a window that has ended)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from avito_ai.storage import BudgetStore, MemoryBudgetStore, RedisBudgetStore


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BudgetStore]:
    if request.param == "memory":
        yield MemoryBudgetStore()
        return
    server = request.getfixturevalue("redis_server")
    import redis

    redis.Redis(port=server.port).flushall()
    yield RedisBudgetStore(server.uri)


async def test_a_reservation_fits_in_every_window_or_changes_nothing(store: BudgetStore) -> None:
    keys, limits, expiries = ["m", "d"], [100, 150], [60, 86400]
    assert (await store.reserve(keys, limits, [60, 60], expiries))[0] == 0
    refused, used, left = await store.reserve(keys, limits, [60, 60], expiries)
    assert refused == 1 and used == [60, 60]  # the minute's 100 is the one it does not fit
    assert 0 < left[0] <= 60 and 60 < left[1] <= 86400
    assert await store.read("m") == (60, left[0])
    assert (await store.reserve(keys, limits, [40, 40], expiries))[:2] == (0, [100, 100])
    assert (await store.reserve(keys, limits, [1, 1], expiries))[0] == 1


async def test_settling_gives_back_and_charges(store: BudgetStore) -> None:
    await store.reserve(["k"], [100], [50], [60])
    await store.adjust(["k"], [-30], [60])  # used 20 of its 50
    assert (await store.read("k"))[0] == 20
    await store.adjust(["k"], [-500], [60])  # never below zero
    assert (await store.read("k"))[0] == 0
    await store.adjust(["gone"], [-5], [60])  # a window that has ended is not reopened
    assert await store.read("gone") == (0, 0)
    await store.adjust(["new"], [7], [60])  # used past its reservation: charged
    used, left = await store.read("new")
    assert used == 7 and 0 < left <= 60


async def test_concurrent_reservations_never_overbook(store: BudgetStore) -> None:
    results = await asyncio.gather(*(store.reserve(["c"], [300], [61], [60]) for _ in range(12)))
    assert sum(refused == 0 for refused, _, _ in results) == 4  # 4 x 61 <= 300 < 5 x 61
    assert (await store.read("c"))[0] == 244


async def test_a_retried_change_is_applied_once(redis_server: Any) -> None:
    """redis-py sends a command again when its answer timed out (the event loop busy past
    STORAGE_TIMEOUT_S): a reservation or a settlement named `once` changes the budget once.
    (Memory: nothing is retried.)"""
    import redis

    redis.Redis(port=redis_server.port).flushall()
    store = RedisBudgetStore(redis_server.uri)
    first = await store.reserve(["r"], [1000], [40], [60], once="op-1")
    again = await store.reserve(["r"], [1000], [40], [60], once="op-1")
    assert first[:2] == again[:2] == (0, [40])
    assert (await store.read("r"))[0] == 40
    await store.adjust(["r"], [-10], [60], once="op-2")
    await store.adjust(["r"], [-10], [60], once="op-2")
    assert (await store.read("r"))[0] == 30
    await store.reserve(["r"], [1000], [40], [60], once="op-3")  # a new one counts
    assert (await store.read("r"))[0] == 70
