"""A batch's end of life, in-process on a real SQLite file: the Batch API's service (what
the routes call) and its runner, with a stand-in app that answers lines at once (or holds
one until the test lets it go). Time moves by setting the rows' timestamps in the
database, as a day passing would leave them; nothing sleeps.

- Past its completion window a batch is `expired` and keeps what finished: the output file
  holds the finished lines, the error file each unfinished line with OpenAI's
  `batch_expired` shape, `request_counts` adds up; a line running at the expiry finishes
  and is kept.
- Past BATCH_RETENTION_HOURS files and batches are deleted: 404 afterwards, rows gone.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from avito_ai.app import BATCH_MODELS
from avito_ai.batches.runner import BatchRunner
from avito_ai.batches.service import BatchService
from avito_ai.batches.settings import BatchSettings
from avito_ai.batches.store import BatchStore
from avito_ai.batches.tables import batches, file_chunks, files, lines
from avito_ai.clients import Client
from avito_ai.errors import NotFound
from tests.waiting import wait_until_async

CLIENT = Client(id="public", name="test")
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


class LineApp:
    """Answers each line's POST as the chat endpoint would (usage included); a line whose
    content is "hold" waits until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = json.loads((await receive())["body"])
        if body["messages"][0]["content"] == "hold":
            self.held.set()
            await self.release.wait()
        answer = {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        }
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"x-request-id", b"req-1")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})


def line(custom_id: str, content: str = "Say ok.") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "avibe", "messages": [{"role": "user", "content": content}]},
    }


def jsonl(rows: list[dict[str, Any]]) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[BatchService, BatchRunner, LineApp]]:
    settings = BatchSettings(
        database_url=f"sqlite:///{tmp_path / 'batches.sqlite3'}",
        lines_in_flight=2,
        retention_hours=1,
        enabled=True,
    )
    store = BatchStore(settings.database_url)
    app = LineApp()
    runner = BatchRunner(app, store, settings, models=BATCH_MODELS, policies=[])
    yield BatchService(store, settings, runner), runner, app
    await runner.stop()
    await store.close()


async def submit(
    service: BatchService, rows: list[dict[str, Any]], name: str = "in.jsonl"
) -> dict[str, Any]:
    """`rows` uploaded and created as a chat batch, as the routes do: the batch's view."""
    source = await service.upload(CLIENT, jsonl(rows), name, "batch")
    return await service.create(
        CLIENT,
        input_file_id=source["id"],
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=None,
    )


async def settle(runner: BatchRunner) -> None:
    """The lines the runner started, finished (those that can)."""
    await asyncio.gather(*runner.running.values())


async def content(service: BatchService, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    _, chunks = await service.content(CLIENT, file_id)
    text = b"".join([c async for c in chunks]).decode()
    return [json.loads(x) for x in text.splitlines()]


async def test_past_its_window_a_batch_expires_and_keeps_what_finished(
    world: tuple[BatchService, BatchRunner, LineApp],
) -> None:
    service, runner, app = world
    batch = await submit(service, [line("a"), line("held", "hold"), line("c"), line("d")])
    await runner.turn()  # validated; "a" and "held" claimed (2 in flight)
    await app.held.wait()
    await asyncio.gather(*[t for k, t in runner.running.items() if k[1] == 1])  # "a" done
    assert (await service.get(CLIENT, batch["id"]))["request_counts"]["completed"] == 1

    # A day later: the window has passed.
    async with service.store.engine.begin() as conn:
        await conn.execute(
            update(batches)
            .where(batches.c.id == batch["id"])
            .values(expires_at=int(time.time()) - 1)
        )
    await runner.turn()
    view = await service.get(CLIENT, batch["id"])
    # "held" is still running in this (live) process: the batch waits for it, its pending
    # lines are already ended and none is started any more.
    assert view["status"] == "in_progress"
    assert view["request_counts"] == {"total": 4, "completed": 1, "failed": 2}
    assert [k[1] for k in runner.running] == [2]

    app.release.set()
    await asyncio.gather(*runner.running.values())
    await runner.turn()
    view = await service.get(CLIENT, batch["id"])
    assert view["status"] == "expired" and view["expired_at"] is not None
    assert view["completed_at"] is None
    assert view["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    assert view["usage"]["total_tokens"] == 24  # the two finished lines
    out = await content(service, view["output_file_id"])
    assert [o["custom_id"] for o in out] == ["a", "held"]
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in out)
    errors = await content(service, view["error_file_id"])
    assert [e["custom_id"] for e in errors] == ["c", "d"]
    for entry in errors:  # OpenAI's expired line: no response, the error's code and message
        assert entry["id"].startswith("batch_req_")
        assert entry["response"] is None
        assert entry["error"] == {"code": "batch_expired", "message": EXPIRED_MESSAGE}
    assert (await service.get_file(CLIENT, view["output_file_id"]))["purpose"] == "batch_output"


async def test_past_retention_files_and_batches_are_deleted(
    world: tuple[BatchService, BatchRunner, LineApp], tmp_path: Path
) -> None:
    service, runner, _ = world
    batch = await submit(service, [line("a"), line("b")], "old.jsonl")
    for _ in range(3):  # validate and run; close
        await runner.turn()
        await settle(runner)
    done = await service.get(CLIENT, batch["id"])
    assert done["status"] == "completed" and done["output_file_id"]
    fresh = await service.upload(CLIENT, jsonl([line("x")]), "fresh.jsonl", "batch")

    # Two hours later (BATCH_RETENTION_HOURS=1) for what was there before `fresh`.
    past = int(time.time()) - 2 * 3600
    store = service.store
    async with store.engine.begin() as conn:
        await conn.execute(
            update(files).where(files.c.id != fresh["id"]).values(expires_at=past + 3600)
        )
        await conn.execute(update(batches).values(created_at=past))
    # A process's first turn sweeps (and then each minute): a fresh runner, as after a restart.
    settings = service.settings
    again = BatchRunner(LineApp(), store, settings, models=BATCH_MODELS, policies=[])
    await again.turn()

    for file_id in (batch["input_file_id"], done["output_file_id"]):
        with pytest.raises(NotFound):
            await service.get_file(CLIENT, file_id)
        with pytest.raises(NotFound):
            await service.content(CLIENT, file_id)
    with pytest.raises(NotFound):
        await service.get(CLIENT, batch["id"])
    assert batch["id"] not in [
        b["id"] for b in (await service.list(CLIENT, limit=20, after=None))["data"]
    ]
    listed = await service.list_files(CLIENT, purpose=None, limit=20, after=None, order="desc")
    assert [f["id"] for f in listed["data"]] == [fresh["id"]]  # the young file stays
    async with store.engine.connect() as conn:
        for table, where in (
            (files, files.c.id.in_([batch["input_file_id"], done["output_file_id"]])),
            (file_chunks, file_chunks.c.file_id == batch["input_file_id"]),
            (batches, batches.c.id == batch["id"]),
            (lines, lines.c.batch_id == batch["id"]),
        ):
            assert (
                await conn.execute(select(func.count()).select_from(table).where(where))
            ).scalar() == 0


async def test_a_batch_stays_while_its_output_does(
    world: tuple[BatchService, BatchRunner, LineApp],
) -> None:
    """A batch created more than the retention ago but finished later: its output file is
    younger than the retention, so the batch and its lines (the output's content) stay."""
    service, runner, _ = world
    batch = await submit(service, [line("a")])
    for _ in range(3):
        await runner.turn()
        await settle(runner)
    done = await service.get(CLIENT, batch["id"])
    assert done["status"] == "completed"
    async with service.store.engine.begin() as conn:
        await conn.execute(update(batches).values(created_at=int(time.time()) - 2 * 3600))
    again = BatchRunner(
        LineApp(), service.store, service.settings, models=BATCH_MODELS, policies=[]
    )
    await again.turn()
    assert (await service.get(CLIENT, batch["id"]))["status"] == "completed"
    out = await content(service, done["output_file_id"])
    assert [o["custom_id"] for o in out] == ["a"]


async def test_stopping_while_a_line_waits_for_the_database_ends_at_once(
    world: tuple[BatchService, BatchRunner, LineApp],
) -> None:
    """A line whose result cannot be written (the database refuses it) retries the write;
    stopping the process (SIGTERM's shutdown) ends that retry instead of waiting for the
    database for ever: the line's lease lapses and it runs again elsewhere."""
    from avito_ai.observability import metrics

    service, runner, app = world
    await submit(service, [line("held", "hold")])
    await runner.turn()
    await app.held.wait()
    async with service.store.engine.begin() as conn:  # the result's write will fail
        await conn.exec_driver_sql("ALTER TABLE batch_lines RENAME TO batch_lines_away")
    errors = metrics.BATCH_STORE_ERRORS._value.get()
    app.release.set()
    await wait_until_async(
        lambda: metrics.BATCH_STORE_ERRORS._value.get() > errors, 30, "the write failed"
    )
    tasks = list(runner.running.values())
    await asyncio.wait_for(runner.stop(), 30)
    assert all(task.done() for task in tasks)
    await asyncio.sleep(0.6)  # the behaviour under test: the retry's backoff (0.5 s) passes
    assert metrics.BATCH_STORE_ERRORS._value.get() == errors + 1  # no write after the stop


async def test_no_line_starts_while_interactive_users_are_served(tmp_path: Path) -> None:
    """Batches fill the time interactive users leave idle: while an interactive request
    runs on this process, and BATCH_YIELD_SECONDS after the last one, no line starts."""
    settings = BatchSettings(
        database_url=f"sqlite:///{tmp_path / 'batches.sqlite3'}",
        lines_in_flight=2,
        yield_seconds=2,
        enabled=True,
    )
    quiet = [0.0]  # what fair admission says: an interactive request is running now
    store = BatchStore(settings.database_url)
    runner = BatchRunner(
        LineApp(), store, settings, models=BATCH_MODELS, policies=[], quiet_for=lambda: quiet[0]
    )
    service = BatchService(store, settings, runner)
    try:
        batch = await submit(service, [line("a"), line("b")])
        await runner.turn()  # validated, nothing claimed
        assert (await service.get(CLIENT, batch["id"]))["status"] == "in_progress"
        assert not runner.running
        quiet[0] = 1.5  # the last interactive request ended 1.5 s ago
        await runner.turn()
        assert not runner.running
        quiet[0] = 2.5
        await runner.turn()
        assert len(runner.running) == 2
        await settle(runner)
        await runner.turn()
        view = await service.get(CLIENT, batch["id"])
        assert view["status"] == "completed" and view["request_counts"]["completed"] == 2
    finally:
        await runner.stop()
        await store.close()


async def test_fair_admission_says_how_long_interactive_traffic_has_been_quiet() -> None:
    from avito_ai.services.admission import Governor
    from tests.conftest import engine_set, isolated_settings

    governor = Governor(isolated_settings(), engine_set())
    admission = governor.admissions["avibe"]
    assert governor.quiet_for() == float("inf")  # none ever came
    async with admission.place("batch-owner", "batch"):
        assert governor.quiet_for() == float("inf")  # a batch line is not interactive
    async with admission.place("someone", "interactive"):
        assert governor.quiet_for() == 0.0
    assert 0.0 < governor.quiet_for() < 60


async def test_an_engine_on_its_own_gpu_server_is_not_yielded_to() -> None:
    """An upstream (vLLM, SGLang) batches many sequences and schedules by priority itself:
    its interactive requests do not pause batches."""
    from avito_ai.engines.remote.engine import RemoteEngine
    from avito_ai.services.admission import Governor
    from tests.conftest import engine_set, isolated_settings, remote_config

    settings = isolated_settings(avibe_backend="remote", avibe_upstream_urls="http://127.0.0.1:9")
    governor = Governor(settings, engine_set(RemoteEngine(remote_config(settings))))
    async with governor.admissions["avibe"].place("someone", "interactive"):
        assert governor.quiet_for() == float("inf")
