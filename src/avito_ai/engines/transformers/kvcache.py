"""The KV cache of a continuously batched decode: appends in place, rows join and leave.

transformers' `DynamicCache` appends each new token with `torch.cat`, which copies the whole
cache of every layer at every step. For one short sequence that is noise; for 16 sequences
of several hundred tokens on a CPU it costs more than the forward pass itself (each step
allocates hundreds of MB afresh, and the allocator hands big blocks back to the OS, so every
step also pays page faults). `GrowingLayer` keeps keys/values in a buffer with spare room:
appending writes one column in place, and the buffer grows geometrically (amortized O(1)).

The model only ever sees `keys`/`values` as views `[batch, heads, length, dim]` of the
buffers, exactly like DynamicCache. The scheduler additionally needs two batch operations,
done with one copy each:

* `select(index, trim)`: keep some rows (finished ones leave) and drop `trim` leading
  columns (padding that no remaining row needs any more);
* `merge(other, pad_self, pad_other)`: left-pad both caches to a common length and stack
  the rows of `other` (newly prefilled requests) under ours. Padding is zero-filled, never
  uninitialized memory: masked positions still enter `softmax @ V`, and 0 * NaN is NaN.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

_ROUND = 64  # capacity granularity, in tokens
_GROWTH = 1.5


def _capacity(needed: int, current: int = 0) -> int:
    target = max(needed + _ROUND, int(current * _GROWTH))
    return -(-target // _ROUND) * _ROUND


class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A DynamicLayer whose tensors live in a preallocated buffer with spare capacity."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None
        self._length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self._length, self._length + key_states.shape[-2]
        kbuf, vbuf = self._reserve(key_states, value_states, end)
        kbuf[:, :, start:end] = key_states
        vbuf[:, :, start:end] = value_states
        self._set_length(end)
        assert self.keys is not None and self.values is not None
        return self.keys, self.values

    def _reserve(
        self, keys: torch.Tensor, values: torch.Tensor, needed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kbuf, vbuf = self._kbuf, self._vbuf
        if kbuf is not None and vbuf is not None and kbuf.shape[-2] >= needed:
            return kbuf, vbuf
        current = 0 if kbuf is None else kbuf.shape[-2]
        cap = _capacity(needed, current)
        new_k = keys.new_empty((*keys.shape[:2], cap, keys.shape[-1]))
        new_v = values.new_empty((*values.shape[:2], cap, values.shape[-1]))
        if kbuf is not None and vbuf is not None and self._length:
            new_k[:, :, : self._length] = kbuf[:, :, : self._length]
            new_v[:, :, : self._length] = vbuf[:, :, : self._length]
        self._kbuf, self._vbuf = new_k, new_v
        return new_k, new_v

    def _set_length(self, length: int) -> None:
        assert self._kbuf is not None and self._vbuf is not None
        self._length = length
        self.keys = self._kbuf[:, :, :length]
        self.values = self._vbuf[:, :, :length]

    def get_seq_length(self) -> int:
        return self._length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._length + query_length, 0

    def reset(self) -> None:
        self._kbuf = self._vbuf = None
        self._length = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        """transformers' contract (5.x): `crop(-n)` drops the last n tokens; a positive value
        (the old "keep n tokens" meaning) is refused, as DynamicLayer refuses it."""
        if tokens_to_remove > 0:
            raise ValueError(
                f"crop({tokens_to_remove}): pass a negative number of tokens to remove"
            )
        if self._kbuf is not None:
            self._set_length(max(0, self._length + tokens_to_remove))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.select(indices, 0)

    def batch_repeat_interleave(self, repeats: int) -> None:  # pragma: no cover - unused
        raise NotImplementedError("GrowingLayer does not support beam search")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:  # pragma: no cover - unused
        raise NotImplementedError("GrowingLayer does not support beam search")

    # ------------------------------------------------------------- batch operations

    def select(self, index: torch.Tensor, trim: int) -> None:
        """Keep rows `index` and drop the first `trim` columns, in one copy."""
        if self._kbuf is None or self._vbuf is None:
            return
        length = self._length - trim
        for name in ("_kbuf", "_vbuf"):
            buf: torch.Tensor = getattr(self, name)
            new = buf.new_empty((index.numel(), buf.shape[1], buf.shape[2], buf.shape[3]))
            new[:, :, :length] = buf.index_select(0, index)[:, :, trim : self._length]
            setattr(self, name, new)
        self._set_length(length)

    def merge(self, other: GrowingLayer, pad_self: int, pad_other: int) -> None:
        """Stack `other`'s rows under ours, left-padding ours by `pad_self` and theirs by
        `pad_other` columns so both end up `length` long (zeros in the padding)."""
        assert other._kbuf is not None and other._vbuf is not None
        if self._kbuf is None or self._vbuf is None:
            self._kbuf, self._vbuf = other._kbuf, other._vbuf
            self.dtype, self.device, self.is_initialized = other.dtype, other.device, True
            self._set_length(other._length)
            return
        length = self._length + pad_self
        assert length == other._length + pad_other, "merged caches must end aligned"
        rows = self._kbuf.shape[0]
        cap = _capacity(length)
        for name in ("_kbuf", "_vbuf"):
            mine: torch.Tensor = getattr(self, name)
            theirs: torch.Tensor = getattr(other, name)
            shape = (rows + theirs.shape[0], mine.shape[1], cap, mine.shape[3])
            new = mine.new_empty(shape)
            new[:rows, :, :pad_self] = 0
            new[:rows, :, pad_self:length] = mine[:, :, : self._length]
            new[rows:, :, :pad_other] = 0
            new[rows:, :, pad_other:length] = theirs[:, :, : other._length]
            setattr(self, name, new)
        self._set_length(length)


class BatchKVCache(DynamicCache):
    """A DynamicCache made of GrowingLayers, plus the scheduler's batch operations."""

    def __init__(self) -> None:
        # Deliberately no config: every layer is a plain full-attention layer. For models with
        # sliding-window layers that only costs memory; the mask still applies the window.
        super().__init__()
        self.layer_class_to_replicate = GrowingLayer

    @property
    def length(self) -> int:
        """Columns (padding included) currently held."""
        layers = self._growing()
        return layers[0].get_seq_length() if layers else 0

    def _growing(self) -> list[GrowingLayer]:
        layers = [layer for layer in self.layers if isinstance(layer, GrowingLayer)]
        assert len(layers) == len(self.layers), "BatchKVCache holds GrowingLayers only"
        return layers

    def select(self, index: torch.Tensor, trim: int = 0) -> None:
        for layer in self._growing():
            layer.select(index, trim)

    def merge(self, other: BatchKVCache, pad_self: int, pad_other: int) -> None:
        theirs = other._growing()
        mine = self._growing()
        if not mine:
            self.layers = list(theirs)
            return
        for a, b in zip(mine, theirs, strict=True):
            a.merge(b, pad_self, pad_other)
