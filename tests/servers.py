"""Start the real service as a separate process (dev server or gunicorn) for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server process on a free loopback port, its output captured to a file."""

    def __init__(
        self,
        command: Sequence[str],
        env: dict[str, str],
        log_path: Path,
        port: int,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        full_env = {**os.environ, **env, "PORT": str(port), "HOST": "127.0.0.1"}
        full_env.pop("PYTHONDONTWRITEBYTECODE", None)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(command), cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_live(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/api/health/live", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not come up in {timeout}s:\n{self.output()}")

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/api/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def serving(srv: ServerProcess, ready_within: float = 60.0) -> Iterator[ServerProcess]:
    """The server once ready; stopped afterwards whatever happens."""
    try:
        srv.wait_ready(ready_within)
        yield srv
    finally:
        srv.stop()


def openai_client(srv: ServerProcess) -> Any:
    """The official `openai` client on the server's /v1, without retries."""
    import openai

    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)


def dev_server(env: dict[str, str], log_path: Path) -> ServerProcess:
    """`python app_production.py`, the original specification's development server."""
    return ServerProcess([sys.executable, "app_production.py"], env, log_path, free_port())


def gunicorn_server(env: dict[str, str], log_path: Path, workers: int = 1) -> ServerProcess:
    """`gunicorn -c gunicorn_config.py app_production:app`, the original specification's
    production server."""
    port = free_port()
    env = {**env, "WEB_CONCURRENCY": str(workers)}
    cmd = [str(BIN / "gunicorn"), "-c", "gunicorn_config.py", "app_production:app"]
    return ServerProcess(cmd, env, log_path, port)


def wait_workers(srv: ServerProcess, count: int, timeout: float = 60.0) -> set[str]:
    """Pids of gunicorn workers booted so far, once at least `count` have booted."""
    import re

    deadline = time.monotonic() + timeout
    while True:
        pids = set(re.findall(r"Booting worker with pid: (\d+)", srv.output()))
        if len(pids) >= count or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)
