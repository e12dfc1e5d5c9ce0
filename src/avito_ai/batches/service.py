"""What the /v1/files and /v1/batches routes do, in OpenAI's shapes. The routes
(api/batches/router.py) only parse the request and call this."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy.exc import SQLAlchemyError

from avito_ai.batches.jsonl import ENDPOINTS, UploadCheck
from avito_ai.batches.runner import BatchRunner
from avito_ai.batches.settings import BatchSettings
from avito_ai.batches.store import CHUNK, BatchStore
from avito_ai.clients import Client
from avito_ai.errors import BatchStoreUnavailable, Conflict, NotFound, ValidationFailed

WINDOW_SECONDS = {"24h": 24 * 3600}
CANCELLABLE = ("validating", "in_progress")


def owner_of(client: Client) -> str:
    """Whose files and batches these are: the API key when keys are on; without keys the
    service is one shared space (as every other route is)."""
    return client.id if client.policy is not None else "public"


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """The database away: 503 with Retry-After (online generation does not touch it)."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        raise BatchStoreUnavailable(
            f"The batch database is unavailable ({type(exc).__name__}); retry shortly",
            retry_after=5,
        ) from None


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
    }


def batch_object(row: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = row.get("prompt_tokens", 0), row.get("completion_tokens", 0)
    return {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "model": None,
        "errors": json.loads(row["errors_json"]) if row["errors_json"] else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
        "created_at": row["created_at"],
        **{
            name: row[name]
            for name in (
                "in_progress_at",
                "expires_at",
                "finalizing_at",
                "completed_at",
                "failed_at",
                "expired_at",
                "cancelling_at",
                "cancelled_at",
            )
        },
        "request_counts": {
            "total": row["total"],
            "completed": row.get("done", 0),
            "failed": row.get("failed", 0),
        },
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        },
        "metadata": json.loads(row["metadata_json"]) if row["metadata_json"] else None,
    }


def page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


@dataclass
class BatchService:
    store: BatchStore
    settings: BatchSettings
    runner: BatchRunner | None = None

    # ------------------------------------------------------------------ files

    async def upload(
        self, client: Client, upload: IO[bytes], filename: str, purpose: str
    ) -> dict[str, Any]:
        if purpose != "batch":
            raise ValidationFailed(
                f"purpose must be 'batch' (got {purpose!r}): this service keeps files for "
                "the Batch API only",
                param="purpose",
            )
        check = UploadCheck(
            self.settings.max_file_bytes, self.settings.max_lines, self.settings.max_line_bytes
        )

        def read_all() -> None:  # up to 200 MB of JSON parsed: off the event loop
            upload.seek(0)
            while data := upload.read(CHUNK):
                check.feed(data)
            check.finish()

        await asyncio.to_thread(read_all)
        now = int(time.time())
        row = {
            "id": f"file-{uuid.uuid4().hex}",
            "owner": owner_of(client),
            "filename": filename or "upload.jsonl",
            "purpose": "batch",
            "kind": "upload",
            "bytes": check.size,
            "lines": check.lines,
            "batch_id": None,
            "created_at": now,
            "expires_at": int(now + self.settings.retention_hours * 3600),
        }

        async def chunks() -> AsyncIterator[bytes]:
            upload.seek(0)
            while data := upload.read(CHUNK):
                yield data

        with store_errors():
            await self.store.ready()
            await self.store.add_file(row, chunks())
        return file_object(row)

    async def _own_file(self, client: Client, file_id: str) -> dict[str, Any]:
        with store_errors():
            await self.store.ready()
            row = await self.store.file(file_id)
        if row is None or row["owner"] != owner_of(client):
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return row

    async def get_file(self, client: Client, file_id: str) -> dict[str, Any]:
        return file_object(await self._own_file(client, file_id))

    async def list_files(
        self, client: Client, *, purpose: str | None, limit: int, after: str | None, order: str
    ) -> dict[str, Any]:
        with store_errors():
            await self.store.ready()
            rows = await self.store.list_files(
                owner_of(client), purpose=purpose, limit=limit + 1, after=after, order=order
            )
        return page([file_object(r) for r in rows[:limit]], len(rows) > limit)

    async def delete_file(self, client: Client, file_id: str) -> dict[str, Any]:
        await self._own_file(client, file_id)
        with store_errors():
            await self.store.ready()
            await self.store.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    async def content(
        self, client: Client, file_id: str
    ) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
        row = await self._own_file(client, file_id)
        if row["kind"] == "upload":
            return row, self.store.file_bytes(file_id)
        status = "done" if row["kind"] == "output" else "failed"
        return row, self.store.result_lines(row["batch_id"], status)

    # ------------------------------------------------------------------ batches

    async def create(
        self,
        client: Client,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
    ) -> dict[str, Any]:
        if endpoint not in ENDPOINTS:
            raise ValidationFailed(
                f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint"
            )
        source = await self._own_file(client, input_file_id)
        if source["kind"] != "upload" or source["purpose"] != "batch":
            raise ValidationFailed(
                f"File {input_file_id} is not a batch input file (purpose 'batch')",
                param="input_file_id",
            )
        now = int(time.time())
        row: dict[str, Any] = {
            "id": f"batch_{uuid.uuid4().hex}",
            "owner": owner_of(client),
            "client_id": client.id,
            "client_name": client.name,
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "status": "validating",
            "created_at": now,
            "expires_at": now + WINDOW_SECONDS[completion_window],
            "metadata_json": json.dumps(metadata) if metadata else None,
            "total": 0,
        }
        with store_errors():
            await self.store.ready()
            await self.store.add_batch(row)
        if self.runner is not None:
            self.runner.poke()
        return await self.get(client, row["id"])

    async def _own_batch(self, client: Client, batch_id: str) -> dict[str, Any]:
        with store_errors():
            await self.store.ready()
            row = await self.store.batch(batch_id)
        if row is None or row["owner"] != owner_of(client):
            raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
        return row

    async def get(self, client: Client, batch_id: str) -> dict[str, Any]:
        return batch_object(await self._own_batch(client, batch_id))

    async def list(self, client: Client, *, limit: int, after: str | None) -> dict[str, Any]:
        with store_errors():
            await self.store.ready()
            rows = await self.store.list_batches(owner_of(client), limit=limit + 1, after=after)
        return page([batch_object(r) for r in rows[:limit]], len(rows) > limit)

    async def cancel(self, client: Client, batch_id: str) -> dict[str, Any]:
        row = await self._own_batch(client, batch_id)
        if row["status"] != "cancelling":
            if row["status"] not in CANCELLABLE:
                raise Conflict(
                    f"Cannot cancel a batch with status '{row['status']}'", param="batch_id"
                )
            with store_errors():
                await self.store.ready()
                await self.store.set_batch(
                    batch_id,
                    when_status=CANCELLABLE,
                    status="cancelling",
                    cancelling_at=int(time.time()),
                )
            if self.runner is not None:
                self.runner.poke()
        return await self.get(client, batch_id)
