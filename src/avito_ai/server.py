"""Running the app: a uvicorn Server that drains gracefully and exits 0 on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from types import FrameType

import uvicorn

from avito_ai.config import Settings
from avito_ai.http_limits import limited_protocol
from avito_ai.services.drain import begin_drain_all


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that turns readiness 503 the moment a stop signal arrives, and closes
    connections that take too long to send a request head.

    uvicorn itself stops accepting connections, waits for in-flight requests up to
    `timeout_graceful_shutdown`, then runs the lifespan shutdown (models released).
    """

    reraise_signals = False

    def __init__(self, config: uvicorn.Config, header_read_timeout: float = 10.0) -> None:
        super().__init__(config)
        self.header_read_timeout = header_read_timeout
        # connection -> (what it was doing, since when): see _close_stalled.
        self._waiting: dict[object, tuple[object, float]] = {}

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:  # once a second
            self._close_stalled(time.monotonic())
        return await super().on_tick(counter)

    def _close_stalled(self, now: float) -> None:
        """uvicorn bounds idle keep-alive connections but not a request head sent slowly:
        one byte every few seconds held a connection for ever (slowloris). A connection
        waiting for its next request head longer than `header_read_timeout` is closed.
        Requests in progress are bounded elsewhere (BODY_READ_TIMEOUT, REQUEST_TIMEOUT)."""
        waiting: dict[object, tuple[object, float]] = {}
        for connection in self.server_state.connections:
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                continue  # a request is being served
            allowance = self.header_read_timeout
            if cycle is not None and getattr(cycle, "more_body", False):
                # Answered before its body was read (413, 429, 401): the client may still be
                # uploading, and uvicorn discards the rest. Closing now would reset the
                # connection mid-upload, and a reset can lose the answer.
                allowance = max(EARLY_ANSWER_ALLOWANCE_S, allowance)
            previous = self._waiting.get(connection)
            # Waiting since the last look, unless another request came and went meanwhile.
            since = previous[1] if previous is not None and previous[0] is cycle else now
            if now - since >= allowance:
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.close()
                continue
            waiting[connection] = (cycle, since)
        self._waiting = waiting

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        begin_drain_all()
        super().handle_exit(sig, frame)
        if not self.reraise_signals and sig in (signal.SIGTERM, signal.SIGINT):
            # uvicorn re-raises captured signals after shutdown, which would make the
            # process die "killed by SIGTERM". A clean drain is a clean exit: status 0.
            self._captured_signals.remove(sig)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting; the other workers keep the listening socket
        await self._hear_out_fresh_connections()
        await super().shutdown(sockets)

    async def _hear_out_fresh_connections(self) -> None:
        """Wait briefly for connections accepted just before the stop to send their request.

        uvicorn closes every connection without a request in progress as idle. One accepted a
        moment ago has its request still in flight: closing it would drop the client with no
        answer (a HUP reload under load did). Idle keep-alive connections are not waited for.
        """
        deadline = asyncio.get_running_loop().time() + FRESH_CONNECTION_GRACE
        while asyncio.get_running_loop().time() < deadline:
            if not any(getattr(c, "cycle", True) is None for c in self.server_state.connections):
                return
            await asyncio.sleep(0.01)


# How long a client answered before its upload ended may go on sending the rest.
EARLY_ANSWER_ALLOWANCE_S = 60.0
# How long a connection accepted just before a stop has to deliver its request headers.
FRESH_CONNECTION_GRACE = 1.0


def uvicorn_config(app: object, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_config=None,  # our logging is configured already
        access_log=False,  # AccessLogMiddleware writes one line per request
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        root_path=settings.root_path,
        timeout_graceful_shutdown=int(settings.graceful_timeout) or None,
        timeout_keep_alive=5,
        limit_concurrency=settings.max_connections,
        server_header=False,
        http=limited_protocol(settings.max_header_bytes, settings.max_headers),
    )


def serve(settings: Settings) -> None:
    """The development server. Engine processes (AVIBE_BACKEND=vllm|sglang|command) start
    first and stop last: after the server drained its own requests."""
    from avito_ai.app import create_app
    from avito_ai.engines.process.supervisor import (
        start_engine_processes,
        stop_engine_processes,
    )

    try:
        folder = start_engine_processes(settings.engines)
        if folder is not None:  # where the engines' states are, for this process's app
            settings = settings.with_engine_state_dir(folder)
        app = create_app(settings)
        DrainingServer(uvicorn_config(app, settings), settings.header_read_timeout).run()
    finally:
        stop_engine_processes()
