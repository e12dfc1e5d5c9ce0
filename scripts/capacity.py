"""How many front-door workers, engine GPUs and Redis operations a traffic needs.

    python scripts/capacity.py                      # the table in docs/capacity.md
    python scripts/capacity.py --rps 250 --gpu h200 # one traffic level
    python scripts/capacity.py --events-per-worker 20000 --redis-ops-per-request 8

Every input is a figure with a source (docs/capacity.md lists them): measured here
(benchmarks/bench_scale.py, redis-benchmark) or published (vLLM serving benchmarks of
Qwen3-8B on an H100). Placeholders that a later measurement replaces are marked so in
`MEASURED`. The model is deliberately linear: each tier has a capacity per unit, the traffic
needs demand/capacity units, rounded up, at a target utilization that leaves headroom.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class RequestClass:
    """One kind of request in the mix."""

    name: str
    share: float  # of all requests
    output_tokens: int  # generated per request (one SSE event each through the front)
    model: str  # "avibe" (text, Qwen3-8B architecture) or "avision" (Qwen2.5-VL-7B)


@dataclass(frozen=True)
class Mix:
    """The assumed request mix of a marketplace's assistant features."""

    classes: tuple[RequestClass, ...] = (
        # Chat and writing help (ad texts, replies): short prompts, answers of ~150 tokens.
        RequestClass("text chat", 0.70, 150, "avibe"),
        # Photo understanding (attributes, moderation): one image, a short answer.
        RequestClass("image question", 0.30, 100, "avision"),
    )

    def __post_init__(self) -> None:
        total = sum(c.share for c in self.classes)
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"the mix's shares add up to {total}, not 1")


@dataclass(frozen=True)
class Figures:
    """Capacities per unit of each tier."""

    # Front door: SSE events one gunicorn worker relays per second at saturation, and CPU a
    # request costs besides its events (middleware, validation, the upstream hop).
    events_per_worker: float = 13_500.0
    request_overhead_s: float = 0.0012
    workers_per_replica: int = 2  # WEB_CONCURRENCY in deploy/k8s
    # Redis: script calls a generation costs (the two rate-limit windows' hit and read, a
    # budget reservation and its settlement) and calls one primary's core serves a second.
    redis_ops_per_request: float = 6.0
    redis_ops_per_primary: float = 14_500.0
    # Engines, per H100: output tokens/s for text at the SLO, and image requests/s.
    text_tokens_per_gpu: float = 14_540.0
    vision_requests_per_gpu: float = 23.6
    # H200 over H100: decode is memory-bound (HBM 4.8 vs 3.35 TB/s); prefill and the vision
    # encoder are compute-bound (same FLOPs), so images are not scaled.
    h200_text_factor: float = 4.8 / 3.35
    h200_vision_factor: float = 1.0
    # Run every tier at most this busy: headroom for bursts, a lost replica, a failover.
    target_utilization: float = 0.6


# Which figures are measured, published, or placeholders awaiting a measurement.
MEASURED: dict[str, str] = {
    "events_per_worker": "measured: bench_scale.py saturation (issue 34's run: 13.2-13.7k)",
    "request_overhead_s": "placeholder: per-request CPU (bench_scale.py /api/health, TTFT)",
    "redis_ops_per_request": "measured: benchmarks/redis_ops.py, 6 script calls a generation "
    "(docs/redis.md)",
    "redis_ops_per_primary": "measured: 413 µs of Redis time for those 6 calls (docs/redis.md), "
    "so ~14,500 calls/s a primary's core",
    "text_tokens_per_gpu": "published: vLLM, Qwen3-8B bf16, one H100, chat 128/128, "
    "512 users at TTFT p99 2 s / ITL 50 ms (silybench-data)",
    "vision_requests_per_gpu": "derived: no published Qwen2.5-VL-7B serving figure; Qwen3-8B's "
    "prefill-1024-128 shape (3,018 tok/s / 128 tokens), an image being ~1,280 prompt tokens",
}


@dataclass(frozen=True)
class Sizing:
    rps: float
    gpu: str
    events_per_s: float
    front_workers: int
    front_replicas: int
    redis_ops_per_s: float
    redis_primaries: int
    text_gpus: int
    vision_gpus: int
    utilization: dict[str, float] = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return self.text_gpus + self.vision_gpus


def demand(rps: float, mix: Mix) -> tuple[float, float, float]:
    """(SSE events/s through the front, text output tokens/s, image requests/s)."""
    events = sum(rps * c.share * c.output_tokens for c in mix.classes)
    text = sum(rps * c.share * c.output_tokens for c in mix.classes if c.model == "avibe")
    images = sum(rps * c.share for c in mix.classes if c.model == "avision")
    return events, text, images


def units(load: float, per_unit: float, target: float) -> int:
    """Units needed to carry `load` at `target` utilization (at least one when load > 0)."""
    if load <= 0:
        return 0
    return max(1, math.ceil(load / (per_unit * target) - 1e-9))


def size(rps: float, figures: Figures, mix: Mix, gpu: str = "h100") -> Sizing:
    """What `rps` requests per second of the mix need."""
    if gpu not in ("h100", "h200"):
        raise ValueError(f"gpu must be h100 or h200, not {gpu!r}")
    events, text_tokens, images = demand(rps, mix)
    target = figures.target_utilization
    # A worker's second: its events plus each request's fixed cost.
    worker_seconds = events / figures.events_per_worker + rps * figures.request_overhead_s
    workers = units(worker_seconds, 1.0, target)
    replicas = math.ceil(workers / figures.workers_per_replica) if workers else 0
    redis_ops = rps * figures.redis_ops_per_request
    primaries = units(redis_ops, figures.redis_ops_per_primary, target)
    text_per_gpu = figures.text_tokens_per_gpu * (figures.h200_text_factor if gpu == "h200" else 1)
    vision_per_gpu = figures.vision_requests_per_gpu * (
        figures.h200_vision_factor if gpu == "h200" else 1
    )
    text_gpus = units(text_tokens, text_per_gpu, target)
    vision_gpus = units(images, vision_per_gpu, target)
    utilization = {
        "front": worker_seconds / workers if workers else 0.0,
        "redis": redis_ops / (primaries * figures.redis_ops_per_primary) if primaries else 0.0,
        "text GPUs": text_tokens / (text_gpus * text_per_gpu) if text_gpus else 0.0,
        "vision GPUs": images / (vision_gpus * vision_per_gpu) if vision_gpus else 0.0,
    }
    return Sizing(
        rps, gpu, events, workers, replicas, redis_ops, primaries, text_gpus, vision_gpus,
        utilization,
    )  # fmt: skip


def ceilings(
    figures: Figures,
    mix: Mix,
    front_workers: int,
    redis_primaries: int,
    text_gpus: int,
    vision_gpus: int,
    gpu: str = "h100",
) -> dict[str, float]:
    """Requests/s of the mix at which each tier of a fixed deployment is fully busy: the
    smallest is the tier that saturates first."""
    events, text_tokens, images = demand(1.0, mix)  # per request/s
    per_rps_worker = events / figures.events_per_worker + figures.request_overhead_s
    text_per_gpu = figures.text_tokens_per_gpu * (figures.h200_text_factor if gpu == "h200" else 1)
    vision_per_gpu = figures.vision_requests_per_gpu * (
        figures.h200_vision_factor if gpu == "h200" else 1
    )
    out = {
        "front": front_workers / per_rps_worker,
        "redis": redis_primaries * figures.redis_ops_per_primary / figures.redis_ops_per_request,
    }
    if text_tokens:
        out["text GPUs"] = text_gpus * text_per_gpu / text_tokens
    if images:
        out["vision GPUs"] = vision_gpus * vision_per_gpu / images
    return out


UNIT_NAMES = {
    "front": "front worker",
    "redis": "Redis primary",
    "text GPUs": "text GPU",
    "vision GPUs": "vision GPU",
}
TIER_UNITS = {
    "front": "front_workers",
    "redis": "redis_primaries",
    "text GPUs": "text_gpus",
    "vision GPUs": "vision_gpus",
}

# The traffic levels of docs/capacity.md: what one H100 carries, up to a national peak.
LEVELS: tuple[tuple[str, float], ...] = (
    ("one GPU's worth", 0.0),  # filled in: what one text and one vision GPU carry
    ("a team's pilot", 5.0),
    ("one region", 100.0),
    ("national, average", 1_500.0),
    ("national, peak", 5_000.0),
)


def one_gpu_rps(figures: Figures, mix: Mix, gpu: str = "h100") -> float:
    """Requests/s that one GPU for each model carries at the target utilization."""
    full = min(ceilings(figures, mix, 10**9, 10**9, 1, 1, gpu).values())
    return full * figures.target_utilization


def table(figures: Figures, mix: Mix, gpu: str) -> str:
    lines = [
        f"| traffic | req/s | SSE events/s | front workers ({figures.workers_per_replica} a "
        f"replica) | Redis ops/s | Redis primaries | {gpu.upper()} text | {gpu.upper()} vision |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, rps in LEVELS:
        rps = rps or one_gpu_rps(figures, mix, gpu)
        s = size(rps, figures, mix, gpu)
        lines.append(
            f"| {label} | {rps:,.0f} | {s.events_per_s:,.0f} | {s.front_workers} "
            f"({s.front_replicas}) | {s.redis_ops_per_s:,.0f} | {s.redis_primaries} | "
            f"{s.text_gpus} | {s.vision_gpus} |"
        )
    return "\n".join(lines)


def per_unit(figures: Figures, mix: Mix, gpu: str) -> dict[str, float]:
    """Requests/s of the mix one unit of each tier carries when fully busy (a GPU of a
    model counts for that model's share of the mix only)."""
    return ceilings(figures, mix, 1, 1, 1, 1, gpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rps", type=float, help="one traffic level (requests/s of the mix)")
    parser.add_argument("--gpu", choices=["h100", "h200"], default="h100")
    defaults = Figures()
    for name in vars(defaults):
        parser.add_argument(
            "--" + name.replace("_", "-"), type=type(getattr(defaults, name)), default=None
        )
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in vars(defaults) and v is not None}
    figures = replace(defaults, **overrides)
    mix = Mix()
    if args.rps is not None:
        s = size(args.rps, figures, mix, args.gpu)
        print(s)
        return
    print(table(figures, mix, args.gpu))
    print()
    print(f"one unit, fully busy, carries (req/s of the mix; {args.gpu.upper()}):")
    for tier, rps in sorted(per_unit(figures, mix, args.gpu).items(), key=lambda kv: kv[1]):
        print(f"  one {UNIT_NAMES[tier]}: {rps:,.0f}")
    print()
    deployment = {"front_workers": 4, "redis_primaries": 1, "text_gpus": 2, "vision_gpus": 1}
    limits = ceilings(figures, mix, gpu=args.gpu, **deployment)
    print(f"deploy/k8s/gateway as written, {args.gpu.upper()}: req/s that fills each tier")
    for tier, rps in sorted(limits.items(), key=lambda kv: kv[1]):
        print(f"  {tier} ({deployment[TIER_UNITS[tier]]}): {rps:,.0f}")


if __name__ == "__main__":
    main()
