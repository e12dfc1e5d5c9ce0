"""Interactive clients next to a flooding one: fair admission against first-come.

    python benchmarks/bench_fairness.py --compare ../checkout-before-fair-admission
    python benchmarks/bench_fairness.py --compare ../old --seconds 20 --rounds 3

Two services on the embedded SmolLM2 (OpenVINO), MAX_BATCH_SIZE=4: this tree (fair
queue) and the other checkout (first-come: the engine's own queue). In each round, for
--seconds, one client (its own address) keeps 24 streamed requests of 48 tokens in flight,
and 3 interactive clients (an address each) send one short request after another. Rounds
alternate between the two services. Reported: the interactive clients' time to first
token (p50, p95 over all their requests) and the flooding client's tokens per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import ServerProcess, free_port  # noqa: E402

FLOOD, INTERACTIVE = 24, 3


async def stream(
    client: httpx.AsyncClient, url: str, address: str, tokens: int
) -> tuple[float, int]:
    body = {
        "model": "avibe",
        "messages": [{"role": "user", "content": "Tell me about the sea."}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first, generated = 0.0, 0
    headers = {"X-Forwarded-For": address}
    async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            choices = event.get("choices") or [{}]
            if not first and (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter() - started
            if event.get("usage"):
                generated = int(event["usage"]["completion_tokens"])
    return first, generated


async def round_(url: str, seconds: float) -> tuple[list[float], float]:
    """(interactive TTFTs, flood tokens per second)."""
    end = time.monotonic() + seconds
    ttfts: list[float] = []
    flood_tokens = 0
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=100)) as client:

        async def flooder() -> None:
            nonlocal flood_tokens
            while time.monotonic() < end:
                flood_tokens += (await stream(client, url, "10.0.0.1", 48))[1]

        async def interactive(n: int) -> None:
            while time.monotonic() < end:
                ttfts.append((await stream(client, url, f"10.0.1.{n}", 8))[0])

        started = time.monotonic()
        await asyncio.gather(
            *(flooder() for _ in range(FLOOD)), *(interactive(n) for n in range(INTERACTIVE))
        )
        wall = time.monotonic() - started
    return ttfts, flood_tokens / wall


def service(tmp: Path, name: str, source: Path | None) -> ServerProcess:
    env = {
        "MAX_BATCH_SIZE": "4",
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "RATE_LIMIT_PER_HOUR": "1000000",
        "LOG_LEVEL": "WARNING",
    }
    if source is not None:
        env["PYTHONPATH"] = str(source.resolve() / "src")
    return ServerProcess([sys.executable, "-m", "avito_ai"], env, tmp / f"{name}.log", free_port())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--compare", type=Path, required=True, help="checkout before fair admission"
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-fairness-"))
    servers = {"fair queue (this tree)": service(tmp, "fair", None)}
    servers[f"first-come ({args.compare.name})"] = service(tmp, "fifo", args.compare)
    results: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in servers}
    try:
        for srv in servers.values():
            srv.wait_ready(120)
        for _ in range(args.rounds):
            for name, srv in servers.items():
                ttfts, rate = asyncio.run(round_(srv.url, args.seconds))
                results[name][0].extend(ttfts)
                results[name][1].append(rate)
    finally:
        for srv in servers.values():
            srv.stop()
    print(
        f"{FLOOD} flooding streams + {INTERACTIVE} interactive clients, MAX_BATCH_SIZE=4, "
        f"{args.rounds} x {args.seconds:.0f} s alternating\n"
    )
    print("| admission | interactive requests | TTFT p50 | TTFT p95 | flood tok/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (ttfts, rates) in results.items():
        p95 = statistics.quantiles(ttfts, n=20)[-1] if len(ttfts) >= 2 else ttfts[0]
        print(
            f"| {name} | {len(ttfts)} | {statistics.median(ttfts) * 1000:.0f} ms "
            f"| {p95 * 1000:.0f} ms | {statistics.median(rates):.1f} |"
        )


if __name__ == "__main__":
    main()
