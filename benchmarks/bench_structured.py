"""Structured output's cost on the OpenVINO engine, over HTTP, in one run.

    python benchmarks/bench_structured.py --rounds 3

One dev server on the embedded SmolLM2. Rounds alternate, request by request, between a
plain answer and one under a JSON schema (a free-text field, so the model writes about as
much either way), at 1 client and at 16. Reported per round: generated tokens per second
over the round's wall time, each kind against the other; and the time to first token added
by a schema never seen before (its grammar compiled, in our service and in OpenVINO) and by
one already cached, against no schema.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_front_door import one as timed  # noqa: E402  (a streamed answer, timed)
from tests.servers import ServerProcess  # noqa: E402

PROMPT = "Describe a used bicycle for sale in a few sentences."
TOKENS = 48


def schema(name: str = "description") -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "listing",
            "schema": {
                "type": "object",
                "properties": {"condition": {"enum": ["new", "used"]}, name: {"type": "string"}},
                "required": ["condition", name],
            },
        },
    }


async def one(client: httpx.AsyncClient, url: str, response_format: Any) -> tuple[float, int]:
    """(time to first token, tokens generated) of one streamed answer."""
    extra: dict[str, Any] = {"temperature": 0.7}
    if response_format is not None:
        extra["response_format"] = response_format
    return await timed(client, url, TOKENS, PROMPT, extra=extra)


async def throughput(url: str, clients: int, response_format: Any) -> float:
    async with httpx.AsyncClient(timeout=300) as client:
        started = time.perf_counter()
        done = await asyncio.gather(*(one(client, url, response_format) for _ in range(clients)))
        return sum(tokens for _, tokens in done) / (time.perf_counter() - started)


async def first_tokens(url: str, rounds: int) -> dict[str, float]:
    """Median time to first token (ms): no schema, a cached schema, a new schema."""
    seen: dict[str, list[float]] = {"none": [], "cached": [], "new": []}
    cached = schema()
    async with httpx.AsyncClient(timeout=300) as client:
        await one(client, url, cached)  # compiled once, before the clock
        for _ in range(rounds * 3):
            for kind, response_format in (
                ("none", None),
                ("cached", cached),
                ("new", schema("d" + uuid.uuid4().hex[:12])),
            ):
                seen[kind].append((await one(client, url, response_format))[0] * 1000)
    return {kind: statistics.median(values) for kind, values in seen.items()}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-structured-"))
    env = {"RATE_LIMIT_PER_MINUTE": "1000000", "RATE_LIMIT_PER_HOUR": "1000000"}
    from tests.servers import free_port

    server = ServerProcess(
        [sys.executable, "app_production.py"], env, folder / "server.log", free_port()
    )
    try:
        server.wait_ready(180)
        for clients in (1, 16):
            ratios = []
            for _ in range(args.rounds):
                plain = await throughput(server.url, clients, None)
                constrained = await throughput(server.url, clients, schema())
                ratios.append(constrained / plain)
                print(
                    f"{clients:>2} clients: {plain:6.1f} tok/s plain, {constrained:6.1f} with "
                    f"a schema: {constrained / plain:.2f}x",
                    flush=True,
                )
            print(f"{clients:>2} clients: median {statistics.median(ratios):.2f}x", flush=True)
        ttft = await first_tokens(server.url, args.rounds)
        cached, new = ttft["cached"] - ttft["none"], ttft["new"] - ttft["none"]
        print(
            f"time to first token: {ttft['none']:.1f} ms plain; a cached schema "
            f"{cached:+.1f} ms; a new schema {new:+.1f} ms"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
