"""A-Vision on OpenVINO (continuous batching) against A-Vision on transformers, one run.

    python benchmarks/bench_vision.py                   # ~2 minutes
    python benchmarks/bench_vision.py --rounds 5 --tokens 128 --requests 16

Two services, started side by side: one on the tiny Qwen2.5-VL IR (tests/data, AVISION_
BACKEND=auto picks OpenVINO), one on the same model as a transformers checkpoint (built
from tests/tiny_vision_models.py, seed 0: the IR is its export). Each load sends
--requests streamed chat completions, each with its own image (sizes vary) and exactly
--tokens tokens (ignore_eos), from 1 client at a time and from 4 at once; the two services
take turns round by round. Reported per service and concurrency: requests per second over
the load and the median time to first token, medians of the rounds. Random weights: the
figures are the serving path's (image encoding, scheduling, batching), not a real model's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import ServerProcess, dev_server  # noqa: E402
from tests.tiny_vision_ir import TINY_VISION_IR  # noqa: E402
from tests.tiny_vision_models import build_tiny_qwen2_5_vl  # noqa: E402

SIZES = [(96, 64), (64, 96), (112, 112), (80, 56), (128, 72), (56, 112)]
ENV = {
    "RATE_LIMIT_PER_MINUTE": "1000000",
    "RATE_LIMIT_PER_HOUR": "1000000",
    "MAX_TOKENS_AVISION": "4000",
    "MAX_BATCH_SIZE": "8",
    "LOG_LEVEL": "WARNING",
}


def data_uri(size: tuple[int, int], seed: int) -> str:
    image = Image.effect_noise(size, 30 + seed).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def one(client: httpx.AsyncClient, url: str, image: str, tokens: int) -> float:
    """Time to first token of one streamed answer of exactly `tokens` tokens."""
    body: dict[str, Any] = {
        "model": "avision",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image}},
            {"type": "text", "text": "Что на фото?"}]}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    started = time.perf_counter()
    first = None
    generated = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
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
    if first is None or generated != tokens:
        raise RuntimeError(f"got {generated} tokens, not {tokens}")
    return first


async def load(url: str, images: list[str], tokens: int, clients: int) -> tuple[float, float]:
    """(requests per second, median time to first token) of `images` sent by `clients`."""
    queue = list(images)
    firsts: list[float] = []

    async def client_loop(http: httpx.AsyncClient) -> None:
        while queue:
            firsts.append(await one(http, url, queue.pop(), tokens))

    async with httpx.AsyncClient(timeout=600) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return len(images) / elapsed, statistics.median(firsts)


def start(name: str, model: str, logs: Path) -> ServerProcess:
    srv = dev_server({**ENV, "AVISION_MODEL": model}, logs / f"{name}.log")
    srv.wait_ready(300)
    engine = httpx.get(srv.url + "/api/health", timeout=10).json()["models"]["avision"]["engine"]
    print(f"{name}: A-Vision on {engine}", flush=True)
    return srv


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=8, help="image requests per load")
    args = parser.parse_args()
    images = [data_uri(SIZES[i % len(SIZES)], i) for i in range(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        checkpoint = build_tiny_qwen2_5_vl(logs / "checkpoint", seed=0)
        servers = {
            "openvino": start("openvino", str(TINY_VISION_IR), logs),
            "transformers": start("transformers", str(checkpoint), logs),
        }
        try:
            for srv in servers.values():  # warm up: first requests compile, allocate
                await load(srv.url, images[:2], 8, 2)
            results: dict[tuple[str, int], list[tuple[float, float]]] = {}
            for round_ in range(args.rounds):
                order = list(servers.items())
                for name, srv in order if round_ % 2 == 0 else order[::-1]:
                    for clients in (1, 4):
                        results.setdefault((name, clients), []).append(
                            await load(srv.url, images, args.tokens, clients)
                        )
        finally:
            for srv in servers.values():
                srv.stop()
    print(f"\n{args.requests} image requests of {args.tokens} tokens, {args.rounds} rounds")
    print(f"{'engine':<14}{'clients':>8}{'requests/s':>12}{'TTFT ms':>10}")
    for (name, clients), runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        ttft = statistics.median(t for _, t in runs) * 1000
        print(f"{name:<14}{clients:>8}{rate:>12.2f}{ttft:>10.1f}")


if __name__ == "__main__":
    asyncio.run(main())
