"""Waiting for what a test checks: a condition polled until a deadline, never a fixed sleep.

A test that sleeps and then asserts passes or fails with the machine's load, and one that
sleeps before asserting a state that already held (nothing running) cannot fail at all. These
poll the thing itself (the server's counters, its health, its log, a file, a queue) and fail
with a message naming what was awaited once the deadline passes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

Message = str | Callable[[], str]


def _deadline_error(timeout: float, message: Message, last: object) -> AssertionError:
    text = message() if callable(message) else message
    return AssertionError(f"not reached within {timeout} s: {text} (last: {last!r})")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    message: Message = "condition",
    *,
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """The predicate's first truthy value, polled every `interval` seconds; AssertionError
    naming `message` once `timeout` seconds pass. Exceptions of the types in `ignoring`
    count as "not yet" (a server still starting refuses connections)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = predicate()
        except ignoring as error:
            last = error
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise _deadline_error(timeout, message, last)
        time.sleep(interval)  # the poll's pace: the deadline above bounds the wait


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,  # noqa: ASYNC109 - the poll's deadline, in its failure message
    message: Message = "condition",
    *,
    interval: float = 0.01,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """As `wait_until`, in a coroutine: the predicate may be a plain function or return an
    awaitable (an HTTP call to the app), and the loop keeps running between polls."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            last = value
        except ignoring as error:
            last = error
        else:
            if value:
                return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _deadline_error(timeout, message, last)
        await asyncio.sleep(interval)  # the poll's pace: the deadline above bounds the wait
