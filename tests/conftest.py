"""Shared fixtures. The fake engine serves API tests; real models are loaded once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
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


# `make test` runs the suite on two workers (pytest-xdist, a file to a worker), which take
# files in collection order: the longest first, so that none of them starts last and keeps
# one worker busy alone at the end. (Seconds on this project's 2-core machine.)
LONGEST_FIRST = (
    "test_web_console.py",  # ~100 s: a browser, several servers
    "test_structured_output_servers.py",
    "test_openvino_vision.py",
    "test_remote_backend.py",
    "test_engine_processes.py",
    "test_openvino_server.py",
    "test_openapi_contract.py",
    "test_anthropic_sdk.py",
    "test_responses_sdk.py",
    "test_tools_servers.py",
    "test_long_answers.py",
    "test_text_engine.py",
    "test_slow_clients.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


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
