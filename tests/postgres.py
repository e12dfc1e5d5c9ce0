"""A real PostgreSQL (Debian's `postgresql`, `make test` installs it) for the Batch API's
replica tests: initdb in a temporary folder, `postgres` on a free loopback port, run as an
ordinary user (the `postgres` account when the tests run as root: PostgreSQL refuses
root), stopped afterwards. `stop()` and `start()` take it away and bring it back."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import free_port
from tests.waiting import wait_until


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None
    )
    if found is None:
        pytest.fail("PostgreSQL is not installed: run `make test`, which installs it")
    return found


def _as_user() -> list[str]:
    """Run as `postgres` when the tests are root (PostgreSQL will not run as root)."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class PostgresServer:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/batches"

    def init(self) -> None:
        data = self.workdir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres")
        subprocess.run(
            [*_as_user(), pg_bin("initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        log = open(self.workdir / "postgres.log", "ab")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen(
            [*_as_user(), pg_bin("postgres"), "-D", str(self.workdir / "data"),
             "-p", str(self.port), "-h", "127.0.0.1", "-k", str(self.workdir),
             "-c", "fsync=off", "-c", "max_connections=100"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self._answers, 30, "postgres accepts connections", interval=0.1)

    def _answers(self) -> bool:
        import psycopg

        assert self.proc is not None and self.proc.poll() is None, self.log()
        try:
            with psycopg.connect(
                f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
            ) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname='batches'"
                ).fetchone()
                if not exists:
                    conn.execute("CREATE DATABASE batches")
            return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Gone at once (an immediate shutdown, as a crash or a lost network looks)."""
        if self.proc is not None and self.proc.poll() is None:
            # pg_ctl's immediate mode signals the postmaster itself and waits for it to be
            # gone; a signal to `runuser` reached it as a smart shutdown, which waits for
            # the replicas' connections to end, and the next start found its lock file.
            subprocess.run(
                [*_as_user(), pg_bin("pg_ctl"), "stop", "-D", str(self.workdir / "data"),
                 "-m", "immediate", "-w", "-t", "30"],
                capture_output=True,
            )  # fmt: skip
            self.proc.wait(30)

    def log(self) -> str:
        path = self.workdir / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def postgres() -> Iterator[PostgresServer]:
    """A fresh PostgreSQL in a folder of its own (under /tmp: pytest's folders are private
    to root, and the server runs as `postgres`), removed afterwards."""
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="avito-postgres-")))
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
