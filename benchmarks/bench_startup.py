"""What a server's start costs: seconds to live and to ready, and the CPU it used by then.

    python benchmarks/bench_startup.py                        # the fake engines, 3 starts
    python benchmarks/bench_startup.py --embedded              # SmolLM2 on OpenVINO
    python benchmarks/bench_startup.py --tree /tmp/base        # another checkout beside it

`python app_production.py` in each tree (its own src/ first on PYTHONPATH, this venv), one
start at a time, the trees taking turns; CPU is the process's user + system time 5 s after
it was ready (the start-up's background work included). Every server start in the test
suite pays this, and every gunicorn worker.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import free_port  # noqa: E402


def start(tree: Path, env: dict[str, str], settle: float) -> tuple[float, float, float]:
    port = free_port()
    env = {
        **os.environ,
        **env,
        "PYTHONPATH": str(tree / "src"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "app_production.py"],
        cwd=tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    live: float | None = None
    try:
        while time.monotonic() - began < 180:
            try:
                if live is None:
                    if httpx.get(f"http://127.0.0.1:{port}/api/health/live").status_code == 200:
                        live = time.monotonic() - began
                elif httpx.get(f"http://127.0.0.1:{port}/api/health/ready").status_code == 200:
                    ready = time.monotonic() - began
                    time.sleep(settle)  # the start-up's background work, if any
                    cpu = psutil.Process(proc.pid).cpu_times()
                    return live, ready, cpu.user + cpu.system
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # the poll's pace
        raise SystemExit(f"{tree}: not ready in 180 s")
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", type=Path, default=[], help="also this one")
    parser.add_argument("--embedded", action="store_true", help="SmolLM2 on OpenVINO")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0)
    args = parser.parse_args()
    env = {"RATE_LIMIT_PER_MINUTE": "100000"}
    if not args.embedded:
        env |= {"AVIBE_BACKEND": "fake", "AVISION_BACKEND": "fake"}
    trees = [*args.tree, ROOT]
    seen: dict[Path, list[tuple[float, float, float]]] = {tree: [] for tree in trees}
    for _ in range(args.starts):
        for tree in trees:
            seen[tree].append(start(tree, env, args.settle))
    print(f"{'tree':<24} {'live s':>7} {'ready s':>8} {'CPU s':>6}   (medians of {args.starts})")
    for tree, runs in seen.items():
        live, ready, cpu = (statistics.median(column) for column in zip(*runs, strict=True))
        print(f"{tree!s:<24} {live:7.2f} {ready:8.2f} {cpu:6.2f}")


if __name__ == "__main__":
    main()
