"""What the service costs in front of an engine process, on the stand-in engine.

    python benchmarks/bench_front_door.py                 # ~3 minutes
    python benchmarks/bench_front_door.py --rounds 5 --tokens 128

One service with AVIBE_BACKEND=command starts its engine (this service on the embedded
SmolLM2 through OpenVINO, as in tests/integration/test_engine_processes.py) on a known
port. In one run, alternating round by round, the same engine is asked directly and
through the service: streaming chat completions of exactly --tokens tokens (ignore_eos),
at 1 and at 16 concurrent clients. Reported: generated tokens per second over all clients
and mean time to first token, medians of the rounds, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import ServerProcess, free_port  # noqa: E402

PROMPT = "Tell me a story about a lighthouse keeper."


async def one(
    client: httpx.AsyncClient,
    url: str,
    tokens: int,
    prompt: str = PROMPT,
    headers: dict[str, str] | None = None,
) -> tuple[float, int]:
    """(time to first token, tokens received) of one streamed answer of exactly `tokens`."""
    body = {
        "model": "avibe",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    generated = 0
    async with client.stream(
        "POST", url + "/v1/chat/completions", json=body, headers=headers
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            choices = event.get("choices") or [{}]
            if first is None and (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter() - started
            if event.get("usage"):
                generated = int(event["usage"]["completion_tokens"])
    return first or 0.0, generated


async def load(url: str, clients: int, requests: int, tokens: int) -> tuple[float, float]:
    """(tokens per second over all clients, mean time to first token in ms)."""
    async with httpx.AsyncClient(timeout=300) as client:
        queue = list(range(requests))
        results: list[tuple[float, int]] = []

        async def worker() -> None:
            while queue:
                queue.pop()
                results.append(await one(client, url, tokens))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started
    return sum(n for _, n in results) / wall, 1000 * statistics.mean(t for t, _ in results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--pin",
        action="store_true",
        help="engine on CPU 1 with one thread, service and clients on CPU 0: on a CPU-only "
        "machine this keeps the engine's compute apart from the front door's, as a GPU does",
    )
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {0})  # this process, and the service it starts
    tmp = Path(tempfile.mkdtemp(prefix="bench-front-door-"))
    engine_port = free_port()
    env = {
        "AVIBE_BACKEND": "command",
        "AVIBE_ENGINE_COMMAND": ("taskset -c 1 " if args.pin else "")
        + "env RATE_LIMIT_PER_MINUTE=1000000 RATE_LIMIT_PER_HOUR=1000000 LOG_LEVEL=WARNING "
        + ("OPENVINO_THREADS=1 " if args.pin else "")
        + "{python} -m avito_ai serve --host 127.0.0.1 --port {port}",
        "AVIBE_ENGINE_HEALTH_PATH": "/api/health/ready",
        "AVIBE_ENGINE_PORT": str(engine_port),
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "RATE_LIMIT_PER_HOUR": "1000000",
        "LOG_LEVEL": "WARNING",
    }
    service = ServerProcess(
        [sys.executable, "-m", "avito_ai"], env, tmp / "service.log", free_port()
    )
    direct = f"http://127.0.0.1:{engine_port}"
    try:
        service.wait_ready(180)
        asyncio.run(load(direct, 2, 4, args.tokens))  # warm-up, both paths
        asyncio.run(load(service.url, 2, 4, args.tokens))
        table = []
        for clients, requests in ((1, 6), (16, 48)):
            rates: dict[str, list[float]] = {"direct": [], "service": []}
            ttfts: dict[str, list[float]] = {"direct": [], "service": []}
            for _ in range(args.rounds):
                for name, url in (("direct", direct), ("service", service.url)):
                    rate, ttft = asyncio.run(load(url, clients, requests, args.tokens))
                    rates[name].append(rate)
                    ttfts[name].append(ttft)
            d_rate, s_rate = (statistics.median(rates[k]) for k in ("direct", "service"))
            d_ttft, s_ttft = (statistics.median(ttfts[k]) for k in ("direct", "service"))
            table.append((clients, d_rate, s_rate, d_ttft, s_ttft))
    finally:
        service.stop()
    pinned = ", engine pinned to CPU 1, service and clients to CPU 0" if args.pin else ""
    print(
        f"stand-in engine, {args.tokens} tokens per answer, {args.rounds} rounds, medians{pinned}\n"
    )
    print(
        "| clients | direct tok/s | through the service tok/s | ratio | TTFT direct | TTFT added |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for clients, d_rate, s_rate, d_ttft, s_ttft in table:
        print(
            f"| {clients} | {d_rate:.1f} | {s_rate:.1f} | {s_rate / d_rate:.3f} "
            f"| {d_ttft:.1f} ms | {s_ttft - d_ttft:+.1f} ms |"
        )


if __name__ == "__main__":
    main()
