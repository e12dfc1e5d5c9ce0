"""scripts/capacity.py: the sizes follow the figures (linear, rounded up, with headroom),
and a mistake in the inputs is refused rather than sized."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def capacity() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capacity", ROOT / "scripts" / "capacity.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["capacity"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_each_tier_is_sized_from_its_own_figure_with_headroom() -> None:
    cap = capacity()
    text_only = cap.Mix((cap.RequestClass("chat", 1.0, 100, "avibe"),))
    figures = cap.Figures(
        events_per_worker=10_000,
        request_overhead_s=0.0,
        workers_per_replica=2,
        redis_ops_per_request=5,
        redis_ops_per_primary=10_000,
        text_tokens_per_gpu=1_000,
        target_utilization=0.5,
    )
    s = cap.size(100, figures, text_only)  # 10,000 events/s, 500 Redis ops/s
    assert s.events_per_s == 10_000
    assert s.front_workers == 2 and s.front_replicas == 1  # 1 worker's load at 50%
    assert s.redis_ops_per_s == 500 and s.redis_primaries == 1
    assert s.text_gpus == 20 and s.vision_gpus == 0  # 10,000 tok/s over 1,000 at 50%
    assert s.utilization["text GPUs"] == pytest.approx(0.5)
    # Twice the traffic, twice every tier (past the rounding).
    double = cap.size(200, figures, text_only)
    assert (double.front_workers, double.text_gpus) == (4, 40)


def test_request_overhead_and_h200_change_what_they_should() -> None:
    cap = capacity()
    mix = cap.Mix()
    base = cap.size(1_000, cap.Figures(), mix)
    heavier = cap.size(1_000, cap.Figures(request_overhead_s=0.01), mix)
    assert heavier.front_workers > base.front_workers
    assert (heavier.text_gpus, heavier.redis_primaries) == (base.text_gpus, base.redis_primaries)
    h200 = cap.size(1_000, cap.Figures(), mix, "h200")
    assert h200.text_gpus < base.text_gpus  # decode: memory bandwidth
    assert h200.vision_gpus == base.vision_gpus  # prefill: the same compute


def test_the_first_tier_to_saturate_is_the_smallest_ceiling() -> None:
    cap = capacity()
    figures, mix = cap.Figures(), cap.Mix()
    limits = cap.ceilings(
        figures, mix, front_workers=1, redis_primaries=1, text_gpus=50, vision_gpus=50
    )
    assert min(limits, key=lambda k: limits[k]) == "front"
    # At its ceiling the front is exactly full.
    s = cap.size(limits["front"], cap.Figures(target_utilization=1.0), mix)
    assert s.front_workers == 1 and math.isclose(s.utilization["front"], 1.0)


def test_bad_inputs_are_refused() -> None:
    cap = capacity()
    with pytest.raises(ValueError, match="add up to"):
        cap.Mix((cap.RequestClass("chat", 0.5, 100, "avibe"),))
    with pytest.raises(ValueError, match="h100 or h200"):
        cap.size(1, cap.Figures(), cap.Mix(), "a100")


def test_the_command_prints_the_docs_table(capsys: pytest.CaptureFixture[str]) -> None:
    capacity().main([])
    out = capsys.readouterr().out
    text = (ROOT / "docs" / "capacity.md").read_text()
    for line in out.splitlines():
        if line.startswith("| "):
            assert line in text, line
