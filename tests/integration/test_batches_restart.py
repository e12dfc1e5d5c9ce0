"""A batch survives `kill -9` of its server: restarted on the same SQLite file, the
server resumes the batch from its unfinished lines; the output holds every custom_id
exactly once, and the owner's token budget (in Redis, as replicas share it) is charged
once per finished line, and once more for each line in flight at the kill (it ran again),
at most BATCH_LINES_IN_FLIGHT lines; no line runs twice in a live process."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import RedisServer
from tests.integration.batch_helpers import (
    chat_line,
    lines_of,
    start_batch,
    wait_completed,
    wait_finished,
)
from tests.servers import ServerProcess, dev_server, serving

pytestmark = pytest.mark.integration

LINES = 200
IN_FLIGHT = 8
MAX_TOKENS = 2


def server_env(folder: Path, key: str, redis_server: RedisServer) -> dict[str, str]:
    return {
        "RATE_LIMIT_PER_MINUTE": "100000",
        "RATE_LIMIT_PER_HOUR": "100000",
        "RATE_LIMIT_STORAGE_URI": redis_server.uri,
        "TOKENS_PER_DAY": "100000000",
        "MAX_BATCH_SIZE": "8",
        "API_KEYS": key,
        "BATCH_DATABASE_URL": f"sqlite:///{folder / 'batches.sqlite3'}",
        "BATCH_LINES_IN_FLIGHT": str(IN_FLIGHT),
        "BATCH_LEASE_SECONDS": "3",
    }


def test_kill_9_mid_batch_then_restart_completes_it_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    key = f"sk-restart-{secrets.token_hex(4)}"  # a fresh budget in the session's Redis
    env = server_env(tmp_path, key, redis_server)
    lines = [
        chat_line(f"row-{i}", f"Item {i}: say ok.", max_tokens=MAX_TOKENS) for i in range(LINES)
    ]
    first = dev_server(env, tmp_path / "first.log")
    first.wait_ready(180)
    try:
        client = openai.OpenAI(base_url=first.url + "/v1", api_key=key, max_retries=2)
        # What the budget charges a request beyond its answer's usage (the prompt as the
        # engine counts it for the budget): measured on two online requests like the lines.
        extra = []
        for i in (7, 123):
            before = budget_used(first, key)
            answer = client.chat.completions.create(
                **chat_line("calibration", f"Item {i}: say ok.", max_tokens=MAX_TOKENS)["body"]
            )
            assert answer.usage is not None
            extra.append(budget_used(first, key) - before - answer.usage.total_tokens)
        assert extra[0] == extra[1] >= 0, extra
        calibration = budget_used(first, key)
        batch = start_batch(client, lines)
        wait_completed(client, batch.id, 20, 240)
    finally:
        first.proc.kill()  # SIGKILL: no shutdown, no cleanup
        first.proc.wait()
        first.stop()
    with sqlite3.connect(tmp_path / "batches.sqlite3") as db:
        states = db.execute("SELECT custom_id, status, attempts FROM batch_lines").fetchall()
    done_before = [cid for cid, status, _ in states if status == "done"]
    in_flight = [cid for cid, status, _ in states if status == "running"]  # at the kill
    assert 20 <= len(done_before) < LINES
    assert len(in_flight) <= IN_FLIGHT
    # No line ran twice in the live process (each claim counts an attempt).
    assert all(attempts == 1 for _, status, attempts in states if status == "done")

    with serving(dev_server(env, tmp_path / "second.log"), 180) as second:
        client = openai.OpenAI(base_url=second.url + "/v1", api_key=key, max_retries=2)
        finished = wait_finished(client, batch.id, 400)
        assert finished.status == "completed", finished
        assert finished.request_counts is not None
        assert (finished.request_counts.total, finished.request_counts.completed) == (LINES, LINES)
        out = lines_of(client, finished.output_file_id)
        ids = [line["custom_id"] for line in out]
        assert sorted(ids) == sorted(f"row-{i}" for i in range(LINES))  # each exactly once
        assert finished.error_file_id is None
        charged = budget_used(second, key) - calibration

    # Tokens: the budget was charged what the finished lines used, once each, and the
    # lines in flight at the kill once more: each had reserved its prompt + max_tokens in
    # Redis (never settled) or had already been charged what it used (its answer computed,
    # its commit not yet made); either way it ran again after the restart.
    usage = finished.usage
    assert usage is not None
    expected = usage.total_tokens + LINES * extra[0]
    by_id = {line["custom_id"]: line["response"]["body"]["usage"] for line in out}
    lost = sum(by_id[cid]["prompt_tokens"] + extra[0] + MAX_TOKENS for cid in in_flight)
    assert expected <= charged <= expected + lost, (expected, charged, in_flight)


def budget_used(srv: ServerProcess, key: str) -> int:
    """What the key's day budget (Redis) says it used, as the service reports it."""
    view = httpx.get(srv.url + "/api/metrics", headers={"Authorization": f"Bearer {key}"})
    return int(view.json()["client"]["tokens_per_day"]["used"] or 0)
