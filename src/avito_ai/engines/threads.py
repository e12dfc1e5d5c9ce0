"""Running blocking model work in a thread that ends when the work ends.

Why not `asyncio.to_thread`: its executor threads live on. Torch's CPU kernels use
OpenMP, and every thread that runs a parallel region keeps its own team of OpenMP worker
threads. Once a process holds more OpenMP threads than CPU cores, libgomp stops spinning
between regions, and every later region pays a sleep/wake-up: measured here, decoding in
the scheduler thread ran ~40% slower after the model had been loaded and warmed up in a
to_thread worker. Loading in a short-lived thread (its team goes with it) and warming up in
the thread that then does all the forwards keeps one team per engine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def run_in_own_thread(fn: Callable[[], T], name: str) -> T:
    """`await` fn() run in a new thread that exits afterwards; exceptions propagate."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future
