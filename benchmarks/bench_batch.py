"""The Batch API against a good client loop, and what a running batch costs interactive
users.

    python benchmarks/bench_batch.py                      # 2,000 lines, 4 at a time
    python benchmarks/bench_batch.py --lines 300 --concurrency 4 --tokens 16 --probes 40

One dev server on the embedded SmolLM2 (OpenVINO, MAX_BATCH_SIZE=8), BATCH_LINES_IN_FLIGHT
= --concurrency, the batches in a temporary SQLite file. Every line asks for exactly
--tokens tokens (ignore_eos), greedy, so both ways do the same work.

1. Client loop: the lines sent to /v1/chat/completions by an asyncio loop keeping
   --concurrency in flight on a keep-alive pool (what a careful team would write).
2. Batch: the same lines as one batch (files.create → batches.create → poll); its time is
   from creation to `completed`.  Target: ≥ 0.9× the loop's lines per second.
3. Interactive time to first token, p95 of --probes streamed requests one after another:
   on the idle service, then with a batch of the same lines running.  Target: ≤ 1.25×.
   Then the same with --sparse-probes requests --sparse-gap seconds apart: past
   BATCH_YIELD_SECONDS, so each one meets the lines the batch started meanwhile (the
   batch's pause cannot help the first request of a quiet spell).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_front_door import one  # noqa: E402  (a streamed answer, timed)
from tests.servers import dev_server  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Write a short friendly greeting for a customer.",
    "Give me three tips for selling a bicycle online.",
    "Describe a red chair in one sentence.",
]


def bodies(count: int, tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "model": "avibe",
            "messages": [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({i})"}],
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        for i in range(count)
    ]


async def client_loop(url: str, lines: list[dict[str, Any]], concurrency: int) -> float:
    """Seconds for all lines, `concurrency` at a time."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in lines:
        queue.put_nowait(body)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                response = await client.post("/v1/chat/completions", json=body)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def submit(client: httpx.Client, lines: list[dict[str, Any]]) -> str:
    content = "".join(
        json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}) + "\n"
        for i, body in enumerate(lines)
    )  # fmt: skip
    uploaded = client.post(
        "/v1/files", files={"file": ("in.jsonl", io.BytesIO(content.encode()))},
        data={"purpose": "batch"},
    )  # fmt: skip
    uploaded.raise_for_status()
    batch = client.post(
        "/v1/batches",
        json={"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions",
              "completion_window": "24h"},
    )  # fmt: skip
    batch.raise_for_status()
    return str(batch.json()["id"])


def batch_seconds(url: str, lines: list[dict[str, Any]]) -> float:
    with httpx.Client(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        batch_id = submit(client, lines)
        while True:
            batch = client.get(f"/v1/batches/{batch_id}").json()
            if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                break
            time.sleep(0.2)  # polling: the SDK user's loop
        elapsed = time.perf_counter() - started
        counts = batch["request_counts"]
        assert batch["status"] == "completed" and counts["completed"] == len(lines), batch
        return elapsed


async def probes(url: str, count: int, tokens: int, gap: float = 0.0) -> list[float]:
    """TTFTs of `count` streamed requests, one after another, `gap` seconds apart."""
    ttfts = []
    async with httpx.AsyncClient(timeout=600) as client:
        for i in range(count):
            if i and gap:
                await asyncio.sleep(gap)  # the traffic's shape: a user every `gap` seconds
            ttfts.append((await one(client, url, tokens, "Say hello to a new customer."))[0])
    return ttfts


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument(
        "--sparse-gap",
        type=float,
        default=3.0,
        help="seconds between the sparse probes: past BATCH_YIELD_SECONDS (2), so each "
        "meets the batch lines that started after the previous one",
    )
    parser.add_argument("--sparse-probes", type=int, default=20)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    env = {
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "RATE_LIMIT_PER_HOUR": "1000000",
        "MAX_BATCH_SIZE": "8",
        "BATCH_LINES_IN_FLIGHT": str(args.concurrency),
        "BATCH_DATABASE_URL": f"sqlite:///{folder / 'batches.sqlite3'}",
        "LOG_LEVEL": "WARNING",
    }
    server = dev_server(env, folder / "server.log")
    try:
        server.wait_ready(300)
        url = server.url
        lines = bodies(args.lines, args.tokens)
        asyncio.run(client_loop(url, lines[:16], args.concurrency))  # warm-up
        loop_s = asyncio.run(client_loop(url, lines, args.concurrency))
        batch_s = batch_seconds(url, lines)
        idle = asyncio.run(probes(url, args.probes, args.tokens))
        idle_sparse = asyncio.run(probes(url, args.sparse_probes, args.tokens, args.sparse_gap))
        with httpx.Client(base_url=url, timeout=600) as client:
            running = submit(client, bodies(args.lines, args.tokens))
            while client.get(f"/v1/batches/{running}").json()["request_counts"]["completed"] < 1:
                time.sleep(0.2)  # the batch is under way
            busy = asyncio.run(probes(url, args.probes, args.tokens))
            sparse = asyncio.run(probes(url, args.sparse_probes, args.tokens, args.sparse_gap))
            left = client.get(f"/v1/batches/{running}").json()
            client.post(f"/v1/batches/{running}/cancel")
        assert left["status"] == "in_progress", "the batch ended before the probes did"
        loop_lps, batch_lps = args.lines / loop_s, args.lines / batch_s
        report = {
            "lines": args.lines,
            "concurrency": args.concurrency,
            "tokens_per_line": args.tokens,
            "client_loop_lines_per_s": round(loop_lps, 2),
            "batch_lines_per_s": round(batch_lps, 2),
            "batch_over_loop": round(batch_lps / loop_lps, 3),
            "ttft_p95_idle_s": round(p95(idle), 4),
            "ttft_p95_with_batch_s": round(p95(busy), 4),
            "ttft_p95_ratio": round(p95(busy) / p95(idle), 3),
            "ttft_p50_idle_s": round(statistics.median(idle), 4),
            "ttft_p50_with_batch_s": round(statistics.median(busy), 4),
            "sparse_gap_s": args.sparse_gap,
            "sparse_ttft_p95_idle_s": round(p95(idle_sparse), 4),
            "sparse_ttft_p95_with_batch_s": round(p95(sparse), 4),
            "sparse_ttft_p95_ratio": round(p95(sparse) / p95(idle_sparse), 3),
            "sparse_ttft_p50_ratio": round(
                statistics.median(sparse) / statistics.median(idle_sparse), 3
            ),
        }
        print(json.dumps(report, indent=2))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
