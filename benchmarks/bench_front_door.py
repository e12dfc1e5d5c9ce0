"""What the service costs in front of an engine process, on the stand-in engine.

    python benchmarks/bench_front_door.py                 # ~3 minutes
    python benchmarks/bench_front_door.py --rounds 5 --tokens 128
    python benchmarks/bench_front_door.py --engine-env AVIBE_MODEL=/tmp/q06 DEVICE=cuda

One service with AVIBE_BACKEND=command starts its engine (this service on the embedded
SmolLM2 through OpenVINO, as in tests/integration/test_engine_processes.py) on a known
port (`--engine-env` sets its model and device instead). In one run the same engine is
asked directly and through the service: streaming chat completions of exactly --tokens
tokens (ignore_eos), at 1 client (the two paths take turns request by request) and at 16
concurrent clients (whole loads, which path goes first alternating by round). Reported:
generated tokens per second over all clients, medians of the rounds; the ratio and the
first-token time added are paired within each round (so a slow spell of the engine hits
both), then the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
    extra: dict[str, Any] | None = None,
) -> tuple[float, int]:
    """(time to first token, tokens received) of one streamed answer of exactly `tokens`;
    `extra` fields (other sampling, response_format) make answers of up to `tokens`."""
    body: dict[str, Any] = {
        "model": "avibe",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": extra is None,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra or {}),
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
    if extra is not None:
        return first or 0.0, generated
    if first is None or generated != tokens:  # a rate over short or empty answers says nothing
        raise RuntimeError(f"{url}: {generated} tokens instead of {tokens}, first text {first}")
    return first, generated


Result = tuple[float, float]  # tokens per second, mean time to first token in ms


async def load(url: str, clients: int, requests: int, tokens: int) -> Result:
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


async def interleaved(urls: dict[str, str], requests: int, tokens: int) -> dict[str, Result]:
    """One client, the paths taking turns request by request (ABBA order), so a slow spell
    of the engine falls on both alike: per path (tokens per second, mean TTFT in ms)."""
    names = list(urls)
    done: dict[str, list[tuple[float, float, int]]] = {name: [] for name in names}
    async with httpx.AsyncClient(timeout=300) as client:
        for i in range(requests):
            for name in names if i % 2 == 0 else names[::-1]:
                started = time.perf_counter()
                ttft, generated = await one(client, urls[name], tokens)
                done[name].append((time.perf_counter() - started, ttft, generated))
    return {
        name: (
            sum(n for _, _, n in runs) / sum(w for w, _, _ in runs),
            1000 * statistics.mean(t for _, t, _ in runs),
        )
        for name, runs in done.items()
    }


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
    parser.add_argument(
        "--engine-env",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="settings of the stand-in engine only, e.g. AVIBE_MODEL=/tmp/q06 DEVICE=cuda",
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
        + "".join(f"{shlex.quote(item)} " for item in args.engine_env)
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
        urls = {"direct": direct, "service": service.url}
        table = []
        for clients, requests in ((1, 6), (16, 48)):
            ratios: list[float] = []
            added: list[float] = []
            rates: dict[str, list[float]] = {"direct": [], "service": []}
            for round_ in range(args.rounds):
                if clients == 1:
                    got = asyncio.run(interleaved(urls, requests, args.tokens))
                else:  # whole loads, the first path alternating by round
                    order = list(urls) if round_ % 2 == 0 else list(urls)[::-1]
                    got = {
                        name: asyncio.run(load(urls[name], clients, requests, args.tokens))
                        for name in order
                    }
                (d_rate, d_ttft), (s_rate, s_ttft) = got["direct"], got["service"]
                print(
                    f"{clients} client(s), round {round_ + 1}: direct {d_rate:.1f} tok/s "
                    f"TTFT {d_ttft:.1f} ms; service {s_rate:.1f} tok/s TTFT {s_ttft:.1f} ms"
                )
                ratios.append(s_rate / d_rate)
                added.append(s_ttft - d_ttft)
                rates["direct"].append(d_rate)
                rates["service"].append(s_rate)
            table.append(
                (
                    clients,
                    statistics.median(rates["direct"]),
                    statistics.median(rates["service"]),
                    statistics.median(ratios),
                    statistics.median(added),
                )
            )
    finally:
        service.stop()
    pinned = ", engine pinned to CPU 1, service and clients to CPU 0" if args.pin else ""
    engine = " ".join(args.engine_env) or "embedded SmolLM2, OpenVINO"
    print(
        f"\nstand-in engine ({engine}), {args.tokens} tokens per answer, {args.rounds} rounds"
        f"{pinned}; medians over rounds, ratio and TTFT added paired within each round\n"
    )
    print("| clients | direct tok/s | through the service tok/s | ratio | TTFT added |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for clients, d_rate, s_rate, ratio, ttft_added in table:
        print(f"| {clients} | {d_rate:.1f} | {s_rate:.1f} | {ratio:.3f} | {ttft_added:+.1f} ms |")


if __name__ == "__main__":
    main()
