"""Where Batch API file contents live: in the database, in 1 MiB chunks. This measures
what that costs: storing and reading back a file of --megabytes (lines of ~1 KB) on SQLite
and on a real PostgreSQL (Debian's, started for the run as tests/postgres.py does), and
what the database grows by.

    python benchmarks/bench_batch_files.py --megabytes 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.postgres import postgres  # noqa: E402

from avito_ai.batches.store import CHUNK, BatchStore  # noqa: E402


def content(megabytes: int) -> bytes:
    line = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "avibe", "messages": [{"role": "user",
                                "content": "a" * 900}]}}) + "\n"  # fmt: skip
    return line.encode() * (megabytes * 1024 * 1024 // len(line))


async def measure(url: str, data: bytes) -> dict[str, float]:
    store = BatchStore(url)
    await store.ready()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), CHUNK):
            yield data[start : start + CHUNK]

    row = {"id": "file-bench", "owner": "public", "filename": "in.jsonl", "purpose": "batch",
           "kind": "upload", "bytes": len(data), "lines": data.count(b"\n"), "batch_id": None,
           "created_at": 0, "expires_at": None}  # fmt: skip
    started = time.perf_counter()
    await store.add_file(row, chunks())
    stored = time.perf_counter() - started
    started = time.perf_counter()
    size = sum([len(part) async for part in store.file_bytes("file-bench")])
    read = time.perf_counter() - started
    assert size == len(data)
    await store.close()
    return {"store_s": round(stored, 3), "read_s": round(read, 3),
            "store_mb_per_s": round(len(data) / 2**20 / stored, 1),
            "read_mb_per_s": round(len(data) / 2**20 / read, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=50)
    args = parser.parse_args()
    data = content(args.megabytes)
    folder = Path(tempfile.mkdtemp(prefix="bench-files-"))
    report = {"megabytes": round(len(data) / 2**20, 1)}
    report["sqlite"] = asyncio.run(measure(f"sqlite:///{folder / 'b.sqlite3'}", data))  # type: ignore[assignment]
    report["sqlite"]["db_mb"] = round(  # type: ignore[index]
        sum(p.stat().st_size for p in folder.iterdir()) / 2**20, 1
    )
    with postgres() as server:
        report["postgresql"] = asyncio.run(measure(server.url, data))  # type: ignore[assignment]
        import psycopg

        with psycopg.connect(server.url) as conn:
            row = conn.execute("SELECT pg_database_size('batches')").fetchone()
        report["postgresql"]["db_mb"] = round(row[0] / 2**20, 1) if row else 0  # type: ignore[index]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
