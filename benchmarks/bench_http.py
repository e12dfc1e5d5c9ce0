"""Throughput over HTTP against the embedded model (what a user of the service sees).

    python benchmarks/bench_http.py                 # writes the table to stdout
    python benchmarks/bench_http.py --markdown docs/benchmarks.md
    python benchmarks/bench_http.py --compare ../old-checkout   # this tree against another

For 1, 4 and 16 concurrent clients it measures aggregate output tokens/s (64 tokens per
request, greedy, EOS ignored) for the service as shipped (continuous batching) and for
the naive design (MAX_BATCH_SIZE=1: one request at a time behind the model), beside the
model's own `generate()` in one process, single stream, on the same weights and dtype.
All figures come from one run on one machine, so their ratios are what to read; the
single-stream pair is measured alternately, request by request.

`--compare DIR` instead serves this tree and the service code of another checkout (its
`src/`, e.g. a `git worktree` of an older commit) side by side with the same settings,
alternating between the two round by round, and reports the median of each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import ServerProcess, free_port  # noqa: E402

PROMPTS = [
    "Write a story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe a walk through a forest in autumn.",
    "Give advice to someone selling a used car.",
    "What makes a good cup of coffee?",
    "Tell me about the history of Moscow.",
    "How do airplanes stay in the air?",
    "Write a letter to a friend about your holiday.",
]


def start(batch: int, tmp: Path, source: Path | None = None) -> ServerProcess:
    env = {
        "MAX_BATCH_SIZE": str(batch),
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "RATE_LIMIT_PER_HOUR": "1000000",
        "LOG_LEVEL": "WARNING",
    }
    name = f"bench-{batch}"
    if source is not None:  # ahead of this tree's editable install on sys.path
        env["PYTHONPATH"] = str(source.resolve() / "src")
        name += "-" + source.resolve().name
    srv = ServerProcess(
        [sys.executable, "-m", "avito_ai", "serve"], env, tmp / f"{name}.log", free_port()
    )
    srv.wait_ready(600)
    return srv


async def run_clients(url: str, clients: int, per_client: int, tokens: int) -> float:
    """Aggregate generated tokens per second of `clients` concurrent request loops."""
    async with httpx.AsyncClient(timeout=600) as http:

        async def loop(i: int) -> int:
            total = 0
            for j in range(per_client):
                r = await http.post(
                    url + "/api/v1/text/generate",
                    json={
                        "prompt": PROMPTS[(i + j) % len(PROMPTS)],
                        "max_tokens": tokens,
                        "temperature": 0,
                        "ignore_eos": True,
                    },
                )
                r.raise_for_status()
                total += r.json()["data"]["generated_tokens"]
            return total

        started = time.perf_counter()
        counts = await asyncio.gather(*(loop(i) for i in range(clients)))
        return sum(counts) / (time.perf_counter() - started)


class Baseline:
    """The model's own generate(), one stream, same loading path and dtype as the server."""

    def __init__(self) -> None:
        from avito_ai.config import Settings
        from avito_ai.engines.transformers.device import resolve_placement
        from avito_ai.engines.transformers.loading import load_text_model, resolve_text_source

        settings = Settings()
        self.placement = resolve_placement(settings.device, settings.dtype)
        loaded = load_text_model(
            resolve_text_source(None), self.placement, settings.model_cache_dir
        )
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.rate(8, 0)  # warm-up

    def rate(self, tokens: int, i: int) -> float:
        import torch

        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        ).to(self.placement.device)
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                **ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
            )
        return (out.shape[1] - ids["input_ids"].shape[1]) / (time.perf_counter() - started)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def compare(other: Path, args: argparse.Namespace, tmp: Path) -> str:
    """This tree and `other` side by side, alternating round by round; medians."""
    trees = {"this tree": None, str(other): other}
    servers = {name: start(16, tmp, source) for name, source in trees.items()}
    rates: dict[str, dict[int, list[float]]] = {name: {} for name in trees}
    try:
        for srv in servers.values():
            asyncio.run(run_clients(srv.url, 1, 1, 8))  # warm-up
        for _ in range(args.rounds):
            for c in args.concurrency:
                for name, srv in servers.items():
                    per_client = 1 if c == 1 else 2
                    rate = asyncio.run(run_clients(srv.url, c, per_client, args.tokens))
                    rates[name].setdefault(c, []).append(rate)
    finally:
        for srv in servers.values():
            srv.stop()
    header = " | ".join(f"{c} client{'s' * (c > 1)}" for c in args.concurrency)
    lines = [
        f"{args.tokens} output tokens per request, greedy, MAX_BATCH_SIZE=16; median of "
        f"{args.rounds} alternating rounds; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores.",
        "",
        f"| service code | {header} |",
        "| --- |" + " --- |" * len(args.concurrency),
    ]
    mine = {c: median(v) for c, v in rates["this tree"].items()}
    for name, by_c in rates.items():
        cells = []
        for c, values in by_c.items():
            cell = f"{median(values):.1f} tok/s"
            if name != "this tree":
                cell += f" (this tree: {mine[c] / median(values):.2f}x)"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=5, help="alternations, 1 client")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--compare", type=Path, help="another checkout to serve side by side")
    args = parser.parse_args()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "avito-bench"
    tmp.mkdir(exist_ok=True)
    if args.compare is not None:
        print(compare(args.compare, args, tmp))
        return

    # Machines are noisy: the single-stream comparison alternates generate() and one HTTP
    # request, round by round, and takes the median of each.
    base = Baseline()
    dtype = base.placement.dtype_name
    gen_rates: list[float] = []
    rows: dict[str, dict[int, float]] = {}
    for name, batch in (("service (continuous batching)", 16), ("naive (one at a time)", 1)):
        srv = start(batch, tmp)
        try:
            asyncio.run(run_clients(srv.url, 1, 1, 8))  # warm-up
            singles = []
            for i in range(args.rounds):
                gen_rates.append(base.rate(args.tokens, i))
                singles.append(asyncio.run(run_clients(srv.url, 1, 1, args.tokens)))
            rows[name] = {args.concurrency[0]: median(singles)}
            for c in args.concurrency[1:]:
                rows[name][c] = asyncio.run(run_clients(srv.url, c, 2, args.tokens))
        finally:
            srv.stop()
    baseline = median(gen_rates)

    one = rows["service (continuous batching)"][args.concurrency[0]]
    lines = [
        f"Embedded SmolLM2-135M-Instruct, {dtype}, {args.tokens} output tokens per request, "
        f"greedy; {platform.processor() or platform.machine()}, {os.cpu_count()} cores.",
        "",
        "| design | " + " | ".join(f"{c} client{'s' * (c > 1)}" for c in args.concurrency) + " |",
        "| --- |" + " --- |" * len(args.concurrency),
        f"| model's own `generate()`, one stream | {baseline:.1f} tok/s |"
        + " |" * (len(args.concurrency) - 1),
    ]
    for name, by_c in rows.items():
        cells = [f"{v:.1f} tok/s ({v / one:.1f}x)" for v in by_c.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Service at 1 client: {one / baseline:.0%} of `generate()`. "
        f"At {args.concurrency[-1]} clients: "
        f"{rows['service (continuous batching)'][args.concurrency[-1]] / one:.1f}x one client.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
