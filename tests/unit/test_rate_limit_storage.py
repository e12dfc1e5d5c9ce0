"""The in-process rate-limit storage: moving windows behind `limits.aio`'s strategy, with
nothing running between requests."""

from __future__ import annotations

import asyncio
import threading

import pytest
from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.strategies import MovingWindowRateLimiter

from avito_ai import storage as storage_module
from avito_ai.storage import MemoryWindows


class Clock:
    """time.time() for the storage module, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(storage_module.time, "time", fake.time)
    return fake


async def test_a_burst_of_traffic_starts_no_thread_and_no_task() -> None:
    """`limits`' own memory storages sweep every key on a thread (or a task per key) after
    any traffic: this one does its work inside the calls."""
    limiter = MovingWindowRateLimiter(MemoryWindows())
    threads, tasks = threading.active_count(), len(asyncio.all_tasks())
    item = RateLimitItemPerMinute(10)
    for client in range(500):
        assert await limiter.hit(item, f"client-{client}")
    assert threading.active_count() == threads
    assert len(asyncio.all_tasks()) == tasks


async def test_windows_move_with_the_clock(clock: Clock) -> None:
    limiter = MovingWindowRateLimiter(MemoryWindows())
    item = RateLimitItemPerSecond(2)
    assert await limiter.hit(item, "client")
    clock.now += 0.5
    assert await limiter.hit(item, "client")
    assert not await limiter.hit(item, "client")
    stats = await limiter.get_window_stats(item, "client")
    assert stats.remaining == 0 and stats.reset_time == clock.now - 0.5 + 1
    clock.now += 0.6  # the first entry has left the window, the second has not
    assert await limiter.hit(item, "client")
    assert not await limiter.hit(item, "client")
    assert (await limiter.get_window_stats(item, "other")).remaining == 2


async def test_idle_keys_are_dropped_once_a_minute(clock: Clock) -> None:
    windows = MemoryWindows()
    limiter = MovingWindowRateLimiter(windows)
    item = RateLimitItemPerSecond(5)
    for client in range(100):
        await limiter.hit(item, f"client-{client}")
    clock.now += MemoryWindows.SWEEP_INTERVAL_S / 2
    await limiter.hit(item, "late")
    assert len(windows._windows) == 101  # not yet a minute: nothing swept
    clock.now += MemoryWindows.SWEEP_INTERVAL_S / 2
    await limiter.hit(item, "late")
    assert list(windows._windows) == [item.key_for("late")]


async def test_refused_requests_store_nothing(clock: Clock) -> None:
    windows = MemoryWindows()
    limiter = MovingWindowRateLimiter(windows)
    item = RateLimitItemPerMinute(3)
    results = [await limiter.hit(item, "client") for _ in range(1000)]
    assert results == [True] * 3 + [False] * 997
    assert [len(events) for _, events in windows._windows.values()] == [3]
