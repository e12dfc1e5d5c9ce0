"""Gunicorn worker: uvicorn-worker's UvicornWorker with our draining server; and the
master's guard that refuses a reload whose configuration is invalid."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any, ClassVar

from gunicorn.arbiter import Arbiter
from uvicorn_worker import UvicornWorker

from avito_ai.cli import checked_settings, settings_or_exit
from avito_ai.config import ConfigError, Settings
from avito_ai.http_limits import limited_protocol
from avito_ai.server import DrainingServer


class AvitoUvicornWorker(UvicornWorker):  # type: ignore[misc]
    """Same as UvicornWorker, but readiness turns 503 as soon as SIGTERM arrives."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": "auto",
        "server_header": False,
    }

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        # gunicorn's worker_connections (MAX_CONNECTIONS) bounds uvicorn as it bounds
        # gunicorn's own async workers: past it, new requests get 503.
        self.config.limit_concurrency = self.cfg.worker_connections
        settings = inherited_settings() or settings_or_exit()
        self.config.http = limited_protocol(settings.max_header_bytes, settings.max_headers)
        self.config.root_path = settings.root_path
        server = DrainingServer(self.config, settings.header_read_timeout)
        # Under gunicorn the master expects the worker to die by the signal it sent.
        server.reraise_signals = True
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGQUIT, self.handle_exit, signal.SIGQUIT, None)
        # The plain sockets, not gunicorn's wrappers: uvloop closes the descriptor itself and
        # then the object, expecting EBADF, which the wrapper logged as "Error while closing
        # socket" on every reload and stop.
        await server.serve(sockets=[getattr(s, "sock", s) for s in self.sockets])
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


# The gunicorn master's last valid configuration, keys included. Workers are forked from
# the master, so each one starts with it, also one respawned after a refused reload while
# the files on disk are invalid (reading them again, it would exit, and be respawned...).
_VALIDATED: Settings | None = None


def remember(settings: Settings) -> None:
    """The master's configuration from now on (gunicorn_config.py, on every valid load)."""
    global _VALIDATED
    settings.api_key_policies()  # read now, in the master: the workers inherit the keys
    _VALIDATED = settings


def inherited_settings() -> Settings | None:
    """In a gunicorn worker: the master's configuration; elsewhere None."""
    return _VALIDATED


def reload_problem() -> str | None:
    """Why the configuration a reload would start workers with is invalid (the settings
    as `.env` and the environment give them, the keys file read whole), or None."""
    try:
        checked_settings().api_key_policies()  # (the file may change after its check)
    except ConfigError as exc:
        return str(exc)
    except (OSError, ValueError) as exc:
        return f"Invalid configuration: API_KEYS_FILE: {exc}"
    return None


def guard_reloads(arbiter: type[Arbiter] = Arbiter) -> None:
    """A HUP reloads only a valid configuration. gunicorn re-reads gunicorn_config.py on
    HUP, whose settings check exits on a bad value: the master died and left its workers
    orphaned, serving the old keys with nothing to respawn them. Now the master checks
    first and, when the configuration is invalid, logs one line naming the variable (and
    the keys file's line and field), counts `avito_config_reload_failures_total`, and
    keeps its current workers; the next HUP with a valid configuration reloads.
    Idempotent (the config file runs again on every reload)."""
    if getattr(arbiter.handle_hup, "_avito_guard", False):
        return
    original = arbiter.handle_hup

    def handle_hup(self: Arbiter) -> None:
        problem = reload_problem()
        if problem is None:
            original(self)
            return
        from avito_ai.observability.metrics import CONFIG_RELOAD_FAILURES

        CONFIG_RELOAD_FAILURES.inc()
        self.log.error("Reload refused, the workers keep the current configuration: %s", problem)

    handle_hup._avito_guard = True  # type: ignore[attr-defined]
    arbiter.handle_hup = handle_hup
