"""Draining on SIGTERM/SIGINT: every live service of this process turns not-ready at once.

Its own module, importing nothing else of the service: the gunicorn master imports it
(through server.py) before it has made the metrics folder that other modules need."""

from __future__ import annotations

import weakref
from typing import Protocol


class Drains(Protocol):
    draining: bool


# Every live ServiceState of this process, so a signal handler can start draining them.
_LIVE: weakref.WeakSet[Drains] = weakref.WeakSet()


def register(state: Drains) -> None:
    _LIVE.add(state)


def begin_drain_all() -> None:
    """Called from the server's SIGTERM/SIGINT handler: readiness turns 503 at once."""
    for state in list(_LIVE):
        state.draining = True
