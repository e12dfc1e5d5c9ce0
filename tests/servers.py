"""Start the real service as a separate process (dev server or gunicorn) for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.waiting import wait_until

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
        self._wait_health("/api/health/live", timeout, "live", 0.1)

    def wait_ready(self, timeout: float = 120.0) -> None:
        self._wait_health("/api/health/ready", timeout, "ready", 0.2)

    def _wait_health(self, path: str, timeout: float, state: str, interval: float) -> None:
        def answers() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            return httpx.get(self.url + path, timeout=1).status_code == 200

        try:
            wait_until(
                answers, timeout, f"server {state}", interval=interval, ignoring=(httpx.HTTPError,)
            )
        except AssertionError:
            raise RuntimeError(f"server not {state} in {timeout}s:\n{self.output()}") from None

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
    """Pids of gunicorn workers booted so far, once at least `count` have booted (an
    AssertionError if they have not within `timeout`)."""
    import re

    pids: set[str] = set()

    def enough() -> bool:
        pids.update(re.findall(r"Booting worker with pid: (\d+)", srv.output()))
        return len(pids) >= count

    wait_until(enough, timeout, lambda: f"{count} workers booted:\n{srv.output()}", interval=0.1)
    return pids


def dashboard(srv: ServerProcess) -> dict[str, Any]:
    """The server's own counters (/api/metrics/dashboard, all workers): requests, running,
    waiting, cancelled..."""
    figures: dict[str, Any] = httpx.get(srv.url + "/api/metrics/dashboard", timeout=5).json()
    return figures


def wait_dashboard(
    srv: ServerProcess, check: Callable[[dict[str, Any]], bool], message: str, timeout: float = 30
) -> dict[str, Any]:
    """The dashboard's figures once `check` holds for them."""

    def reached() -> dict[str, Any] | None:
        figures = dashboard(srv)
        return figures if check(figures) else None

    return wait_until(reached, timeout, lambda: f"{message}; now {dashboard(srv)}")


def wait_logged(path: Path, *needles: str, timeout: float = 20) -> str:
    """The text of the log file at `path` once it holds every one of `needles`."""

    def logged() -> str | None:
        text = path.read_text(errors="replace") if path.exists() else ""
        return text if all(needle in text for needle in needles) else None

    return wait_until(logged, timeout, f"{needles} in {path}")


def metric(srv: ServerProcess, name: str, **labels: str) -> float:
    """The sum of the server's /metrics samples called `name` whose labels include
    `labels` (0.0 when there is none yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(srv.url + "/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def exited(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie not yet reaped has)."""
    import psutil

    try:
        return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
