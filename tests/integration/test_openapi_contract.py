"""The OpenAPI document says what the server answers: schemathesis, every check, fixed seed.

Runs the `st` CLI (configured by schemathesis.toml at the project root: seed, examples per
operation, and the two scoped exceptions it explains) against a real server with both
roles on the fake engine, so every operation is reachable. Failures print schemathesis's
own report, with a curl line per failing case.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import BIN, ROOT, ServerProcess, dev_server, serving

pytestmark = pytest.mark.integration

ENV = {
    "AVIBE_BACKEND": "fake",
    "AVISION_BACKEND": "fake",
    "AVISION_MODEL": "fake",
    "RATE_LIMIT_PER_MINUTE": "1000000",
    "RATE_LIMIT_PER_HOUR": "1000000",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("contract")
    env = {**ENV, "BATCH_DATABASE_URL": f"sqlite:///{folder / 'batches.sqlite3'}"}
    with serving(dev_server(env, folder / "server.log")) as srv:
        yield srv


def test_schemathesis_finds_no_mismatch(server: ServerProcess, tmp_path) -> None:
    run = subprocess.run(
        [
            str(BIN / "st"),
            "run",
            f"{server.url}/openapi.json",
            "--no-color",
            "--workers",
            "1",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-20000:]
    assert "Configuration:    " in report and "schemathesis.toml" in report
    operations = sum(
        method in {"get", "post", "put", "patch", "delete"}
        for path in httpx.get(f"{server.url}/openapi.json", timeout=10).json()["paths"].values()
        for method in path
    )
    assert " passed" in report and f"{operations} selected / {operations} total" in report
    assert "Unresolvable references" not in report
    assert server.proc.poll() is None, server.output()[-5000:]
