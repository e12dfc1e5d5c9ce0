"""The in-process rate-limit storage: `limits`' memory storage, swept rarely, called inline."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from limits.storage import MemoryStorage

from avito_ai.storage import InlineMemoryStorage, SweptMemoryStorage


def test_the_parent_hook_still_exists() -> None:
    """The override relies on `limits`' private scheduling hook: a rename must fail here."""
    assert hasattr(MemoryStorage, "_MemoryStorage__schedule_expiry")
    assert hasattr(MemoryStorage, "_MemoryStorage__expire_events")


def test_a_burst_of_traffic_starts_one_sweep_not_one_per_10_ms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = SweptMemoryStorage()
    started: list[threading.Timer] = []
    real = threading.Timer

    def counting_timer(*args: object, **kwargs: object) -> threading.Timer:
        timer = real(*args, **kwargs)  # type: ignore[arg-type]
        started.append(timer)
        return timer

    monkeypatch.setattr(threading, "Timer", counting_timer)
    began = time.monotonic()
    while time.monotonic() - began < 0.3:  # the parent would sweep ~30 times
        storage.acquire_entry(f"k{len(started)}-{time.monotonic()}", 10, 60)
        time.sleep(0.001)  # the behaviour under test: traffic spread over 0.3 s
    assert len(started) <= 1


async def test_windows_still_expire_by_time() -> None:
    storage = InlineMemoryStorage()
    assert await storage.acquire_entry("client", 1, 1)
    assert not await storage.acquire_entry("client", 1, 1)
    start, count = await storage.get_moving_window("client", 1, 1)
    assert count == 1 and start <= time.time()
    await asyncio.sleep(1.05)  # the behaviour under test: the 1 s window passes
    assert await storage.acquire_entry("client", 1, 1)
