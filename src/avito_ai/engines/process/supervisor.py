"""Starts and watches the engine servers, one per role and host.

It runs in the process that outlives worker reloads: the gunicorn master (gunicorn_config.py
hooks) or the development server (`avito-ai serve`), never in a worker, so a HUP reload
keeps the engines running. Per engine, one thread:

* spawns the command (commands.py) in its own process group, with the parent-death signal
  set: if this process dies, even by SIGKILL, the kernel sends the engine SIGTERM;
* forwards its output to the service log line by line, prefixed `[avibe vllm]`;
* probes its health endpoint; the state goes starting → loading weights → ready;
* on exit: crashed, then restarting after a backoff (1 s doubling to 30 s, back to 1 s
  once an engine ran a minute); an engine that refused its command line (exit 2 and an
  `error:` line, before it was ever ready) is `failed` with that line and the setting the
  flag came from, and is not restarted: the same flags would be refused again;
* writes the state to `<ENGINE_STATE_DIR>/engine-<role>.json` (atomically) for the
  workers, which answer readiness and requests from it (engine.py).

On stop (after the service drained its own requests): SIGTERM to the engine's process
group, SIGKILL after ENGINE_STOP_TIMEOUT.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from avito_ai.config import ConfigError, EngineSettings, ProcessSettings, Role, env_names
from avito_ai.engines.process.commands import (
    CHILD_MARKER,
    EngineSpec,
    child_environment,
    engine_spec,
    origin_of,
)

logger = logging.getLogger("avito_ai.engine")

STATE_DIR_VAR = "ENGINE_STATE_DIR"
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # an engine that ran this long restarts after the first backoff again
PROBE_EVERY_S = 0.5  # until ready
PROBE_READY_EVERY_S = 2.0  # then
EXIT_CHECK_EVERY_S = 0.1  # a crash shows in the state within this
MISSES_BEFORE_DOWN = 3  # failed health checks in a row before a ready engine is "not responding"
# Log lines that mean the engine is reading its weights (vLLM, SGLang, transformers).
WEIGHTS = re.compile(
    r"load(ing)?[ _](model[ _])?weights|safetensors checkpoint|checkpoint shards|"
    r"load weight begin|Loading model",
    re.IGNORECASE,
)
PR_SET_PDEATHSIG = 1
# A refused command line: argparse's exit status and its `<prog>: error: <what>` line
# (vLLM's and SGLang's parsers both). Not restarted: the next start would be refused too.
USAGE_EXIT = 2
USAGE_LINE = re.compile(r"(^|\s|:)error: ", re.IGNORECASE)

# An engine is spawned from a thread of the gunicorn master, which forks workers from its main
# thread. A worker forked while Popen runs inherits Popen's pipes: Popen then waits for its
# error pipe to close at the engine's exec, and the worker holds it open until it exits (a
# CI run saw the engine up, the spawn stuck and "starting" for 90 s, freed by the SIGTERM
# that ended the workers). So a spawn and a fork in this process exclude each other.
SPAWNING = threading.RLock()  # re-entrant: Popen's own fork (preexec_fn) runs the hooks
os.register_at_fork(
    before=SPAWNING.acquire,
    after_in_parent=SPAWNING.release,
    after_in_child=SPAWNING.release,
)


@dataclass
class EngineRecord:
    """What the workers read. `state`: starting, loading weights, ready, not responding,
    crashed, restarting, failed (its command line refused: not restarted), stopped."""

    role: str
    kind: str
    state: str
    port: int
    served_model: str | None
    pid: int | None = None
    restarts: int = 0
    since: float = 0.0
    reason: str | None = None
    retry_after: int | None = None
    metrics_path: str = "/metrics"

    @classmethod
    def read(cls, path: Path) -> EngineRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


_MADE_FOLDERS: list[Path] = []


def state_dir(settings: ProcessSettings) -> Path:
    """ENGINE_STATE_DIR, or a fresh folder; exported to this process's environment so the
    workers forked from it (and their settings) find the same one."""
    folder = settings.engine_state_dir
    if folder is None:  # ours: removed again when the engines stop
        folder = Path(tempfile.mkdtemp(prefix="avito-ai-engines-"))
        _MADE_FOLDERS.append(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[STATE_DIR_VAR] = str(folder)
    return folder


def state_path(folder: Path, role: Role) -> Path:
    return folder / f"engine-{role}.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_libc: ctypes.CDLL | None = None
with contextlib.suppress(OSError):
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EngineSupervisor:
    def __init__(self, role: Role, settings: EngineSettings, folder: Path) -> None:
        self.role: Role = role
        self.settings = settings.process
        port = settings.role(role).engine_port or free_port()
        self.spec: EngineSpec = engine_spec(role, settings, port)
        self.path = state_path(folder, role)
        self.prefix = f"[{role} {self.spec.kind}]"
        self.state = EngineRecord(
            role,
            self.spec.kind,
            "starting",
            port,
            self.spec.served_model,
            since=time.time(),
            metrics_path=self.spec.metrics_path,
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._killed: str | None = None  # why the supervisor killed the last one
        self._stopping = threading.Event()
        self._tail: deque[str] = deque(maxlen=20)
        self._ever_ready = False  # a usage error can only come before the first ready
        self._pumping: threading.Thread | None = None
        self._thread = threading.Thread(target=self._run, name=f"engine-{role}", daemon=True)
        self._lock = threading.Lock()

    # --- state -------------------------------------------------------------------------

    def _set(self, state: str, **fields: object) -> None:
        with self._lock:
            changed = state != self.state.state
            self.state.state = state
            self.state.reason = None
            self.state.retry_after = None
            for name, value in fields.items():
                setattr(self.state, name, value)
            if changed:
                self.state.since = time.time()
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(self.state)))
            os.replace(tmp, self.path)
        if changed:
            logger.info(
                "%s engine %s%s",
                self.prefix,
                state,
                f": {fields['reason']}" if fields.get("reason") else "",
            )

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._set("starting")
        logger.info(
            "%s starting on 127.0.0.1:%d: %s", self.prefix, self.spec.port, " ".join(self.spec.argv)
        )
        self._thread.start()

    def stop(self) -> None:
        """SIGTERM to the engine's process group, SIGKILL after ENGINE_STOP_TIMEOUT."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            logger.info("%s stopping (pid %d)", self.prefix, proc.pid)
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(self.settings.engine_stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s did not stop in %.0f s: SIGKILL",
                    self.prefix,
                    self.settings.engine_stop_timeout,
                )
                self._signal(proc, signal.SIGKILL)
                proc.wait()
        self._thread.join(timeout=5)
        self._set("stopped", pid=None)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # the engine and the processes it started
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)

    def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                proc = self._spawn()
            except OSError as exc:  # the executable is missing, say: that is a crash too
                code, ran = None, 0.0
                self._tail.append(f"could not start {self.spec.argv[0]}: {exc}")
            else:
                code = self._watch(proc)
                ran = time.monotonic() - started
            if self._stopping.is_set():
                return
            refused = self._usage_error(code)
            if refused is not None:  # the same command line would be refused again
                self._fail(code, refused)
                return
            if ran >= STABLE_AFTER_S:
                backoff = BACKOFF_FIRST_S
            self.state.restarts += 1
            how, self._killed = self._killed or _exit_wording(code), None
            self._set(
                "crashed",
                pid=None,
                reason=f"{how} after {ran:.0f} s; restarting in {backoff:.0f} s",
                retry_after=max(1, round(backoff)),
            )
            logger.error(
                "%s %s after %.0f s; restarting in %.0f s. Its last lines:\n%s",
                self.prefix,
                how,
                ran,
                backoff,
                "\n".join(self._tail) or "(no output)",
            )
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _usage_error(self, code: int | None) -> str | None:
        """The engine's own error line when it refused its command line: vLLM and SGLang
        (argparse) exit 2 with `<prog>: error: ...` before they load anything."""
        if code != USAGE_EXIT or self._ever_ready:
            return None
        if self._pumping is not None:  # its last lines (the error) may still be in the pipe
            self._pumping.join(timeout=2)
        return usage_error_line(list(self._tail))

    def _fail(self, code: int | None, line: str) -> None:
        origin = origin_of(self.spec, line)
        self._set("failed", pid=None, reason=f"{line} ({origin})", retry_after=None)
        logger.error(
            "%s refused its command line (%s) and is not restarted: %s. The flag: %s; "
            "fix that setting and restart the service. Its command line: %s. Its last "
            "lines:\n%s",
            self.prefix,
            _exit_wording(code),
            line,
            origin,
            shlex.join(self.spec.argv),
            "\n".join(self._tail),
        )

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._tail.clear()
        env = child_environment(env_names(), self.spec.environment)
        with SPAWNING:
            proc = subprocess.Popen(
                self.spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stopped as a whole
                preexec_fn=_die_with_parent,  # one prctl call between fork and exec
            )
        self._proc = proc
        logger.info("%s pid %d on 127.0.0.1:%d", self.prefix, proc.pid, self.spec.port)
        self._set("restarting" if self.state.restarts else "starting", pid=proc.pid)
        assert proc.stdout is not None
        self._pumping = threading.Thread(
            target=self._pump, args=(proc.stdout,), name=f"engine-{self.role}-log", daemon=True
        )
        self._pumping.start()
        return proc

    def _pump(self, stream: IO[bytes]) -> None:
        """The engine's output into our log, one line at a time."""
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            self._tail.append(line[:300])
            logger.info("%s %s", self.prefix, line)
            if WEIGHTS.search(line) and self.state.state in ("starting", "restarting"):
                self._set("loading weights")
        stream.close()

    def _watch(self, proc: subprocess.Popen[bytes]) -> int | None:
        """Until the engine exits: its state from its health endpoint. Its exit code.

        An engine that was ready and has not answered its health checks for
        ENGINE_UNHEALTHY_TIMEOUT is killed (SIGKILL: a frozen process, SIGSTOPped or
        deadlocked, takes no SIGTERM) and so restarted like a crashed one; left alone it
        stayed "not responding" for ever with the same pid."""
        next_probe = 0.0
        misses = 0
        unhealthy_since: float | None = None
        while True:
            code = proc.poll()
            if code is not None:
                return code
            if self._stopping.is_set():
                return None
            if time.monotonic() >= next_probe:
                current = self.state.state
                # A busy engine may answer its health check slowly: give it time once ready,
                # and several misses before calling it down.
                probed = time.monotonic()
                healthy = self._healthy(timeout=5.0 if current == "ready" else 2.0)
                misses = 0 if healthy else misses + 1
                if healthy:
                    unhealthy_since = None
                    self._ever_ready = True
                    if current != "ready":
                        self._set("ready")
                elif current in ("ready", "not responding"):
                    unhealthy_since = unhealthy_since or probed
                    silent = time.monotonic() - unhealthy_since
                    if silent >= self.settings.engine_unhealthy_timeout:
                        return self._kill_unresponsive(proc, silent)
                    if current == "ready" and misses >= MISSES_BEFORE_DOWN:
                        self._set(
                            "not responding", reason="its health endpoint stopped answering 200"
                        )
                elif healthy is False and current in ("starting", "restarting"):
                    self._set("loading weights")  # listening, not serving yet
                wait = PROBE_READY_EVERY_S if healthy else PROBE_EVERY_S
                next_probe = time.monotonic() + wait
            self._stopping.wait(EXIT_CHECK_EVERY_S)

    def _kill_unresponsive(self, proc: subprocess.Popen[bytes], silent: float) -> int | None:
        logger.error(
            "%s has not answered its health checks for %.0f s (ENGINE_UNHEALTHY_TIMEOUT): "
            "SIGKILL to pid %d, then a restart",
            self.prefix,
            silent,
            proc.pid,
        )
        self._tail.append(f"not responding for {silent:.0f} s: killed")
        self._signal(proc, signal.SIGKILL)
        proc.wait()
        self._killed = f"not responding for {silent:.0f} s, killed"
        return proc.returncode

    def _healthy(self, timeout: float) -> bool | None:
        """True: 200; False: it answers something else; None: nothing listens yet."""
        connection = http.client.HTTPConnection("127.0.0.1", self.spec.port, timeout=timeout)
        try:
            connection.request("GET", self.spec.health_path)
            return connection.getresponse().status == 200
        except (ConnectionRefusedError, TimeoutError):
            return None
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()


def usage_error_line(tail: list[str]) -> str | None:
    """The parser's `error:` line, with the lines that continue it (vLLM's pydantic
    message: `argument --x: 1 validation error for ...`, then the reason), or None."""
    found = [i for i, line in enumerate(tail) if USAGE_LINE.search(line)]
    if not found:
        return None
    first = found[-1]
    said = [tail[first].strip()]
    for line in tail[first + 1 : first + 3]:
        if not line.startswith((" ", "\t")) or "errors.pydantic.dev" in line:
            break
        said.append(line.strip().split(" [type=", 1)[0])
    return " ".join(said)


def _exit_wording(code: int | None) -> str:
    if code is None:
        return "could not start"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


_SUPERVISORS: list[EngineSupervisor] = []


def start_engine_processes(settings: EngineSettings) -> Path | None:
    """Start an engine per role that asks for one; the folder of their states (None: no
    role asked). Idempotent: a second call (a reloaded config) starts nothing."""
    roles = settings.engine_processes()
    if not roles:
        return None
    if _SUPERVISORS:
        return _SUPERVISORS[0].path.parent
    if os.environ.get(CHILD_MARKER):
        raise ConfigError(
            "this service runs as an engine of another one and may not start engines itself: "
            f"unset {', '.join(r.upper() + '_BACKEND' for r in roles)} in its environment or .env"
        )
    folder = state_dir(settings.process)
    for role in roles:
        supervisor = EngineSupervisor(role, settings, folder)
        supervisor.start()
        _SUPERVISORS.append(supervisor)
    return folder


def stop_engine_processes() -> None:
    while _SUPERVISORS:
        _SUPERVISORS.pop().stop()
    while _MADE_FOLDERS:  # a fresh folder per start would otherwise pile up in /tmp
        shutil.rmtree(_MADE_FOLDERS.pop(), ignore_errors=True)
