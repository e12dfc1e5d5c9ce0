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
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_front_door import one  # noqa: E402  (a streamed answer, timed)
from tests.servers import ServerProcess, free_port  # noqa: E402

PROMPT = "Tell me about the sea."

FLOOD, INTERACTIVE = 24, 3


async def round_(url: str, seconds: float) -> tuple[list[float], float]:
    """(interactive TTFTs, flood tokens per second)."""
    end = time.monotonic() + seconds
    ttfts: list[float] = []
    flood_tokens = 0
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=100)) as client:

        async def flooder() -> None:
            nonlocal flood_tokens
            while time.monotonic() < end:
                flood_tokens += (
                    await one(client, url, 48, PROMPT, {"X-Forwarded-For": "10.0.0.1"})
                )[1]

        async def interactive(n: int) -> None:
            while time.monotonic() < end:
                address = {"X-Forwarded-For": f"10.0.1.{n}"}
                ttfts.append((await one(client, url, 8, PROMPT, address))[0])

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
