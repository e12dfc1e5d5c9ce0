"""Per-row sampling: every request's parameters and seed apply to its row only."""

from __future__ import annotations

from collections import Counter

import torch

from avito_ai.engines.base import SamplingParams
from avito_ai.engines.transformers.sampling import (
    RowSampler,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    sample_next,
)

V = 50


def row(prompt: list[int] | None = None, **params: float | int | None) -> RowSampler:
    return RowSampler(SamplingParams(max_tokens=16, **params), prompt or [], max_new_tokens=16)  # type: ignore[arg-type]


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor(probs))


def draws(sampler: RowSampler, logits: torch.Tensor, n: int) -> Counter[int]:
    return Counter(sample_next(logits[None, :], [sampler])[0] for _ in range(n))


def test_greedy_rows_take_the_argmax_in_a_mixed_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, V)
    rows = [row(), row(temperature=1.0, seed=1), row(), row(temperature=0.7, seed=2)]
    picked = sample_next(logits, rows)
    assert all(isinstance(t, int) for t in picked)
    assert picked[0] == int(logits[0].argmax())
    assert picked[2] == int(logits[2].argmax())


def test_all_greedy_fast_path_works_on_bf16_logits() -> None:
    logits = torch.randn(3, V).to(torch.bfloat16)
    assert sample_next(logits, [row(), row(), row()]) == logits.float().argmax(-1).tolist()


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    torch.manual_seed(1)
    logits = torch.randn(V)
    best = int(logits.argmax())
    assert set(draws(row(temperature=1.5, top_k=1, seed=3), logits, 30)) == {best}
    assert set(draws(row(temperature=1.5, top_p=1e-6, seed=3), logits, 30)) == {best}


def test_top_k_keeps_only_the_k_best() -> None:
    logits = logits_of([0.3, 0.25, 0.2, 0.15, 0.1])
    seen = draws(row(temperature=1.0, top_k=2, seed=5), logits, 400)
    assert set(seen) == {0, 1}
    filtered = apply_top_k(logits, 3)
    assert torch.isinf(filtered[3:]).all() and torch.isfinite(filtered[:3]).all()


def test_top_p_keeps_the_smallest_nucleus() -> None:
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    kept = torch.isfinite(apply_top_p(logits, 0.8))
    assert kept.tolist() == [True, True, False, False]
    kept = torch.isfinite(apply_top_p(logits, 0.81))
    assert kept.tolist() == [True, True, True, False]
    seen = draws(row(temperature=1.0, top_p=0.8, seed=7), logits, 400)
    assert set(seen) == {0, 1}


def test_temperature_sharpens_and_flattens() -> None:
    logits = logits_of([0.6, 0.3, 0.1])
    cold = draws(row(temperature=0.1, seed=11), logits, 300)
    hot = draws(row(temperature=5.0, seed=11), logits, 300)
    assert cold[0] > 290
    assert hot[2] > 50


def test_repetition_penalty_discourages_seen_tokens() -> None:
    logits = torch.tensor([2.0, 1.9, -1.0, 1.45])
    sampler = row(prompt=[0], repetition_penalty=1.5)
    assert sample_next(logits[None, :], [sampler]) == [1]  # 0 is in the prompt: 2.0/1.5 < 1.9
    sampler.record(1)
    assert sample_next(logits[None, :], [sampler]) == [3]  # now 1.33 and 1.27 < 1.45
    penalized = apply_repetition_penalty(logits, torch.tensor([2, 2]), 2.0)
    assert penalized[2] == -2.0  # negative logits are multiplied, duplicates counted once


def test_presence_and_frequency_penalties_count_generated_tokens_only() -> None:
    logits = torch.tensor([2.0, 1.5, 1.2, -1.0])
    presence = row(prompt=[0], presence_penalty=0.6)
    assert sample_next(logits[None, :], [presence]) == [0]  # the prompt does not count
    presence.record(0)
    assert sample_next(logits[None, :], [presence]) == [1]  # 2.0 - 0.6 < 1.5
    presence.record(1)
    presence.record(1)  # presence: once, however often
    assert sample_next(logits[None, :], [presence]) == [0]  # 1.4 > 1.2 > 0.9
    frequency = row(frequency_penalty=0.2)
    for _ in range(3):
        frequency.record(0)
    assert sample_next(logits[None, :], [frequency]) == [1]  # 2.0 - 3 x 0.2 < 1.5
    negative = row(presence_penalty=-1.0)
    negative.record(3)
    assert sample_next(logits[None, :], [negative]) == [0]
    assert not row(presence_penalty=0.5).is_plain_greedy and row().is_plain_greedy


def test_same_seed_same_draws_whatever_the_neighbours() -> None:
    torch.manual_seed(2)
    logits = torch.randn(V)
    alone = sample_next(logits[None, :], [row(temperature=1.0, seed=42)])

    def sequence(position: int, neighbours: int) -> list[int]:
        target = row(temperature=1.0, seed=42)
        others = [row(temperature=1.0, seed=100 + i) for i in range(neighbours)]
        rows = [*others[:position], target, *others[position:]]
        batch = torch.randn(len(rows), V)
        batch[position] = logits
        return [sample_next(batch, rows)[position] for _ in range(20)]

    first = sequence(0, 0)
    assert first[0] == alone[0]
    assert sequence(0, 3) == first
    assert sequence(2, 5) == first
    different = row(temperature=1.0, seed=43)
    assert [sample_next(logits[None, :], [different])[0] for _ in range(20)] != first


def test_unseeded_requests_draw_independently() -> None:
    logits = torch.zeros(V)
    a, b = row(temperature=1.0), row(temperature=1.0)
    assert [sample_next(logits[None, :], [a])[0] for _ in range(30)] != [
        sample_next(logits[None, :], [b])[0] for _ in range(30)
    ]
