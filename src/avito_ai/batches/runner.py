"""The batch runner: one per process (each gunicorn worker, each replica), in the app's
lifespan. Each turn it validates batches waiting for it, claims lines up to
BATCH_LINES_IN_FLIGHT and runs each as an in-process request to the app itself, at the
line's `url` with its body, as the batch's owner in the lowest priority class: the same
validation, engines, structured output, tools, images, budgets, metrics and fair
admission as the owner's online request; nothing runs beside the pipeline.

The owner comes in through `scope["state"]` (`IN_PROCESS_CLIENT`, middleware/auth.py),
which only a caller inside the process can fill: no header can make a request a batch
line. A line answered 429 or 503 (a budget spent, the queue full, the model loading or
restarting) waits for its Retry-After and runs again; any other answer is its result.
When the database goes away the runner pauses (the lines it ran keep their results and
are written when it is back); online requests never touch it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.types import ASGIApp, Message

from avito_ai.batches.jsonl import validate_lines
from avito_ai.batches.settings import BatchSettings
from avito_ai.batches.store import BatchStore, Claimed, error_line, request_line_id
from avito_ai.clients import Client, KeyPolicy, key_id
from avito_ai.middleware.auth import IN_PROCESS_CLIENT
from avito_ai.observability import metrics
from avito_ai.observability.logging import Throttled

logger = logging.getLogger("avito_ai.batches")

T = TypeVar("T")
RETRY_STATUSES = (429, 503)
TURN_SECONDS = 1.0


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def usage_of(body: Any) -> tuple[int, int]:
    """(prompt, completion) tokens of an answer: chat and completions name them
    prompt/completion, the Responses API input/output."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return int(prompt or 0), int(completion or 0)


async def call_app(
    app: ASGIApp, path: str, body: bytes, client: Client
) -> tuple[int, dict[str, str], bytes]:
    """One POST through the whole app (every middleware, the route, its error handlers)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"batch.internal"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"user-agent", b"avito-ai-batch"),
        ],
        "client": None,
        "server": None,
        "state": {IN_PROCESS_CLIENT: client},
    }
    delivered = False
    status = 500
    headers: dict[str, str] = {}
    parts: list[bytes] = []

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # never disconnects; a cancelled line is cancelled
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            for name, value in message.get("headers", ()):
                headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, headers, b"".join(parts)


class BatchRunner:
    def __init__(
        self,
        app: ASGIApp,
        store: BatchStore,
        settings: BatchSettings,
        *,
        models: Mapping[str, type[BaseModel]],
        policies: list[KeyPolicy],
        quiet_for: Callable[[], float] = lambda: float("inf"),
    ) -> None:
        self.app = app
        # Seconds since interactive traffic last ran on this process (fair admission's).
        self.quiet_for = quiet_for
        self.store = store
        self.settings = settings
        self.models = models
        self.policies = {f"key:{key_id(p.key)}": p for p in policies}
        self.me = process_name()
        self.running: dict[tuple[str, int], asyncio.Task[None]] = {}
        self.lines: dict[tuple[str, int], Claimed] = {}
        self.wake = asyncio.Event()
        self.paused = False
        self._task: asyncio.Task[None] | None = None
        # Every line task this process started, and whether it is shutting down: stopping
        # ends them all, even one whose result is still waiting for the database.
        self._line_tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._renewed = 0.0
        self._kept = 0.0
        self._db_log = Throttled(logger)

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batch-runner")

    async def stop(self) -> None:
        """Stop claiming; lines running now are cancelled (their leases lapse and another
        process, or this one restarted, runs them again)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        tasks = list(self._line_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        metrics.BATCH_LINES_RUNNING.set(0)

    def poke(self) -> None:
        """Something changed (a batch created or cancelled): look now, not next turn."""
        self.wake.set()

    async def _loop(self) -> None:
        backoff = TURN_SECONDS
        while True:
            try:
                await self.turn()
                if self.paused:
                    logger.info("Batch database is back: batches resume")
                self.paused = False
                backoff = TURN_SECONDS
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away, most likely: pause, retry
                metrics.BATCH_STORE_ERRORS.inc()
                self.paused = True
                self._db_log.error(
                    "Batch database unavailable (%s: %s): batches paused, online traffic "
                    "unaffected",
                    type(exc).__name__,
                    exc,
                )
                backoff = min(backoff * 2, 15.0)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), backoff)

    async def turn(self) -> None:
        """One pass: validate, keep leases, end cancelled/expired/finished batches, claim."""
        await self.store.ready()  # at start, and until the database first answers
        now = time.time()
        while (
            batch := await self.store.claim_validation(self.me, self.settings.lease_seconds)
        ) is not None:
            await self._validate(batch)
        if self.running and now - self._renewed > self.settings.lease_seconds / 3:
            await self.store.renew(self.me, self.settings.lease_seconds)
            self._renewed = now
        await self._close_batches(now)
        if now - self._kept > 60:
            await self._retention(now)
            self._kept = now
        free = self.settings.lines_in_flight - len(self.running)
        if free > 0 and self.quiet_for() < self.settings.yield_seconds:
            free = 0  # interactive users now or a moment ago: start nothing new this turn
        if free > 0:
            claimed = await self.store.claim_lines(self.me, free, self.settings.lease_seconds)
            if claimed:
                self._renewed = time.time()
            for line in claimed:
                key = (line.batch_id, line.line_no)
                if key in self.running:  # already running here: never a second copy
                    continue
                self.lines[key] = line
                task = asyncio.create_task(self._run(line), name=f"batch-line-{key}")
                self.running[key] = task
                self._line_tasks.add(task)
                task.add_done_callback(self._line_tasks.discard)
            metrics.BATCH_LINES_RUNNING.set(len(self.running))
        metrics.BATCH_LINES_WAITING.set(await self.store.waiting_lines())

    # ------------------------------------------------------------------ validation

    async def _validate(self, batch: dict[str, Any]) -> None:
        content = b"".join([c async for c in self.store.file_bytes(batch["input_file_id"])])
        source = await self.store.file(batch["input_file_id"])
        if source is None:
            rows: list[dict[str, Any]] = []
            errors = [
                {
                    "code": "file_not_found",
                    "line": None,
                    "param": "input_file_id",
                    "message": f"No such file: {batch['input_file_id']} (deleted?)",
                }
            ]
        else:
            rows, errors = await asyncio.to_thread(
                validate_lines, content, batch["endpoint"], self.models
            )
        if errors:
            await self.store.set_batch(
                batch["id"],
                when_status=("validating",),
                status="failed",
                failed_at=int(time.time()),
                lease_owner=None,
                lease_until=None,
                errors_json=json.dumps({"object": "list", "data": errors}),
            )
            logger.info("Batch %s failed validation: %d line(s)", batch["id"], len(errors))
            return
        for row in rows:
            row["batch_id"] = batch["id"]
        if await self.store.start_batch(batch["id"], self.me, rows):
            logger.info("Batch %s in progress: %d lines", batch["id"], len(rows))

    # ------------------------------------------------------------------ lines

    def client_for(self, line: Claimed) -> Client:
        return Client(
            id=line.client_id,
            name=line.client_name,
            policy=self.policies.get(line.client_id),
            priority="batch",
        )

    async def _run(self, line: Claimed) -> None:
        key = (line.batch_id, line.line_no)
        try:
            outcome = await self._execute(line)
            await self._record(line, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:  # never lose the runner over one line
            logger.exception("Batch line %s/%d failed to record", *key)
        finally:
            self.running.pop(key, None)
            self.lines.pop(key, None)
            metrics.BATCH_LINES_RUNNING.set(len(self.running))
            self.wake.set()

    async def _execute(self, line: Claimed) -> dict[str, Any]:
        try:
            status, headers, raw = await call_app(
                self.app, line.endpoint, line.body.encode(), self.client_for(line)
            )
        except Exception as exc:  # pragma: no cover - the app answers its own errors
            logger.exception("Batch line %s/%d raised", line.batch_id, line.line_no)
            return {"kind": "error", "code": "internal_error", "message": str(exc)}
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        return {"kind": "response", "status": status, "headers": headers, "body": body}

    async def _record(self, line: Claimed, outcome: dict[str, Any]) -> None:
        """Write the line's result, retrying while the database is away (the work is
        done; it is not lost to a blip)."""
        line_id = request_line_id(line.batch_id, line.line_no)
        if outcome["kind"] == "error":
            result = error_line(
                line.batch_id, line.line_no, line.custom_id, outcome["code"], outcome["message"]
            )
            status, tokens = "failed", (0, 0)
        else:
            code = outcome["status"]
            if code in RETRY_STATUSES:
                after = outcome["headers"].get("retry-after", "1")
                wait = min(60.0, max(1.0, float(after) if after.isdigit() else 1.0))
                until = time.time() + wait
                await self._persist(lambda: self.store.retry_line(line, self.me, until))
                return
            result = {
                "id": line_id,
                "custom_id": line.custom_id,
                "response": {
                    "status_code": code,
                    "request_id": outcome["headers"].get("x-request-id", ""),
                    "body": outcome["body"],
                },
                "error": None,
            }
            status = "done" if 200 <= code < 300 else "failed"
            tokens = usage_of(outcome["body"]) if status == "done" else (0, 0)
        finished = await self._persist(
            lambda: self.store.finish_line(
                line,
                self.me,
                status=status,
                result=result,
                prompt_tokens=tokens[0],
                completion_tokens=tokens[1],
            )
        )
        if finished:
            metrics.BATCH_LINES.labels(status).inc()
        else:
            logger.warning(
                "Batch line %s/%d was taken over; its result is dropped",
                line.batch_id,
                line.line_no,
            )

    async def _persist(self, write: Callable[[], Awaitable[T]]) -> T:
        """A store write, retried until the database answers."""
        delay = 0.5
        while True:
            try:
                return await write()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.BATCH_STORE_ERRORS.inc()
                if self._stopping:  # shutting down: the lease lapses, the line runs again
                    raise
                self._db_log.error("Batch database unavailable writing a line (%s); retrying", exc)
                await asyncio.sleep(delay)  # backoff while the database is away
                delay = min(delay * 2, 10.0)

    # ------------------------------------------------------------------ batch ends

    async def _close_batches(self, now: float) -> None:
        retention = self.settings.retention_hours * 3600
        for batch in await self.store.unfinished("cancelling"):
            for key, task in list(self.running.items()):
                if key[0] == batch["id"]:
                    task.cancel()
                    line = self.lines[key]
                    await self.store.finish_line(
                        line,
                        self.me,
                        status="failed",
                        result=error_line(
                            batch["id"],
                            key[1],
                            line.custom_id,
                            "batch_cancelled",
                            "The batch was cancelled before this request ran",
                        ),
                    )
            await self.store.end_lines(
                batch["id"],
                "batch_cancelled",
                "The batch was cancelled before this request ran",
                running_too=True,
            )
            await self.store.close_batch(batch, "cancelled", "cancelled_at", retention)
        for batch in await self.store.unfinished("in_progress"):
            if batch["expires_at"] < now:
                await self.store.end_lines(
                    batch["id"],
                    "batch_expired",
                    "This request could not be executed before the completion window expired.",
                    running_too=True,
                )
                await self.store.close_batch(batch, "expired", "expired_at", retention)
            else:
                await self.store.close_batch(batch, "completed", "completed_at", retention)

    async def _retention(self, now: float) -> None:
        cutoff = now - self.settings.retention_hours * 3600
        for file_id in await self.store.expired_files(now):
            await self.store.delete_file(file_id)
        await self.store.forget_batches(cutoff)
