"""Redis operations per request, counted by Redis itself (INFO commandstats), for the
capacity model (docs/redis.md, docs/capacity.md).

    python benchmarks/redis_ops.py                 # ~20 s; needs redis-server
    python benchmarks/redis_ops.py --requests 500

One service (fake engine, one process) on a fresh Redis with request limits and both token
budgets on; per kind of request, the statistics are reset, N requests are sent (each from
its own client, so none is refused) and Redis's counts are divided by N: round trips (the
script calls the service sent) and every command executed, those run inside the Lua
scripts included; and the time Redis spent executing them (commandstats' usec: the
scripts' run time, not the network or Redis's event loop).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import dev_server, free_port, serving  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

# What the service sends on a request's path: scripts only (the limits' moving windows,
# the budgets' reserve and settle). Everything else in commandstats ran inside them.
SENT = {"evalsha", "eval", "script|load"}


def counts(client: redis.Redis) -> tuple[dict[str, int], float]:
    """(calls per command, microseconds spent in the commands the service sent)."""
    stats = {k.removeprefix("cmdstat_"): v for k, v in client.info("commandstats").items()}
    spent = sum(float(v["usec"]) for k, v in stats.items() if k in SENT)
    return {k: int(v["calls"]) for k, v in stats.items()}, spent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="redis-ops-"))
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, decode_responses=True)
    wait_until(client.ping, 10, "redis-server", ignoring=(redis.ConnectionError,))
    env = {
        "AVIBE_BACKEND": "fake",
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_STORAGE_URI": f"redis://127.0.0.1:{port}/0",
        "RATE_LIMIT_PER_MINUTE": "1000",
        "RATE_LIMIT_PER_HOUR": "10000",
        "TOKENS_PER_MINUTE": "100000",
        "TOKENS_PER_DAY": "1000000",
    }
    kinds = {
        "GET /api/health (request limits)": ("GET", "/api/health", None),
        "POST /api/v1/text/generate (limits + token budgets)": (
            "POST",
            "/api/v1/text/generate",
            {"prompt": "one two three", "max_tokens": 8},
        ),
    }
    rows = []
    try:
        with serving(dev_server(env, tmp / "server.log"), 60) as srv, httpx.Client() as http:
            for name, (method, path, body) in kinds.items():
                for warm in range(3):  # scripts loaded, connections open
                    headers = {"X-Forwarded-For": f"10.255.0.{warm + 1}"}
                    http.request(method, srv.url + path, json=body, headers=headers)
                client.config_resetstat()
                before, usec_before = counts(client)
                for i in range(args.requests):
                    headers = {"X-Forwarded-For": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"}
                    r = http.request(method, srv.url + path, json=body, headers=headers)
                    r.raise_for_status()
                after, usec = counts(client)
                calls = {k: after[k] - before.get(k, 0) for k in after}
                calls.pop("config|resetstat", None)
                calls.pop("info", None)
                sent = sum(v for k, v in calls.items() if k in SENT)
                detail = ", ".join(f"{k} {v / args.requests:.2f}" for k, v in sorted(calls.items()))
                total = sum(calls.values()) / args.requests
                cpu_us = (usec - usec_before) / args.requests
                rows.append(
                    f"| {name} | {sent / args.requests:.2f} | {total:.2f} | {cpu_us:.1f} µs "
                    f"| {detail} |"
                )
    finally:
        server.terminate()
    print(f"{args.requests} requests per kind, each from its own client; per request:\n")
    print("| request | round trips | commands executed | Redis time | by command |")
    print("| --- | ---: | ---: | ---: | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
