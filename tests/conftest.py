"""Shared fixtures. The fake engine serves API tests; real models are loaded once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from avito_ai.config import Settings, env_names
from avito_ai.engines.base import Engine, NotConfiguredEngine, Role
from avito_ai.engines.fake import FakeEngine
from avito_ai.engines.process.engine import ProcessEngine
from avito_ai.engines.registry import AVISION_HINT
from avito_ai.engines.remote.upstreams import RemoteConfig
from tests.ggufs import THINKING_TEMPLATE, with_chat_template
from tests.servers import ServerProcess, dev_server, serving
from tests.waiting import wait_until

# Tests never talk to a model hub (server processes they start inherit this too).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Nor do they share the user's Batch API database (~/.cache/avito-ai/batches.sqlite3): this
# session's apps and servers keep their batches in a file of its own, unless a test names one.
if "BATCH_DATABASE_URL" not in os.environ:
    _BATCHES = tempfile.mkdtemp(prefix="avito-batches-")
    atexit.register(shutil.rmtree, _BATCHES, True)
    os.environ["BATCH_DATABASE_URL"] = f"sqlite:///{_BATCHES}/batches.sqlite3"


# `make test` runs the suite on two workers (pytest-xdist, --dist loadfile: a file to a
# worker), which take files in collection order: the longest go first, so that none of them
# starts last and keeps one worker busy alone at the end. A file's length is its time in
# the last run that ran it whole (kept in .pytest_cache); a file never measured counts as
# long if it is marked `integration` (it starts servers or loads models), as short if not.
DURATIONS_KEY = "avito/file_durations"
UNMEASURED_INTEGRATION_S = 60.0
_measured: dict[str, float] = {}


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    known: dict[str, float] = cache.get(DURATIONS_KEY, {}) if cache else {}
    heavy = {_file_of(item.nodeid) for item in items if item.get_closest_marker("integration")}

    def length(item: pytest.Item) -> float:
        file = _file_of(item.nodeid)
        return known.get(file, UNMEASURED_INTEGRATION_S if file in heavy else 0.0)

    items.sort(key=length, reverse=True)  # stable: a file's tests stay together, in order


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    file = _file_of(report.nodeid)
    _measured[file] = _measured.get(file, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Keep each file's time (setup, call and teardown of its tests) for the next run's
    order, from the process that saw every file (xdist's controller, or the only one),
    unless tests were picked from inside files (-k, -m, file::test): then files ran part."""
    config = session.config
    cache = getattr(config, "cache", None)
    if hasattr(config, "workerinput") or cache is None or not _measured:
        return
    args = config.invocation_params.args
    if config.option.keyword or config.option.markexpr or any("::" in str(a) for a in args):
        return
    known: dict[str, float] = cache.get(DURATIONS_KEY, {})
    known.update({file: round(seconds, 1) for file, seconds in _measured.items()})
    cache.set(DURATIONS_KEY, known)


SETTINGS_VARS = env_names()


def isolated_settings(**values: Any) -> Settings:
    """Settings from the values given and the defaults only: no .env, no environment."""
    return Settings.given(**values)


def remote_config(settings: Settings, role: Role = "avibe") -> RemoteConfig:
    """The remote backend's configuration of `role`, as the registry builds it."""
    engines = settings.engines
    return RemoteConfig.of(engines.role(role), engines.remote, engines.avision.max_pixels)


def process_engine(settings: Settings, role: Role = "avibe") -> ProcessEngine:
    """What a worker serves `role` through when it runs in an engine process."""
    engines = settings.engines
    return ProcessEngine(engines.role(role), engines.process, remote_config(settings, role))


def engine_set(
    avibe: Engine | None = None, avision: Engine | None = None, **fake: Any
) -> dict[Role, Engine]:
    """The engines of an API test: a fake A-Vibe (`fake` are its options) and, unless
    given, an A-Vision that is not configured (as with AVISION_MODEL unset)."""
    return {
        "avibe": avibe or FakeEngine("avibe", **fake),
        "avision": avision or NotConfiguredEngine("avision", AVISION_HINT),
    }


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    return isolated_settings


@pytest.fixture
def fake_engines() -> Callable[..., dict[Role, Engine]]:
    return engine_set


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """No service variable in this process's environment; returns the rest (for children)."""
    for name in list(os.environ):
        if name.upper() in SETTINGS_VARS:
            monkeypatch.delenv(name)
    return dict(os.environ)


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def uri(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def start(self) -> None:
        self.proc = _spawn_redis(self.port, self.workdir)


def _spawn_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    import redis

    proc = subprocess.Popen(
        [
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    try:
        wait_until(client.ping, 10, "redis-server answers PING", ignoring=(redis.ConnectionError,))
    except AssertionError:
        proc.kill()
        raise RuntimeError("redis-server did not start") from None
    return proc


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """A real Redis on a free loopback port for this test session (`make test` installs it)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    from tests.servers import free_port

    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    server = RedisServer(port, _spawn_redis(port, workdir), workdir)
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ shared servers

# The embedded model on OpenVINO behind a dev server, started once for the session and
# shared by the modules that only ask it questions (test_openvino_server.py,
# test_structured_output_servers.py, test_tools_servers.py): limits raised so no test is
# refused for its size or its count; servers with settings of their own (one slot, a bad
# model) are started by their modules.
EMBEDDED_OPEN = {
    # Room for CI's two test workers on two cores: a grammar check (the probe runs at a low
    # priority) and the serving step's compile of it can take minutes there, not seconds.
    "REQUEST_TIMEOUT": "300",
    "RATE_LIMIT_PER_MINUTE": "100000",
    "RATE_LIMIT_PER_HOUR": "100000",
    "MAX_TOKENS_AVIBE": "4000",
    "MAX_PROMPT_LENGTH": "200000",
    "MAX_PROMPT_TOKENS": "100000",
}


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedded SmolLM2 on OpenVINO (8 sequences a batch), limits raised."""
    log = tmp_path_factory.mktemp("embedded") / "server.log"
    with serving(dev_server({**EMBEDDED_OPEN, "MAX_BATCH_SIZE": "8"}, log), 120) as srv:
        yield srv


@pytest.fixture(scope="session")
def thinking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedded model with tests/ggufs.py's THINKING_TEMPLATE (thinking off opens a
    `<think>` block in the prompt), on OpenVINO, limits raised."""
    tmp = tmp_path_factory.mktemp("thinking")
    model = with_chat_template(tmp / "thinking.gguf", THINKING_TEMPLATE)
    env = {**EMBEDDED_OPEN, "AVIBE_MODEL": str(model)}
    with serving(dev_server(env, tmp / "server.log"), 120) as srv:
        yield srv
