"""Throughput over HTTP against the embedded model (what a user of the service sees).

    python benchmarks/bench_http.py                     # engines side by side (~10 minutes)
    python benchmarks/bench_http.py --markdown out.md   # also write the table to a file
    python benchmarks/bench_http.py --gaps              # a stream while long prompts arrive
    python benchmarks/bench_http.py --compare ../old-checkout   # this tree against another

Default: for 1, 4, 16 and 32 concurrent clients, aggregate output tokens/s (64 tokens per
request, greedy, EOS ignored) of the service on the OpenVINO engine and on the transformers
engine, both over HTTP, beside OpenVINO GenAI's own pipeline in this process driven by a
bare loop (the ceiling: no HTTP, no service). All three are measured in one run,
alternating round by round, median of the rounds: machines are noisy, so read the ratios.

`--gaps` starts one stream and, while it runs, sends three 6,000-token prompts: it reports
the stream's normal and worst gap between tokens, for each engine (chunked prefill keeps the
worst gap near normal on OpenVINO).

`--compare DIR` serves this tree and the service code of another checkout (its `src/`, e.g.
a `git worktree` of an older commit) side by side with the same settings.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

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
ENGINES = ("openvino", "transformers")


def start(tmp: Path, name: str, source: Path | None = None, **env: str) -> ServerProcess:
    env = {
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "RATE_LIMIT_PER_HOUR": "1000000",
        "MAX_PROMPT_LENGTH": "100000",
        "MAX_PROMPT_TOKENS": "100000",
        "MAX_TOKENS_AVIBE": "4096",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    if source is not None:  # ahead of this tree's editable install on sys.path
        env["PYTHONPATH"] = str(source.resolve() / "src")
    srv = ServerProcess(
        [sys.executable, "-m", "avito_ai", "serve"], env, tmp / f"bench-{name}.log", free_port()
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


class Ceiling:
    """OpenVINO GenAI's own pipeline in this process: the same GGUF, scheduler settings and
    chat-templated prompts as the service, stepped by a bare loop."""

    def __init__(self, max_batch: int) -> None:
        import openvino_genai as genai

        from avito_ai.config import Settings
        from avito_ai.engines.openvino.loading import load_pipeline, resolve_source

        settings = Settings(max_batch_size=max_batch)
        loaded = load_pipeline(resolve_source(None), settings.in_process, settings.openvino)
        self.genai, self.pipe, self.tokenizer = genai, loaded.pipe, loaded.tokenizer
        self.next_id = 0

    def rate(self, clients: int, per_client: int, tokens: int) -> float:
        """`clients` request loops of `per_client` requests each, as run_clients does."""
        config = self.genai.GenerationConfig()
        config.max_new_tokens, config.ignore_eos, config.do_sample = tokens, True, False
        pending = [[(i + j) % len(PROMPTS) for j in range(per_client)] for i in range(clients)]
        started = time.perf_counter()
        generated = 0
        running: dict[int, tuple[Any, int]] = {}  # client -> (handle, tokens read)

        def submit(client: int) -> None:
            prompt = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": PROMPTS[pending[client].pop(0)]}],
                add_generation_prompt=True,
            )
            ids = self.tokenizer.encode(prompt, add_special_tokens=False).input_ids
            running[client] = (self.pipe.add_request(self.next_id, ids, config), 0)
            self.next_id += 1

        for client in range(clients):
            submit(client)
        while running:
            self.pipe.step()
            for client, (handle, _) in list(running.items()):
                if handle.can_read():
                    for output in handle.read().values():
                        generated += len(output.generated_ids)
                if handle.get_status() != self.genai.GenerationStatus.RUNNING:
                    del running[client]
                    if pending[client]:
                        submit(client)
        return generated / (time.perf_counter() - started)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def per_client(clients: int) -> int:
    return 1 if clients == 1 else 2


def engines_table(args: argparse.Namespace, tmp: Path) -> str:
    batch = max(args.concurrency)
    ceiling = Ceiling(batch)
    ceiling.rate(1, 1, 8)  # warm-up
    servers = {e: start(tmp, e, AVIBE_BACKEND=e, MAX_BATCH_SIZE=str(batch)) for e in ENGINES}
    rows = {"OpenVINO GenAI in process (ceiling)": {}, **{e: {} for e in ENGINES}}
    rates: dict[str, dict[int, list[float]]] = {name: {} for name in rows}
    try:
        for srv in servers.values():
            asyncio.run(run_clients(srv.url, 1, 1, 8))  # warm-up
        for _ in range(args.rounds):
            for c in args.concurrency:
                n = per_client(c)
                measured = {"OpenVINO GenAI in process (ceiling)": ceiling.rate(c, n, args.tokens)}
                for engine, srv in servers.items():
                    measured[engine] = asyncio.run(run_clients(srv.url, c, n, args.tokens))
                for name, rate in measured.items():
                    rates[name].setdefault(c, []).append(rate)
                print(f"{c} clients: " + ", ".join(f"{k} {v:.1f}" for k, v in measured.items()))
    finally:
        for srv in servers.values():
            srv.stop()
    med = {name: {c: median(v) for c, v in by_c.items()} for name, by_c in rates.items()}
    top = med["OpenVINO GenAI in process (ceiling)"]
    ov, tf = med["openvino"], med["transformers"]

    def ratio(a: str, b: str, c: int) -> float:  # median of the per-round ratios
        return median([x / y for x, y in zip(rates[a][c], rates[b][c], strict=True)])

    header = " | ".join(f"{c} client{'s' * (c > 1)}" for c in args.concurrency)
    lines = [
        f"Embedded SmolLM2-135M-Instruct Q4_1 GGUF, {args.tokens} output tokens per request, "
        f"greedy, EOS ignored, MAX_BATCH_SIZE={batch}; median of {args.rounds} alternating "
        f"rounds (ratios: median of the per-round ratios); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores.",
        "",
        f"| tok/s | {header} |",
        "| --- |" + " --- |" * len(args.concurrency),
        "| OpenVINO GenAI in process (ceiling) | "
        + " | ".join(f"{top[c]:.1f}" for c in args.concurrency)
        + " |",
        "| service, OpenVINO engine (HTTP) | "
        + " | ".join(
            f"{ov[c]:.1f} ({ratio('openvino', 'OpenVINO GenAI in process (ceiling)', c):.0%} "
            f"of ceiling, {ratio('openvino', 'transformers', c):.1f}x transformers)"
            for c in args.concurrency
        )
        + " |",
        "| service, transformers engine (HTTP) | "
        + " | ".join(f"{tf[c]:.1f}" for c in args.concurrency)
        + " |",
    ]
    return "\n".join(lines)


async def stream_gaps(url: str, long_prompt: str, tokens: int) -> tuple[float, float]:
    """(median, worst) seconds between a stream's deltas while three long prompts arrive."""
    async with httpx.AsyncClient(timeout=600) as http:
        arrivals: list[float] = []
        under_way = asyncio.Event()

        async def stream() -> None:
            body = {"prompt": PROMPTS[0], "max_tokens": tokens, "ignore_eos": True,
                    "temperature": 0, "stream": True}  # fmt: skip
            async with http.stream("POST", url + "/api/v1/text/generate", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data:") and '"text"' in line:
                        arrivals.append(time.perf_counter())
                        if len(arrivals) == 20:
                            under_way.set()

        async def long_one() -> None:
            body = {"prompt": long_prompt, "max_tokens": 4, "temperature": 0}
            (await http.post(url + "/api/v1/text/generate", json=body)).raise_for_status()

        streaming = asyncio.create_task(stream())
        await under_way.wait()  # the stream is well under way
        await asyncio.gather(*(long_one() for _ in range(3)))
        await streaming
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    print("longest gaps (ms):", [round(g * 1000) for g in gaps[-8:]])
    return gaps[len(gaps) // 2], gaps[-1]


def gaps_table(args: argparse.Namespace, tmp: Path) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [
        "| engine | prompt tokens | normal gap | worst gap |",
        "| --- | --- | --- | --- |",
    ]
    setups = [
        ("openvino", {"OPENVINO_MAX_BATCHED_TOKENS": "256"}),  # the default
        ("openvino", {"OPENVINO_MAX_BATCHED_TOKENS": "64"}),
        ("transformers", {}),
    ]
    for engine, extra in setups:
        name = engine + "".join(f", {k}={v}" for k, v in extra.items())
        srv = start(tmp, f"gaps-{len(lines)}", AVIBE_BACKEND=engine, **extra)
        try:
            per_token = len(text) / prompt_tokens(srv.url, text)  # README: ~4k tokens
            long_prompt = (text * 4)[: int(6000 * per_token)]
            count = prompt_tokens(srv.url, long_prompt)
            long_prompt = long_prompt[: int(len(long_prompt) * 6000 / count)]
            count = prompt_tokens(srv.url, long_prompt)
            typical, worst = asyncio.run(stream_gaps(srv.url, long_prompt, 400))
        finally:
            srv.stop()
        lines.append(f"| {name} | 3 x {count} | {typical * 1000:.0f} ms | {worst * 1000:.0f} ms |")
        print(lines[-1])
    return "\n".join(lines)


def prompt_tokens(url: str, prompt: str) -> int:
    r = httpx.post(
        url + "/api/v1/text/generate", json={"prompt": prompt, "max_tokens": 1}, timeout=600
    )
    r.raise_for_status()
    return int(r.json()["data"]["input_tokens"])


def compare(other: Path, args: argparse.Namespace, tmp: Path) -> str:
    """This tree and `other` side by side, alternating round by round; medians."""
    trees = {"this tree": None, str(other): other}
    servers = {
        name: start(tmp, f"compare-{i}", source, MAX_BATCH_SIZE="16")
        for i, (name, source) in enumerate(trees.items())
    }
    rates: dict[str, dict[int, list[float]]] = {name: {} for name in trees}
    try:
        for srv in servers.values():
            asyncio.run(run_clients(srv.url, 1, 1, 8))  # warm-up
        for _ in range(args.rounds):
            for c in args.concurrency:
                for name, srv in servers.items():
                    rate = asyncio.run(run_clients(srv.url, c, per_client(c), args.tokens))
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
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--gaps", action="store_true", help="stream gaps under long prompts")
    parser.add_argument("--compare", type=Path, help="another checkout to serve side by side")
    args = parser.parse_args()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "avito-bench"
    tmp.mkdir(exist_ok=True)
    if args.compare is not None:
        table = compare(args.compare, args, tmp)
    elif args.gaps:
        table = gaps_table(args, tmp)
    else:
        table = engines_table(args, tmp)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
