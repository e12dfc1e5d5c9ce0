"""What the service's own layers cost per request, measured with wrk against real servers.

    python benchmarks/bench_limiter.py                  # ~2 minutes; needs wrk (apt install wrk)
    python benchmarks/bench_limiter.py --duration 10 --rounds 5
    python benchmarks/bench_limiter.py --compare ../old-checkout   # also that tree's service

In one run, alternating round by round (median of the rounds; machines are noisy, so read
the ratios): a bare FastAPI app answering {"status": "ok"}, this service's
`/api/health/live` (every middleware, not rate-limited) and `/api/health` (rate-limited)
with `memory://` storage and with Redis. Each server is one uvicorn process with the fake
engine; wrk runs 10 connections on one thread, and a Lua script gives every request its
own client address (X-Forwarded-For from a trusted proxy), as real traffic from many
clients has, under the seed's limits (10 per minute, 100 per hour).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import ServerProcess, free_port  # noqa: E402

BARE_APP = """
from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def hello() -> dict[str, str]:
    return {"status": "ok"}
"""

MANY_CLIENTS_LUA = """
math.randomseed(os.time())
request = function()
  local ip = "10." .. math.random(0, 255) .. "." .. math.random(0, 255) .. "."
    .. math.random(1, 254)
  return wrk.format(nil, nil, {["X-Forwarded-For"] = ip})
end
"""


def service(tmp: Path, name: str, source: Path | None = None, **env: str) -> ServerProcess:
    settings = {"AVIBE_BACKEND": "fake", "LOG_LEVEL": "WARNING", **env}
    if source is not None:  # ahead of this tree's editable install on sys.path
        settings["PYTHONPATH"] = str(source.resolve() / "src")
    cmd = [sys.executable, "-m", "avito_ai"]
    return ServerProcess(cmd, settings, tmp / f"{name}.log", free_port())


def bare(tmp: Path) -> ServerProcess:
    (tmp / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    cmd = [
        sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port),
        "--log-level", "warning", "--no-access-log", "--app-dir", str(tmp),
    ]  # fmt: skip
    return ServerProcess(cmd, {}, tmp / "bare.log", port)


def wrk(srv: ServerProcess, path: str, script: Path, duration: int) -> tuple[float, float, str]:
    """(requests/s, server CPU microseconds per request, note). CPU time per request is the
    steadier figure on a shared machine: a neighbour's load slows wrk and the server alike
    but does not add CPU time to the server's requests."""
    process = psutil.Process(srv.proc.pid)
    before = process.cpu_times()
    out = subprocess.run(
        ["wrk", "-t1", "-c10", f"-d{duration}s", "-s", str(script), srv.url + path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = process.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, cpu / count * 1e6, f"{non_2xx.group(1)} non-2xx" if non_2xx else ""


def wait_up(srv: ServerProcess, path: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(srv.url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(srv.output())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", type=Path, help="another checkout, measured alongside")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="bench-limiter-"))
    script = tmp / "many_clients.lua"
    script.write_text(MANY_CLIENTS_LUA)
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    servers = {
        "bare": bare(tmp),
        "memory": service(tmp, "memory"),
        "redis": service(tmp, "redis", RATE_LIMIT_STORAGE_URI=f"redis://127.0.0.1:{redis_port}/0"),
    }
    targets = {
        "bare FastAPI hello": ("bare", "/"),
        "/api/health/live (not limited)": ("memory", "/api/health/live"),
        "/api/health, memory://": ("memory", "/api/health"),
        "/api/health, Redis": ("redis", "/api/health"),
    }
    if args.compare is not None:
        servers["other"] = service(tmp, "other", args.compare)
        targets[f"/api/health, memory://, {args.compare.name}"] = ("other", "/api/health")
    results: dict[str, list[float]] = {name: [] for name in targets}
    cpu_us: dict[str, list[float]] = {name: [] for name in targets}
    notes: dict[str, str] = {}
    try:
        wait_up(servers["bare"], "/")
        for name in servers.keys() - {"bare"}:
            wait_up(servers[name], "/api/health/live")
        for _ in range(args.rounds):
            for name, (server, path) in targets.items():
                rate, cpu, note = wrk(servers[server], path, script, args.duration)
                results[name].append(rate)
                cpu_us[name].append(cpu)
                notes[name] = note or notes.get(name, "")
    finally:
        for srv in servers.values():
            srv.stop()
        redis.terminate()
    bare_rates = results["bare FastAPI hello"]
    bare_cpu = cpu_us["bare FastAPI hello"]
    print(f"wrk -t1 -c10, {args.duration} s x {args.rounds} rounds, medians\n")
    print(
        "| target | req/s | × bare | server CPU per request | × bare (by CPU) |\n"
        "| --- | ---: | ---: | ---: | ---: |"
    )
    for name, rates in results.items():
        ratio = statistics.median(r / b for r, b in zip(rates, bare_rates, strict=True))
        by_cpu = statistics.median(b / c for c, b in zip(cpu_us[name], bare_cpu, strict=True))
        extra = f" ({notes[name]})" if notes.get(name) else ""
        print(
            f"| {name}{extra} | {statistics.median(rates):,.0f} | {ratio:.2f} "
            f"| {statistics.median(cpu_us[name]):.0f} µs | {by_cpu:.2f} |"
        )


if __name__ == "__main__":
    main()
