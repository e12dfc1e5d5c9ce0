"""Engine processes, supervised, with a stand-in for vLLM: this service itself (the OpenAI
API on the embedded model) started as the child through AVIBE_BACKEND=command. vLLM and
SGLang cannot run on these machines; their command lines are checked in
tests/unit/test_engine_processes.py."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.servers import (
    ServerProcess,
    dev_server,
    exited,
    gunicorn_server,
    openai_client,
    wait_workers,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

STAND_IN = {
    "AVIBE_BACKEND": "command",
    # The child gets none of our settings (it would configure itself like its parent):
    # its own go on its command line.
    "AVIBE_ENGINE_COMMAND": "env RATE_LIMIT_PER_MINUTE=100000 RATE_LIMIT_PER_HOUR=100000 "
    "{python} -m avito_ai serve --host 127.0.0.1 --port {port}",
    "AVIBE_ENGINE_HEALTH_PATH": "/api/health/ready",
    "RATE_LIMIT_PER_MINUTE": "100000",
    "RATE_LIMIT_PER_HOUR": "100000",
    "ENGINE_STOP_TIMEOUT": "10",
}
# The same stand-in on the fake engine (the service's own answers, no model to load) where
# what is tested is the supervision, not the answers.
FAKE_ENGINE_COMMAND = (
    "env AVIBE_BACKEND=fake {delay}RATE_LIMIT_PER_MINUTE=100000 RATE_LIMIT_PER_HOUR=100000 "
    "{{python}} -m avito_ai serve --host 127.0.0.1 --port {{port}}"
)
CHAT = {
    "model": "avibe",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}


def engine_pid(srv: ServerProcess) -> int | None:
    """The engine's pid, as /api/metrics reports it (health shows no pid)."""
    engines = httpx.get(srv.url + "/api/metrics").json().get("engines", {})
    pid = engines.get("avibe", {}).get("pid")
    return int(pid) if pid else None


def wait_ready(srv: ServerProcess, timeout: float = 90) -> list[str]:
    """Readiness until 200; the engine states it reported meanwhile."""
    seen: list[str] = []

    def ready() -> bool:
        r = httpx.get(srv.url + "/api/health/ready")
        if r.status_code == 200:
            return True
        reason = r.json()["models"]["avibe"]["reason"] or ""
        if not seen or seen[-1] != reason:
            seen.append(reason)
        return False

    wait_until(
        ready,
        timeout,
        lambda: f"ready; saw {seen}\n{srv.output()[-3000:]}",
        ignoring=(httpx.TimeoutException,),  # a probe answered late: not ready yet
    )
    return seen


def gone(pid: int, within: float = 15) -> bool:
    """True once process `pid` has exited; an AssertionError if it lives on past `within`."""
    return wait_until(lambda: exited(pid), within, f"process {pid} exited")


def stand_ins(port: int) -> list[psutil.Process]:
    """Every process running the stand-in engine on this port."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "avito_ai" in cmdline and str(port) in cmdline and "serve" in cmdline:
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = dev_server(STAND_IN, tmp_path_factory.mktemp("engines") / "server.log")
    try:
        srv.wait_live()
        yield srv
    finally:
        srv.stop()


def test_readiness_waits_for_the_engine_then_requests_go_through_it(dev: ServerProcess) -> None:
    seen = wait_ready(dev)
    assert seen and all(s.startswith("command engine ") for s in seen), seen
    assert any(s in ("command engine starting", "command engine loading weights") for s in seen)
    answer = openai_client(dev).chat.completions.create(**CHAT, max_tokens=16, temperature=0)
    assert "Paris" in (answer.choices[0].message.content or "")
    assert engine_pid(dev) is not None


def test_health_shows_states_not_pids_ports_or_paths(dev: ServerProcess) -> None:
    wait_ready(dev)
    pid, port = engine_pid(dev), httpx.get(dev.url + "/api/metrics").json()["engines"]
    port = port["avibe"]["port"]
    assert pid and port
    for path in ("/api/health", "/api/health/ready", "/api/health/models"):
        text = httpx.get(dev.url + path).text
        assert str(pid) not in text and f":{port}" not in text and "127.0.0.1" not in text
        assert '"ready"' in text
    assert f"pid {pid} on 127.0.0.1:{port}" in dev.output()  # the log has them


def test_engine_output_goes_to_the_service_log_line_by_line(dev: ServerProcess) -> None:
    log = dev.output()
    assert re.search(r"avito_ai\.engine: \[avibe command\] .*Uvicorn running on", log), log[-2000:]
    assert "[avibe command] engine ready" in log


def test_metrics_include_the_engines_own_figures(dev: ServerProcess) -> None:
    openai_client(dev).chat.completions.create(**CHAT, max_tokens=4)
    prometheus = httpx.get(dev.url + "/metrics").text
    assert 'avito_engine_up{engine="command",model="avibe"} 1.0' in prometheus
    assert 'avito_engine_requests_running{engine="command",model="avibe"} 0.0' in prometheus
    engines = httpx.get(dev.url + "/api/metrics").json()["engines"]
    assert engines["avibe"]["state"] == "ready" and engines["avibe"]["waiting"] == 0


def test_a_killed_engine_is_restarted_and_requests_fail_fast_meanwhile(dev: ServerProcess) -> None:
    old = engine_pid(dev)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    refusals: list[httpx.Response] = []
    took: list[float] = []

    def back_after_refusals() -> bool:
        started = time.monotonic()
        r = httpx.post(dev.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 4}, timeout=30)
        took.append(time.monotonic() - started)
        if r.status_code == 503:
            refusals.append(r)
        return r.status_code == 200 and bool(refusals)

    wait_until(back_after_refusals, 90, "refusals, then the engine back", interval=0.2)
    assert refusals, "the engine came back before any request saw it down"
    assert all(r.json()["error"]["code"] == "model_unavailable" for r in refusals)
    assert all(int(r.headers["retry-after"]) >= 1 for r in refusals)
    assert max(took[: len(refusals)]) < 2.0, took  # fast: no request waited for the engine
    new = engine_pid(dev)
    assert new is not None and new != old and gone(old)
    assert re.search(r"\[avibe command\] killed by SIGKILL after \d+ s; restarting", dev.output())


def test_sigterm_drains_the_service_first_then_stops_the_engine(dev: ServerProcess) -> None:
    pid = engine_pid(dev)
    assert pid is not None
    chunks: list[str] = []
    finish: list[str | None] = []

    def stream() -> None:
        body = {**CHAT, "messages": [{"role": "user", "content": "Tell me a long story."}]}
        for chunk in openai_client(dev).chat.completions.create(
            **body, max_tokens=120, stream=True, extra_body={"ignore_eos": True}
        ):
            if chunk.choices:
                chunks.append(chunk.choices[0].delta.content or "")
                if chunk.choices[0].finish_reason:
                    finish.append(chunk.choices[0].finish_reason)

    reader = threading.Thread(target=stream)
    reader.start()
    wait_until(lambda: chunks, 30, "the stream's first chunk", interval=0.02)
    dev.signal(signal.SIGTERM)
    reader.join(60)
    assert finish == ["length"], (finish, len(chunks))  # the stream in flight completed
    assert dev.proc.wait(30) == 0
    assert gone(pid), "the engine outlived the service"
    log = dev.output()
    assert log.index(f"Finished server process [{dev.proc.pid}]") < log.index(
        "[avibe command] stopping"
    )


def test_one_engine_for_all_gunicorn_workers_and_it_survives_a_reload(tmp_path: Path) -> None:
    env: dict[str, Any] = {
        **STAND_IN,
        "AVIBE_ENGINE_COMMAND": FAKE_ENGINE_COMMAND.format(delay=""),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    srv = gunicorn_server(env, tmp_path / "server.log", workers=2)
    try:
        srv.wait_live()
        wait_ready(srv)
        wait_workers(srv, 2)
        pid = engine_pid(srv)
        assert pid is not None
        port = int(re.findall(r"\[avibe command\] starting on 127\.0\.0\.1:(\d+)", srv.output())[0])
        assert [p.pid for p in stand_ins(port)] == [pid]
        assert psutil.Process(pid).ppid() == srv.proc.pid  # the master's child

        def answers() -> set[int]:
            codes = set()
            for _ in range(6):  # own connections: both workers answer
                r = httpx.post(
                    srv.url + "/v1/chat/completions",
                    json={**CHAT, "max_tokens": 4},
                    headers={"Connection": "close"},
                    timeout=30,
                )
                codes.add(r.status_code)
            return codes

        assert answers() == {200}
        booted = len(wait_workers(srv, 0))
        srv.signal(signal.SIGHUP)
        wait_workers(srv, booted + 2)
        wait_ready(srv)
        assert engine_pid(srv) == pid and [p.pid for p in stand_ins(port)] == [pid]
        assert answers() == {200}
        srv.signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0
        assert gone(pid)
    finally:
        srv.stop()


STUBBORN_ENGINE = """
import http.server, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # an engine that does not stop when asked
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
print("serving", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def test_an_engine_deaf_to_sigterm_is_killed_after_the_stop_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from avito_ai.engines.process.supervisor import EngineRecord, EngineSupervisor
    from tests.conftest import isolated_settings

    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN_ENGINE)
    settings = isolated_settings(
        avibe_backend="command",
        avibe_engine_command=f"{{python}} {script} {{port}}",
        engine_stop_timeout=1.0,
    )
    supervisor = EngineSupervisor("avibe", settings, tmp_path)
    supervisor.start()
    wait_until(lambda: supervisor.state.state == "ready", 20, "the engine ready")
    pid = supervisor.state.pid
    assert pid is not None
    started = time.monotonic()
    with caplog.at_level("INFO", logger="avito_ai.engine"):
        supervisor.stop()
    assert 1.0 <= time.monotonic() - started < 10
    assert gone(pid, within=2)
    assert "did not stop in 1 s: SIGKILL" in caplog.text
    record = EngineRecord.read(tmp_path / "engine-avibe.json")
    assert record is not None and record.state == "stopped"


def test_an_engine_that_cannot_start_reads_as_crashed_not_loading(tmp_path: Path) -> None:
    from avito_ai.engines.process.supervisor import EngineSupervisor
    from tests.conftest import isolated_settings

    settings = isolated_settings(
        avibe_backend="vllm", avibe_model="m", vllm_command=str(tmp_path / "no-such-vllm")
    )
    supervisor = EngineSupervisor("avibe", settings, tmp_path)
    supervisor.start()
    try:
        wait_until(lambda: supervisor.state.state == "crashed", 5, "crashed", interval=0.02)
        assert "could not start" in str(supervisor.state.reason)
    finally:
        supervisor.stop()


class Restartable:
    """A dev server started when a test first asks for it, and again if a test has
    stopped it (so the tests that stop it may share it with those before them)."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.srv: ServerProcess | None = None
        self.starts = 0

    def get(self) -> ServerProcess:
        if self.srv is None or self.srv.proc.poll() is not None:
            if self.srv is not None:
                self.srv.stop()  # (its log closed)
            self.starts += 1
            self.srv = dev_server(self.env, self.tmp / f"server-{self.starts}.log")
            self.srv.wait_live()
        return self.srv


@pytest.fixture(scope="module")
def fake_stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restartable]:
    """The dev server supervising the fake stand-in (0.1 s a token), its upstream and health
    timeouts short: the frozen engine's test, then the killed service's."""
    env = {
        **STAND_IN,
        "AVIBE_ENGINE_COMMAND": FAKE_ENGINE_COMMAND.format(delay="FAKE_TOKEN_DELAY=0.1 "),
        "UPSTREAM_READ_TIMEOUT": "2",
        "ENGINE_UNHEALTHY_TIMEOUT": "3",
        "REQUEST_TIMEOUT": "60",
    }
    shared = Restartable(env, tmp_path_factory.mktemp("fake-stand-in"))
    try:
        yield shared
    finally:
        if shared.srv is not None:
            shared.srv.stop()


def test_a_frozen_engine_is_killed_and_restarted_and_its_stream_ends_cleanly(
    fake_stand_in: Restartable,
) -> None:
    """SIGSTOP: the process lives but answers nothing. The stream in flight ends with an
    error event once no token came for UPSTREAM_READ_TIMEOUT (not at REQUEST_TIMEOUT),
    and after ENGINE_UNHEALTHY_TIMEOUT the supervisor kills it and starts a new one."""
    srv = fake_stand_in.get()
    frozen: int | None = None
    try:
        wait_ready(srv)
        frozen = engine_pid(srv)
        assert frozen is not None
        started = time.monotonic()
        events: list[dict[str, Any]] = []
        with httpx.stream(
            "POST",
            srv.url + "/v1/chat/completions",
            json={**CHAT, "max_tokens": 200, "stream": True, "ignore_eos": True},
            timeout=60,
        ) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                events.append(json.loads(line[6:]))
                if len(events) == 3:
                    os.kill(frozen, signal.SIGSTOP)
        took = time.monotonic() - started
        assert "error" in events[-1], events[-1]
        assert events[-1]["error"]["code"] == "timeout"
        assert took < 15, took  # UPSTREAM_READ_TIMEOUT, far from REQUEST_TIMEOUT
        wait_until(
            lambda: engine_pid(srv) not in (frozen, None),
            60,
            lambda: f"a new engine\n{srv.output()[-3000:]}",
            interval=0.2,
        )
        assert gone(frozen)
        wait_ready(srv)
        answer = openai_client(srv).chat.completions.create(**CHAT, max_tokens=3)
        assert answer.choices[0].finish_reason == "length"
        assert "not answered its health checks" in srv.output()
        assert re.search(r"engine crashed: not responding for \d+ s, killed", srv.output())
    finally:
        if frozen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGKILL)


def test_a_killed_service_takes_its_engine_with_it(fake_stand_in: Restartable) -> None:
    srv = fake_stand_in.get()
    wait_ready(srv)
    pid = engine_pid(srv)
    assert pid is not None
    srv.proc.kill()  # SIGKILL: no handler runs; the kernel's parent-death signal does
    assert gone(pid), "orphaned engine"
