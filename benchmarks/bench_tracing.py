"""What tracing costs: the same service with OpenTelemetry on (exporting to a receiver in
this process) and off, asked in turns, request by request, in one run.

    python benchmarks/bench_tracing.py                   # ~1 minute
    python benchmarks/bench_tracing.py --requests 500
    python benchmarks/bench_tracing.py --compare ../old-checkout   # its tracing too

Reported per path: median and p95 latency on and off, and the median of the paired
differences (each "on" request against the "off" one right after it, so a slow spell of
the machine hits both). `GET /api/health` (a probe) and a streamed chat answer of 32
tokens from the fake engine (no model cost: what differs is the service alone). With
`--compare`, that checkout's service traced as well, against the same untraced one.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.test_tracing import Receiver  # noqa: E402
from tests.servers import ServerProcess, dev_server, serving  # noqa: E402

ENV = {
    "AVIBE_BACKEND": "fake",
    "RATE_LIMIT_PER_MINUTE": "1000000",
    "RATE_LIMIT_PER_HOUR": "1000000",
    "LOG_LEVEL": "WARNING",
}
CHAT = {
    "model": "avibe",
    "messages": [{"role": "user", "content": "one two three"}],
    "max_tokens": 32,
    "ignore_eos": True,
    "stream": True,
}


def timed(client: httpx.Client, method: str, url: str, **kwargs: Any) -> float:
    started = time.perf_counter()
    r = client.request(method, url, **kwargs)
    r.raise_for_status()
    return time.perf_counter() - started


def compare(
    on: ServerProcess, off: ServerProcess, n: int, method: str, path: str, **kw: Any
) -> str:
    with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b:
        for _ in range(20):  # warm-up
            timed(a, method, on.url + path, **kw)
            timed(b, method, off.url + path, **kw)
        ons, offs = [], []
        for i in range(n):
            pair = [(a, on.url, ons), (b, off.url, offs)]
            for client, base, out in pair if i % 2 else pair[::-1]:
                out.append(timed(client, method, base + path, **kw))
    diffs = [x - y for x, y in zip(ons, offs, strict=True)]

    def ms(values: list[float], q: float) -> str:
        return f"{statistics.quantiles(values, n=100)[int(q) - 1] * 1000:.2f}" if q < 100 else ""

    return (
        f"| {method} {path} | {statistics.median(offs) * 1000:.2f} | {ms(offs, 95)} | "
        f"{statistics.median(ons) * 1000:.2f} | {ms(ons, 95)} | "
        f"{statistics.median(diffs) * 1000:+.2f} ms |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--compare", type=Path, help="another checkout, traced alongside")
    args = parser.parse_args()
    receiver = Receiver()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    traced = {**ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "500"}
    with contextlib.ExitStack() as stack:
        off = stack.enter_context(serving(dev_server(ENV, tmp / "off.log"), 60))
        tracing = {
            "this tree": stack.enter_context(serving(dev_server(traced, tmp / "on.log"), 60))
        }
        if args.compare is not None:  # ahead of this tree's editable install on sys.path
            other = {**traced, "PYTHONPATH": str(args.compare.resolve() / "src")}
            server = dev_server(other, tmp / "other.log")
            tracing[args.compare.name] = stack.enter_context(serving(server, 60))
        for name, on in tracing.items():
            print(f"\ntraced: {name}\n")
            print("| request | off median ms | off p95 | on median ms | on p95 | paired added |")
            print("| --- | ---: | ---: | ---: | ---: | ---: |")
            print(compare(on, off, args.requests, "GET", "/api/health"))
            print(compare(on, off, args.requests // 3, "POST", "/v1/chat/completions", json=CHAT))
    print(f"\nspans received: {len(receiver.spans)}")
    receiver.server.shutdown()


if __name__ == "__main__":
    main()
