"""The growing KV cache behaves like transformers' DynamicCache, and its batch operations
(select rows + trim, left-pad + merge) move every row's data to the right place."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from avito_ai.engines.transformers.kvcache import BatchKVCache


def kv(batch: int, length: int, start: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.arange(batch * 2 * length * 4, dtype=torch.float32).reshape(batch, 2, length, 4)
    return keys + start, -(keys + start)


def test_appending_matches_dynamic_cache_across_growth() -> None:
    ours, theirs = BatchKVCache(), DynamicCache()
    for step, q in enumerate([5, 1, 1, 70, 1, 200, 1]):
        k, v = kv(3, q, start=1000.0 * step)
        for layer in range(2):
            a = ours.update(k, v, layer)
            b = theirs.update(k, v, layer)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert ours.get_seq_length() == theirs.get_seq_length() == ours.length


def test_select_keeps_rows_and_trims_leading_columns() -> None:
    cache = BatchKVCache()
    k, v = kv(4, 10)
    cache.update(k, v, 0)
    cache.select(torch.tensor([1, 3]), trim=3)
    layer = cache.layers[0]
    assert layer.keys is not None and layer.values is not None
    assert torch.equal(layer.keys, k[[1, 3], :, 3:])
    assert torch.equal(layer.values, v[[1, 3], :, 3:])
    k2, v2 = kv(2, 1, start=5000.0)
    cache.update(k2, v2, 0)  # appending still works after a select
    assert torch.equal(layer.keys[:, :, -1:], k2)
    assert cache.length == 8


def test_merge_left_pads_with_zeros_and_stacks_rows() -> None:
    running, joining = BatchKVCache(), BatchKVCache()
    k1, v1 = kv(2, 6)
    k2, v2 = kv(3, 9, start=100.0)
    running.update(k1, v1, 0)
    joining.update(k2, v2, 0)
    running.merge(joining, pad_self=3, pad_other=0)
    layer = running.layers[0]
    assert layer.keys is not None
    assert layer.keys.shape == (5, 2, 9, 4)
    assert torch.equal(layer.keys[:2, :, :3], torch.zeros(2, 2, 3, 4))
    assert torch.equal(layer.keys[:2, :, 3:], k1)
    assert torch.equal(layer.keys[2:], k2)
    k3, v3 = kv(5, 1, start=9000.0)
    keys, values = running.update(k3, v3, 0)
    assert keys.shape == (5, 2, 10, 4) and torch.equal(values[:, :, -1:], v3)


def test_merge_into_an_empty_cache_adopts_the_other() -> None:
    empty, other = BatchKVCache(), BatchKVCache()
    k, v = kv(2, 4)
    other.update(k, v, 0)
    empty.merge(other, 0, 0)
    assert empty.length == 4


def test_crop_follows_dynamic_cache() -> None:
    """`crop(-n)` drops the last n tokens like DynamicCache; a positive value is refused."""
    import pytest

    ours, theirs = BatchKVCache(), DynamicCache()
    k, v = kv(2, 9)
    for cache in (ours, theirs):
        cache.update(k, v, 0)
        cache.crop(-4)
    assert ours.get_seq_length() == theirs.get_seq_length() == 5
    assert torch.equal(ours.layers[0].keys, theirs.layers[0].keys)
    k2, v2 = kv(2, 1, start=700.0)
    a, _ = ours.update(k2, v2, 0)  # the next token lands right after the kept ones
    b, _ = theirs.update(k2, v2, 0)
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        ours.crop(3)
