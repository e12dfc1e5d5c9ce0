"""Gunicorn worker: uvicorn-worker's UvicornWorker with our draining server."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any, ClassVar

from gunicorn.arbiter import Arbiter
from uvicorn_worker import UvicornWorker

from avito_ai.cli import settings_or_exit
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
        settings = settings_or_exit()
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
