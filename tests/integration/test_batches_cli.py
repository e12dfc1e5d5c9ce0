"""`avito-ai batch FILE.jsonl -o OUT.jsonl`: submits to a running service, shows progress,
survives Ctrl+C (run again, it reattaches to the same batch) and writes the output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.batch_helpers import chat_line, jsonl
from tests.servers import BIN, ServerProcess, dev_server, serving
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("batch-cli")
    env = {
        "AVIBE_BACKEND": "fake",
        "FAKE_TOKEN_DELAY": "0.03",
        "RATE_LIMIT_PER_MINUTE": "1000",
        "BATCH_DATABASE_URL": f"sqlite:///{folder / 'batches.sqlite3'}",
        "BATCH_LINES_IN_FLIGHT": "2",
    }
    with serving(dev_server(env, folder / "server.log")) as srv:
        yield srv


def command(server: ServerProcess, home: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HOME": str(home), "AVITO_AI_URL": server.url}
    return subprocess.Popen(
        [str(BIN / "avito-ai"), "batch", *args],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_interrupted_and_rerun_it_reattaches_and_writes_the_output(
    server: ServerProcess, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([chat_line(f"c{i}", max_tokens=10) for i in range(16)]))
    out = tmp_path / "out.jsonl"
    first = command(server, tmp_path, str(source), "-o", str(out))
    batches = lambda: httpx.get(server.url + "/v1/batches").json()["data"]  # noqa: E731
    started = wait_until(lambda: batches(), 60, "the command created its batch")
    first.send_signal(signal.SIGINT)  # Ctrl+C
    _, said = first.communicate(timeout=30)
    assert first.returncode == 130, said
    assert "run the same command again" in said and not out.exists()

    second = command(server, tmp_path, str(source), "-o", str(out))
    _, said = second.communicate(timeout=240)
    assert second.returncode == 0, said
    assert f"batch {started[0]['id']} reattached" in said
    assert "16 done, 0 failed" in said
    assert len(batches()) == 1  # the same batch, not a second one
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(f"c{i}" for i in range(16))


def test_stopped_before_it_noted_its_batch_a_rerun_still_finds_it(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Ctrl+C after the service created the batch but before the command wrote it down
    (its state file lost): the rerun finds the batch by the run's key in its metadata."""
    source = tmp_path / "lost.jsonl"  # a name of its own among the module's files
    source.write_bytes(jsonl([chat_line(f"k{i}", max_tokens=10) for i in range(4)]))
    out = tmp_path / "out.jsonl"
    first = command(server, tmp_path, str(source), "-o", str(out))
    mine = lambda: [  # noqa: E731
        b for b in httpx.get(server.url + "/v1/batches").json()["data"]
        if (b.get("metadata") or {}).get("avito_ai_batch_cli")
        and b["input_file_id"] in ids_of(source.name)
    ]  # fmt: skip
    ids_of = lambda name: {  # noqa: E731
        f["id"] for f in httpx.get(server.url + "/v1/files").json()["data"]
        if f["filename"] == name
    }  # fmt: skip
    started = wait_until(mine, 60, "the command created its batch")
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=30)
    for state in (tmp_path / ".cache" / "avito-ai" / "batch-cli").glob("*.json"):
        state.unlink()  # as if it stopped before writing it

    second = command(server, tmp_path, str(source), "-o", str(out))
    _, said = second.communicate(timeout=240)
    assert second.returncode == 0, said
    assert f"batch {started[0]['id']} reattached" in said
    assert len(mine()) == 1


def test_a_file_the_service_refuses_says_why(server: ServerProcess, tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text("not json\n")
    run = command(server, tmp_path, str(source), "-o", str(tmp_path / "o.jsonl"))
    _, said = run.communicate(timeout=60)
    assert run.returncode == 1
    assert "400" in said and "line 1 is not JSON" in said
