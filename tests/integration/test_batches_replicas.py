"""Two replicas (gunicorn, one worker each) on one real PostgreSQL share a batch by leases:
no line finishes twice; one replica killed with `kill -9`, the other finishes its lines. The
database going away pauses the batches without touching online traffic; they resume when
it is back."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import psycopg
import pytest

from tests.integration.batch_helpers import (
    chat_line,
    lines_of,
    start_batch,
    upload,
    wait_completed,
    wait_finished,
)
from tests.postgres import PostgresServer, postgres
from tests.servers import ServerProcess, gunicorn_server, wait_workers
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

LINES = 60


@pytest.fixture(scope="module")
def database() -> Iterator[PostgresServer]:
    with postgres() as server:
        yield server


def replica(database: PostgresServer, folder: Any, name: str) -> ServerProcess:
    env = {
        "RATE_LIMIT_PER_MINUTE": "100000",
        "RATE_LIMIT_PER_HOUR": "100000",
        "MAX_BATCH_SIZE": "8",
        "BATCH_DATABASE_URL": database.url,
        "BATCH_LINES_IN_FLIGHT": "2",
        "BATCH_LEASE_SECONDS": "3",
    }
    return gunicorn_server(env, folder / f"{name}.log", workers=1)


@pytest.fixture(scope="module")
def replicas(
    database: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    folder = tmp_path_factory.mktemp("replicas")
    first, second = replica(database, folder, "a"), replica(database, folder, "b")
    try:
        first.wait_ready(240)
        second.wait_ready(240)
        yield first, second
    finally:
        for srv in (first, second):
            srv.stop()


def sdk(srv: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=2)


def finishers(database: PostgresServer, batch_id: str) -> dict[str, int]:
    with psycopg.connect(database.url) as conn:
        rows = conn.execute(
            "SELECT finished_by, count(*) FROM batch_lines WHERE batch_id = %s AND "
            "finished_by IS NOT NULL GROUP BY finished_by",
            (batch_id,),
        ).fetchall()
    return {str(who): int(count) for who, count in rows}


def kill_replica(srv: ServerProcess) -> None:
    """SIGKILL to the worker and the master: nothing gets to clean up."""
    for pid in wait_workers(srv, 1):
        os.kill(int(pid), signal.SIGKILL)
    srv.proc.kill()
    srv.proc.wait()


def test_two_replicas_share_a_batch_and_one_finishes_after_the_other_dies(
    database: PostgresServer, replicas: tuple[ServerProcess, ServerProcess]
) -> None:
    first, second = replicas
    lines = [chat_line(f"r{i}", f"Item {i}: say ok.", max_tokens=4) for i in range(LINES)]
    client = sdk(first)
    source = upload(client, lines)
    batch = client.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    # Both replicas run its lines (the second one never saw the request that created it).
    shared = wait_until(
        lambda: len(by := finishers(database, batch.id)) >= 2 and by,
        240, "both replicas finished lines of the batch", interval=0.2,
    )  # fmt: skip
    kill_replica(first)
    finished = wait_finished(sdk(second), batch.id, 400)
    assert finished.status == "completed", finished
    out = lines_of(sdk(second), finished.output_file_id)
    assert sorted(line["custom_id"] for line in out) == sorted(f"r{i}" for i in range(LINES))
    by = finishers(database, batch.id)
    assert sum(by.values()) == LINES  # each line finished once, by one replica
    assert set(shared) <= set(by) and len(by) == 2
    with psycopg.connect(database.url) as conn:
        leased_again = conn.execute(
            "SELECT count(*) FROM batch_lines WHERE batch_id = %s AND attempts > 1", (batch.id,)
        ).fetchone()
    assert leased_again is not None and leased_again[0] >= 1  # the dead replica's lines


def test_database_away_pauses_batches_not_online_traffic(
    database: PostgresServer, replicas: tuple[ServerProcess, ServerProcess]
) -> None:
    second = replicas[1]
    client = sdk(second)
    lines = [chat_line(f"p{i}", f"Item {i}: say ok.", max_tokens=4) for i in range(12)]
    batch = start_batch(client, lines)
    wait_completed(client, batch.id, 1, 120)
    database.stop()
    try:
        answer = client.chat.completions.create(
            model="avibe", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert answer.choices[0].message.content is not None
        refused = httpx.get(f"{second.url}/v1/batches/{batch.id}", timeout=60)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "batch_store_unavailable"
        assert "Retry-After" in refused.headers
    finally:
        database.start()
    finished = wait_finished(client, batch.id, 300)
    assert finished.status == "completed"
    out = lines_of(client, finished.output_file_id)
    assert sorted(line["custom_id"] for line in out) == sorted(f"p{i}" for i in range(12))
