"""Every query of the Batch API, on SQLAlchemy's async engine.

One URL chooses the database: `sqlite:///file` (aiosqlite; WAL, so readers never wait for
the runner's writes) or `postgresql://...` (psycopg 3). The schema is alembic's
(`migrations/`), brought to the newest revision at start (one process at a time: an
advisory lock on PostgreSQL, retries on SQLite).

Lines are leased: a process claims a few (`status='running'`, its name, a deadline),
renews the deadline while they run, and writes each result in the same statement that
ends the lease — guarded by the lease, so a line whose lease lapsed to another process
can never finish twice. PostgreSQL claims with `FOR UPDATE SKIP LOCKED` (replicas never
wait for each other's rows); SQLite with one UPDATE … RETURNING (its writes are serial).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, event, func, insert, select, text, update
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from avito_ai.batches.tables import batches, file_chunks, files, lines

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger("avito_ai.batches")

CHUNK = 1024 * 1024
FINISHED = ("completed", "failed", "expired", "cancelled")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The newest revision under migrations/versions (tests/unit/test_batch_store.py holds it to
# alembic's own head): a database already there is checked without alembic, whose import and
# script reading cost every process start ~0.2 s of CPU.
HEAD = "0002"


def async_url(url: str) -> URL:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    raise ValueError(f"BATCH_DATABASE_URL: sqlite:/// or postgresql:// expected, got {url!r}")


def sync_url(url: str) -> URL:
    parsed = make_url(url)
    return parsed.set(
        drivername="sqlite" if parsed.get_backend_name() == "sqlite" else "postgresql+psycopg"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def migrate(url: str) -> None:
    """The schema at alembic's newest revision (blocking: run it in a thread)."""
    from sqlalchemy import create_engine

    parsed = sync_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, poolclass=None)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        if not _at_head(engine):
            _upgrade(engine, postgresql=parsed.get_backend_name() == "postgresql")
    finally:
        engine.dispose()


def alembic_config() -> Config:
    """alembic's configuration for the migrations here (imports alembic)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _upgrade(engine: Engine, *, postgresql: bool) -> None:
    from alembic import command

    config = alembic_config()
    for attempt in range(10):
        try:
            with engine.begin() as connection:
                if postgresql:  # one process migrates; the others wait and find it done
                    connection.execute(text("SELECT pg_advisory_xact_lock(733301)"))
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            return
        except Exception:
            if attempt == 9:
                raise
            time.sleep(0.2 * (attempt + 1))  # another process created the tables first


def _at_head(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            found = connection.execute(text("SELECT version_num FROM alembic_version"))
            return [row[0] for row in found] == [HEAD]
    except SQLAlchemyError:  # no such table yet: alembic makes it
        return False


@dataclass(frozen=True)
class Claimed:
    batch_id: str
    line_no: int
    custom_id: str
    body: str
    client_id: str
    client_name: str
    endpoint: str


class BatchStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        self.engine: AsyncEngine = create_async_engine(
            async_url(url),
            pool_pre_ping=True,
            **({"connect_args": {"timeout": 30}} if self.dialect == "sqlite" else {}),
        )
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._migrated = False
        self._lock = asyncio.Lock()

    async def migrate(self) -> None:
        await asyncio.to_thread(migrate, self.url)

    async def ready(self) -> None:
        """The schema migrated, once per process (again after a failure: the database
        may have been away at start)."""
        if self._migrated:
            return
        async with self._lock:
            if not self._migrated:
                await self.migrate()
                self._migrated = True

    async def close(self) -> None:
        await self.engine.dispose()

    # ------------------------------------------------------------------ files

    async def add_file(self, row: dict[str, Any], chunks: AsyncIterator[bytes] | None) -> None:
        """The file's row and its chunks in one transaction: a file is whole or absent."""
        async with self.engine.begin() as conn:
            await conn.execute(insert(files).values(**row))
            if chunks is not None:
                seq = 0
                async for data in chunks:
                    await conn.execute(
                        insert(file_chunks).values(file_id=row["id"], seq=seq, data=data)
                    )
                    seq += 1

    async def file(self, file_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(files).where(files.c.id == file_id))).first()
        return dict(row._mapping) if row else None

    async def list_files(
        self, owner: str, *, purpose: str | None, limit: int, after: str | None, order: str
    ) -> list[dict[str, Any]]:
        query = select(files).where(files.c.owner == owner)
        if purpose:
            query = query.where(files.c.purpose == purpose)
        descending = order == "desc"
        key = (
            (files.c.created_at.desc(), files.c.id.desc())
            if descending
            else (files.c.created_at, files.c.id)
        )
        async with self.engine.connect() as conn:
            if after:
                pivot = (
                    await conn.execute(select(files.c.created_at).where(files.c.id == after))
                ).scalar()
                if pivot is not None:
                    if descending:
                        query = query.where(
                            (files.c.created_at < pivot)
                            | ((files.c.created_at == pivot) & (files.c.id < after))
                        )
                    else:
                        query = query.where(
                            (files.c.created_at > pivot)
                            | ((files.c.created_at == pivot) & (files.c.id > after))
                        )
            rows = (await conn.execute(query.order_by(*key).limit(limit))).all()
        return [dict(r._mapping) for r in rows]

    async def file_bytes(self, file_id: str) -> AsyncIterator[bytes]:
        """An upload's bytes, a chunk at a time (one short read per chunk)."""
        seq = 0
        while True:
            async with self.engine.connect() as conn:
                data = (
                    await conn.execute(
                        select(file_chunks.c.data).where(
                            file_chunks.c.file_id == file_id, file_chunks.c.seq == seq
                        )
                    )
                ).scalar()
            if data is None:
                return
            yield bytes(data)
            seq += 1

    async def result_lines(self, batch_id: str, status: str) -> AsyncIterator[bytes]:
        """A batch's output (`done`) or error (`failed`) lines, by line number, 500 a read."""
        last = -1
        while True:
            async with self.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(lines.c.line_no, lines.c.result)
                        .where(
                            lines.c.batch_id == batch_id,
                            lines.c.status == status,
                            lines.c.line_no > last,
                        )
                        .order_by(lines.c.line_no)
                        .limit(500)
                    )
                ).all()
            if not rows:
                return
            yield "".join(f"{r.result}\n" for r in rows).encode()
            last = rows[-1].line_no

    async def delete_file(self, file_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(file_chunks).where(file_chunks.c.file_id == file_id))
            await conn.execute(delete(files).where(files.c.id == file_id))
            await conn.execute(
                update(batches)
                .where(batches.c.output_file_id == file_id)
                .values(output_file_id=None)
            )
            await conn.execute(
                update(batches).where(batches.c.error_file_id == file_id).values(error_file_id=None)
            )

    # ------------------------------------------------------------------ batches

    async def add_batch(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(batches).values(**row))

    async def batch(self, batch_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(batches).where(batches.c.id == batch_id))).first()
            if row is None:
                return None
            found = dict(row._mapping)
            found.update(await self._counts(conn, [batch_id]).__anext__())
        return found

    async def list_batches(
        self, owner: str, *, limit: int, after: str | None
    ) -> list[dict[str, Any]]:
        query = select(batches).where(batches.c.owner == owner)
        async with self.engine.connect() as conn:
            if after:
                pivot = (
                    await conn.execute(select(batches.c.created_at).where(batches.c.id == after))
                ).scalar()
                if pivot is not None:
                    query = query.where(
                        (batches.c.created_at < pivot)
                        | ((batches.c.created_at == pivot) & (batches.c.id < after))
                    )
            rows = [
                dict(r._mapping)
                for r in (
                    await conn.execute(
                        query.order_by(batches.c.created_at.desc(), batches.c.id.desc()).limit(
                            limit
                        )
                    )
                ).all()
            ]
            counts = [c async for c in self._counts(conn, [r["id"] for r in rows])]
        for row, count in zip(rows, counts, strict=True):
            row.update(count)
        return rows

    async def _counts(self, conn: Any, ids: Sequence[str]) -> AsyncIterator[dict[str, Any]]:
        """Per batch: lines by status and tokens used."""
        found: dict[str, dict[str, Any]] = {
            i: {
                "pending": 0,
                "running": 0,
                "done": 0,
                "failed": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
            }
            for i in ids
        }
        if ids:
            rows = await conn.execute(
                select(
                    lines.c.batch_id,
                    lines.c.status,
                    func.count(),
                    func.coalesce(func.sum(lines.c.prompt_tokens), 0),
                    func.coalesce(func.sum(lines.c.completion_tokens), 0),
                )
                .where(lines.c.batch_id.in_(ids))
                .group_by(lines.c.batch_id, lines.c.status)
            )
            for batch_id, status, count, prompt, completion in rows:
                entry = found[batch_id]
                entry[status] = int(count)
                entry["prompt_tokens"] += int(prompt)
                entry["completion_tokens"] += int(completion)
        for i in ids:
            yield found[i]

    async def set_batch(
        self, batch_id: str, *, when_status: Iterable[str] | None = None, **values: Any
    ) -> bool:
        query = update(batches).where(batches.c.id == batch_id)
        if when_status is not None:
            query = query.where(batches.c.status.in_(list(when_status)))
        async with self.engine.begin() as conn:
            return bool((await conn.execute(query.values(**values))).rowcount)

    async def claim_validation(self, me: str, lease: float) -> dict[str, Any] | None:
        """A batch waiting to be validated, now this process's to validate."""
        now = time.time()
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(batches.c.id)
                    .where(
                        batches.c.status == "validating",
                        (batches.c.lease_until.is_(None)) | (batches.c.lease_until < now),
                    )
                    .order_by(batches.c.created_at)
                    .limit(1)
                )
            ).first()
            if row is None:
                return None
            taken = await conn.execute(
                update(batches)
                .where(
                    batches.c.id == row.id,
                    batches.c.status == "validating",
                    (batches.c.lease_until.is_(None)) | (batches.c.lease_until < now),
                )
                .values(lease_owner=me, lease_until=now + lease)
            )
            if not taken.rowcount:
                return None
            found = (await conn.execute(select(batches).where(batches.c.id == row.id))).first()
        return dict(found._mapping) if found else None

    async def start_batch(self, batch_id: str, me: str, rows: list[dict[str, Any]]) -> bool:
        """The validated lines and `in_progress` in one commit (guarded by the claim)."""
        now = int(time.time())
        async with self.engine.begin() as conn:
            taken = await conn.execute(
                update(batches)
                .where(
                    batches.c.id == batch_id,
                    batches.c.status == "validating",
                    batches.c.lease_owner == me,
                )
                .values(
                    status="in_progress",
                    in_progress_at=now,
                    total=len(rows),
                    lease_owner=None,
                    lease_until=None,
                )
            )
            if not taken.rowcount:
                return False
            for start in range(0, len(rows), 1000):
                await conn.execute(insert(lines), rows[start : start + 1000])
        return True

    # ------------------------------------------------------------------ lines

    async def claim_lines(self, me: str, count: int, lease: float) -> list[Claimed]:
        """Up to `count` lines to run: pending ones whose time has come, and running ones
        whose process's lease lapsed (it died); oldest batch first. Never a line this
        process runs itself, however late its renewal (a loaded machine): it would run
        twice and be charged twice."""
        now = time.time()
        params = {"me": me, "now": now, "until": now + lease, "n": count}
        pick = (
            "SELECT l.{key} FROM batch_lines l JOIN batches b ON b.id = l.batch_id "
            "WHERE b.status = 'in_progress' AND ((l.status = 'pending' AND l.not_before <= :now)"
            " OR (l.status = 'running' AND l.lease_until < :now AND l.lease_owner <> :me)) "
            "ORDER BY b.created_at, l.batch_id, l.line_no LIMIT :n"
        )
        returning = (
            " RETURNING batch_lines.batch_id, batch_lines.line_no, batch_lines.custom_id,"
            " batch_lines.body"
        )
        if self.dialect == "postgresql":
            sql = (
                "WITH picked AS ("
                + pick.format(key="batch_id, l.line_no")
                + " FOR UPDATE OF l SKIP LOCKED) UPDATE batch_lines SET status = 'running',"
                " lease_owner = :me, lease_until = :until, attempts = attempts + 1 FROM picked"
                " WHERE batch_lines.batch_id = picked.batch_id"
                " AND batch_lines.line_no = picked.line_no" + returning
            )
        else:
            sql = (
                "UPDATE batch_lines SET status = 'running', lease_owner = :me,"
                " lease_until = :until, attempts = attempts + 1 WHERE rowid IN ("
                + pick.format(key="rowid")
                + ")"
                + returning
            )
        async with self.engine.begin() as conn:
            rows = (await conn.execute(text(sql), params)).all()
            if not rows:
                return []
            ids = sorted({r.batch_id for r in rows})
            owners = {
                b.id: b
                for b in await conn.execute(
                    select(
                        batches.c.id, batches.c.client_id, batches.c.client_name, batches.c.endpoint
                    ).where(batches.c.id.in_(ids))
                )
            }
        return [
            Claimed(
                r.batch_id,
                r.line_no,
                r.custom_id,
                r.body,
                owners[r.batch_id].client_id,
                owners[r.batch_id].client_name,
                owners[r.batch_id].endpoint,
            )
            for r in rows
        ]

    async def renew(self, me: str, lease: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(lines)
                .where(lines.c.lease_owner == me, lines.c.status == "running")
                .values(lease_until=time.time() + lease)
            )

    async def finish_line(
        self,
        line: Claimed,
        me: str,
        *,
        status: str,
        result: dict[str, Any],
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> bool:
        """The line's output written and its lease ended in one statement; False if the
        line is no longer this process's (its lease lapsed to another)."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(lines)
                .where(
                    lines.c.batch_id == line.batch_id,
                    lines.c.line_no == line.line_no,
                    lines.c.status == "running",
                    lines.c.lease_owner == me,
                )
                .values(
                    status=status,
                    result=json.dumps(result, ensure_ascii=False),
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    finished_at=time.time(),
                    finished_by=me,
                    lease_owner=None,
                    lease_until=None,
                )
            )
        return bool(done.rowcount)

    async def retry_line(self, line: Claimed, me: str, not_before: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(lines)
                .where(
                    lines.c.batch_id == line.batch_id,
                    lines.c.line_no == line.line_no,
                    lines.c.status == "running",
                    lines.c.lease_owner == me,
                )
                .values(status="pending", not_before=not_before, lease_owner=None, lease_until=None)
            )

    async def unfinished(self, status: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(batches).where(batches.c.status == status))).all()
        return [dict(r._mapping) for r in rows]

    async def end_lines(self, batch_id: str, code: str, message: str, *, running_too: bool) -> None:
        """Pending lines (and with `running_too`, running lines whose lease lapsed) end
        in the error file with `code` (batch_cancelled, batch_expired)."""
        now = time.time()
        states = ["pending", "running"] if running_too else ["pending"]
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(
                        lines.c.line_no, lines.c.custom_id, lines.c.status, lines.c.lease_until
                    ).where(lines.c.batch_id == batch_id, lines.c.status.in_(states))
                )
            ).all()
            for row in rows:
                if row.status == "running" and (row.lease_until or 0) >= now:
                    continue  # its process is alive and ends it itself
                result = error_line(batch_id, row.line_no, row.custom_id, code, message)
                await conn.execute(
                    update(lines)
                    .where(
                        lines.c.batch_id == batch_id,
                        lines.c.line_no == row.line_no,
                        lines.c.status == row.status,
                    )
                    .values(
                        status="failed",
                        result=json.dumps(result),
                        finished_at=now,
                        lease_owner=None,
                        lease_until=None,
                    )
                )

    async def close_batch(
        self, batch: dict[str, Any], status: str, stamp: str, retention: float
    ) -> bool:
        """`status` once no line is pending or running, with the output and error files of
        what finished; False while lines are still out (or another process closed it)."""
        try:
            return await self._close(batch, status, stamp, retention)
        except (_Raced, IntegrityError):  # another process closed it first
            return False

    async def _close(
        self, batch: dict[str, Any], status: str, stamp: str, retention: float
    ) -> bool:
        now = int(time.time())
        async with self.engine.begin() as conn:
            out = await conn.execute(
                select(lines.c.line_no)
                .where(lines.c.batch_id == batch["id"], lines.c.status.in_(("pending", "running")))
                .limit(1)
            )
            if out.first() is not None:  # (one index probe, each turn, each open batch)
                return False
            counts = await self._counts(conn, [batch["id"]]).__anext__()
            if counts["pending"] or counts["running"]:
                return False
            values: dict[str, Any] = {"status": status, stamp: now}
            if status == "completed":
                values["finalizing_at"] = now
            for kind, state in (("output", "done"), ("error", "failed")):
                if not counts[state]:
                    continue
                size = (
                    await conn.execute(
                        select(func.coalesce(func.sum(func.length(lines.c.result) + 1), 0)).where(
                            lines.c.batch_id == batch["id"], lines.c.status == state
                        )
                    )
                ).scalar()
                file_id = (
                    f"file-{batch['id'].removeprefix('batch_')}{'o' if kind == 'output' else 'e'}"
                )
                values[f"{kind}_file_id"] = file_id
                await conn.execute(
                    insert(files).values(
                        id=file_id,
                        owner=batch["owner"],
                        kind=kind,
                        purpose="batch_output",
                        filename=f"{batch['id']}_{kind}.jsonl",
                        bytes=int(size or 0),
                        lines=counts[state],
                        batch_id=batch["id"],
                        created_at=now,
                        expires_at=int(now + retention),
                    )
                )
            closed = await conn.execute(
                update(batches)
                .where(batches.c.id == batch["id"], batches.c.status.not_in(FINISHED))
                .values(**values)
            )
            if not closed.rowcount:
                raise _Raced()
        return True

    async def expired_files(self, now: float) -> list[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(files.c.id).where(files.c.expires_at.is_not(None), files.c.expires_at < now)
            )
            return [r.id for r in rows]

    async def forget_batches(self, before: float) -> None:
        """Finished batches created before `before`, with their lines, once their output
        and error files are gone too (those files' content is the lines: a batch that
        finished late keeps them until its files expire, BATCH_RETENTION_HOURS after)."""
        has_files = select(files.c.id).where(files.c.batch_id == batches.c.id).exists()
        async with self.engine.begin() as conn:
            ids = [
                r.id
                for r in await conn.execute(
                    select(batches.c.id).where(
                        batches.c.status.in_(FINISHED), batches.c.created_at < before, ~has_files
                    )
                )
            ]
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                await conn.execute(delete(lines).where(lines.c.batch_id.in_(part)))
                await conn.execute(delete(batches).where(batches.c.id.in_(part)))

    async def waiting_lines(self) -> int:
        """Pending lines of unfinished batches, for the gauge (each runner turn: an
        index-only count of the pending entries, not a read of every line)."""
        open_batches = select(batches.c.id).where(
            batches.c.status.in_(("in_progress", "cancelling"))
        )
        async with self.engine.connect() as conn:
            count = await conn.execute(
                select(func.count()).where(
                    lines.c.status == "pending", lines.c.batch_id.in_(open_batches)
                )
            )
            return int(count.scalar() or 0)


class _Raced(Exception):
    """Another process closed the batch first: this transaction is rolled back."""


def error_line(
    batch_id: str, line_no: int, custom_id: str, code: str, message: str
) -> dict[str, Any]:
    """An error-file line for a request that did not run (OpenAI's shape: `response` null,
    `error` with code and message)."""
    return {
        "id": request_line_id(batch_id, line_no),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def request_line_id(batch_id: str, line_no: int) -> str:
    return f"batch_req_{batch_id.removeprefix('batch_')}_{line_no}"
