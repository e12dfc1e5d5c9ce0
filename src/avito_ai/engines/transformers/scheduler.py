"""Continuous batching for a causal LM, run by one dedicated worker thread.

Why a thread: a forward pass takes tens of milliseconds to seconds and must never run on the
asyncio event loop (health checks and other clients would stall). torch releases the GIL
inside its kernels, so the loop stays responsive while the worker computes.

Why one thread: the model, its KV cache and the batch are touched by the worker only, so
they need no locks. The waiting queue, cancellation and delivery are `engines/bridge.py`.

How a step works:

1. rows that finished, were cancelled (client gone) or passed their deadline leave the
   batch (their cache rows are dropped; left columns that only hold padding for the
   remaining rows are trimmed; see kvcache.py);
2. waiting requests join, as many as there are free slots and the prefill token budget
   allows: they are prefilled together (left-padded, with attention mask and per-row
   position ids), their first token is sampled, and their KV cache is left-padded to a
   common length and concatenated to the running batch;
3. one forward of the last token of every active row, one sampling call, then each row's
   text pipeline (detokenize, strip thinking, stop strings).

Results go back to each consumer's event loop with one `call_soon_threadsafe` per loop per
step (the bridge's `flush`). Each row's positions are its own (position ids count real
tokens only), and padding is masked, so a sequence's answer does not depend on which others
share the batch (up to float rounding; greedy float32 answers are identical in the tests).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

import torch

from avito_ai.engines.base import Chunk, FinishReason
from avito_ai.engines.bridge import Ticket, WorkerBridge
from avito_ai.engines.textstream import Detokenizer
from avito_ai.engines.transformers.kvcache import BatchKVCache
from avito_ai.engines.transformers.sampling import sample_tokens
from avito_ai.engines.transformers.sequence import Sequence, SequenceSpec, generation_failure
from avito_ai.errors import Timeout

log = logging.getLogger(__name__)

DEFAULT_PREFILL_TOKEN_BUDGET = 4096

__all__ = ["BatchScheduler", "SequenceSpec", "warm_up"]


class _Row:
    """One active sequence in the batch: its ticket, its token state, its left padding."""

    __slots__ = ("pad", "seq", "ticket")

    def __init__(self, ticket: Ticket[SequenceSpec], seq: Sequence) -> None:
        self.ticket = ticket
        self.seq = seq
        self.pad = 0  # left padding columns of this row in the KV cache


class BatchScheduler:
    """Runs `model` over many concurrent sequences; see the module docstring.

    `model` is a transformers causal LM (anything accepting input_ids, attention_mask,
    position_ids, cache, use_cache, logits_to_keep); `new_detokenizer` makes a
    detokenizer per sequence (textstream.py); `eos_token_ids` end a sequence with "stop".
    """

    def __init__(
        self,
        model: Any,
        new_detokenizer: Callable[[], Detokenizer],
        *,
        eos_token_ids: Iterable[int],
        pad_token_id: int,
        device: str,
        max_batch_size: int,
        max_queue_size: int,
        prefill_token_budget: int = DEFAULT_PREFILL_TOKEN_BUDGET,
        name: str = "text",
    ) -> None:
        self._model = model
        # Public so a benchmark can compare detokenizers on the same running scheduler.
        self.new_detokenizer = new_detokenizer
        self._eos = frozenset(int(t) for t in eos_token_ids)
        self._pad_id = int(pad_token_id)
        self._device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.prefill_token_budget = prefill_token_budget
        self._name = name
        self._bridge: WorkerBridge[SequenceSpec] = WorkerBridge(
            max_queue_size=max_queue_size, name=f"{name}-scheduler"
        )

        # Worker-only state.
        self._rows: list[_Row] = []
        self._cache: BatchKVCache | None = None  # the running batch's [B, heads, L, dim]
        # Per-row decode inputs, kept on the model's device so that a decode step does no
        # host->device copy (on a GPU each one is a synchronous memcpy). Rebuilt only when
        # rows join or leave; `_pads` is None while no row is padded.
        self._inputs: torch.Tensor | None = None  # [B] next token of each row
        self._positions: torch.Tensor | None = None  # [B] its position id
        self._pads: torch.Tensor | None = None  # [B] left padding columns

        # Counters, read without locks by metrics/tests (ints are atomic enough).
        self.steps = 0
        self.tokens_generated = 0
        self.batch_high_water = 0

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._bridge.start(self._run)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the worker: waiting requests get ShuttingDown, active ones end "cancelled".

        Blocking (joins the thread): call it via asyncio.to_thread from async code.
        """
        self._bridge.stop(timeout)

    @property
    def alive(self) -> bool:
        """False once the worker has exited (stopped, or crashed on a bug)."""
        return self._bridge.alive

    @property
    def active_count(self) -> int:
        return len(self._rows)

    @property
    def waiting_count(self) -> int:
        return self._bridge.waiting_count

    def stream(self, spec: SequenceSpec) -> AsyncGenerator[Chunk, None]:
        """Submit `spec` and yield its chunks (see `WorkerBridge.stream`)."""
        return self._bridge.stream(spec, deadline=spec.deadline)

    # --------------------------------------------------------------- worker side

    def _run(self) -> None:
        bridge = self._bridge
        try:
            with torch.inference_mode():
                # Warm up here, in the thread that runs every forward (see threads.py).
                warm_up(self._model, str(self._device), self._pad_id)
                while bridge.wait_for_work(busy=bool(self._rows)):
                    # Leavers go first: their slots are free for the tickets taken now.
                    self._drop_finished_rows()
                    self._step(self._take())
                    bridge.flush()
        except BaseException:  # pragma: no cover - a bug in the worker itself
            log.exception("%s scheduler worker crashed", self._name)
        finally:
            self._shutdown()

    def _take(self) -> list[Ticket[SequenceSpec]]:
        """The waiting tickets that join now: free slots, within the prefill token budget."""
        longest = 0

        def admit(ticket: Ticket[SequenceSpec], taken: int) -> bool:
            nonlocal longest
            new_longest = max(longest, len(ticket.payload.prompt_ids))
            if taken and new_longest * (taken + 1) > self.prefill_token_budget:
                return False  # prefill the rest at the next step, so running rows keep moving
            longest = new_longest
            return True

        return self._bridge.take(self.max_batch_size - len(self._rows), admit)

    def _step(self, admitted: list[Ticket[SequenceSpec]]) -> None:
        if admitted:
            try:
                self._prefill(admitted)
            except Exception as exc:
                log.exception("%s prefill failed", self._name)
                self._bridge.fail(admitted, generation_failure(exc))
            self._bridge.flush()  # first tokens out now, not after the next decode step
        if not self._rows:
            return
        try:
            self._decode_step()
        except Exception as exc:
            log.exception("%s decode step failed; dropping the batch", self._name)
            self._bridge.fail([row.ticket for row in self._rows], generation_failure(exc))
            self._clear_batch()
            return
        # Finished rows leave now, before their final chunks are delivered: their memory is
        # freed and `active_count` is exact by the time a consumer sees its answer end.
        self._drop_finished_rows()

    # ------------------------------------------------------------------- batching

    def _drop_finished_rows(self) -> None:
        """Remove finished, cancelled and expired rows from the batch and its cache."""
        if not self._rows:
            return
        now = time.monotonic()
        keep: list[int] = []
        for i, row in enumerate(self._rows):
            ticket = row.ticket
            if ticket.done or ticket.cancelled:
                continue
            if ticket.expired(now):
                self._bridge.send(ticket, Timeout("Request timed out"), final=True)
                continue
            keep.append(i)
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not self._rows or self._cache is None or self._inputs is None:
            self._clear_batch()
            return
        assert self._positions is not None
        index = torch.tensor(keep, dtype=torch.long, device=self._device)
        trim = min(row.pad for row in self._rows)
        self._cache.select(index, trim)
        self._inputs = self._inputs.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        for row in self._rows:
            row.pad -= trim
        self._pads = self._pad_tensor()

    def _clear_batch(self) -> None:
        self._rows = []
        self._cache = self._inputs = self._positions = self._pads = None

    def _pad_tensor(self) -> torch.Tensor | None:
        if not any(row.pad for row in self._rows):
            return None
        pads = [row.pad for row in self._rows]
        return torch.tensor(pads, dtype=torch.long, device=self._device)

    def _sequence(self, spec: SequenceSpec) -> Sequence:
        return Sequence(spec, self.new_detokenizer, eos_token_ids=self._eos, device=self._device)

    def _prefill(self, tickets: list[Ticket[SequenceSpec]]) -> None:
        """Prefill new sequences together, sample their first token, join the batch."""
        rows = [_Row(t, self._sequence(t.payload)) for t in tickets]
        lengths = [len(t.payload.prompt_ids) for t in tickets]
        longest = max(lengths)
        ids = torch.full((len(rows), longest), self._pad_id, dtype=torch.long)
        positions = torch.zeros((len(rows), longest), dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, (ticket, n) in enumerate(zip(tickets, lengths, strict=True)):
            ids[i, longest - n :] = torch.tensor(ticket.payload.prompt_ids, dtype=torch.long)
            positions[i, longest - n :] = torch.arange(n)
            mask[i, longest - n :] = 1
            rows[i].pad = longest - n
        cache = BatchKVCache()
        out = self._model(
            input_ids=ids.to(self._device),
            attention_mask=mask.to(self._device) if min(lengths) < longest else None,
            position_ids=positions.to(self._device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        chosen = sample_tokens(out.logits[:, -1, :], [r.seq.sampler for r in rows])
        del out
        tokens: list[int] = chosen.tolist()
        positions = torch.tensor(lengths, dtype=torch.long, device=self._device)
        try:
            self._merge(rows, cache, longest, chosen, positions)
        except Exception as exc:
            # (Out of memory, typically.) The running batch may be half merged: end it all.
            tickets = [row.ticket for row in [*self._rows, *rows]]
            self._bridge.fail(tickets, generation_failure(exc))
            self._clear_batch()
            raise
        now = time.monotonic()
        for row, token in zip(rows, tokens, strict=True):
            self._accept(row, token, now)

    def _merge(
        self,
        rows: list[_Row],
        cache: BatchKVCache,
        length: int,
        inputs: torch.Tensor,
        positions: torch.Tensor,
    ) -> None:
        """Left-pad the running and the new caches to one length and stack them."""
        if not self._rows or self._cache is None or self._inputs is None:
            self._rows, self._cache = rows, cache
            self._inputs, self._positions = inputs, positions
        else:
            assert self._positions is not None
            current = self._cache.length
            target = max(current, length)
            grow_old, grow_new = target - current, target - length
            self._cache.merge(cache, grow_old, grow_new)
            for row in self._rows:
                row.pad += grow_old
            for row in rows:
                row.pad += grow_new
            self._rows.extend(rows)
            self._inputs = torch.cat([self._inputs, inputs])
            self._positions = torch.cat([self._positions, positions])
        self._pads = self._pad_tensor()
        self.batch_high_water = max(self.batch_high_water, len(self._rows))

    def _decode_step(self) -> None:
        # Rows finished during prefill (one-token answers, stop on first token) go first.
        self._drop_finished_rows()
        rows, cache, inputs, positions = self._rows, self._cache, self._inputs, self._positions
        if not rows or cache is None or inputs is None or positions is None:
            return
        mask = None
        if self._pads is not None:
            columns = torch.arange(cache.length + 1, device=self._device)
            mask = (columns[None, :] >= self._pads[:, None]).long()
        out = self._model(
            input_ids=inputs[:, None],
            attention_mask=mask,
            position_ids=positions[:, None],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        chosen = sample_tokens(out.logits[:, -1, :], [r.seq.sampler for r in rows])
        del out
        self._inputs, self._positions = chosen, positions + 1
        tokens: list[int] = chosen.tolist()  # the step's one device->host sync
        self.steps += 1
        now = time.monotonic()
        for row, token in zip(rows, tokens, strict=True):
            self._accept(row, token, now)

    def _accept(self, row: _Row, token: int, now: float) -> None:
        """Feed one sampled token through the row's sequence; finish the row if done."""
        self.tokens_generated += 1
        ticket = row.ticket
        if ticket.cancelled:
            row.seq.skip()
            return
        delta, finish = row.seq.accept(token, now)
        if delta is not None:
            self._bridge.send(ticket, delta)
        if finish is not None:
            self._finish(row, finish, now)

    def _finish(self, row: _Row, reason: FinishReason, now: float) -> None:
        self._bridge.end(row.ticket, row.seq.finish(reason, now))

    def _shutdown(self) -> None:
        """Worker exit: end every request so no consumer waits forever, free the cache."""
        self._bridge.close()
        now = time.monotonic()
        for row in self._rows:
            if not row.ticket.done:
                self._finish(row, "cancelled", now)
        self._clear_batch()
        self._bridge.flush()


def warm_up(model: Any, device: str, token_id: int = 0) -> None:
    """One tiny prefill and decode step, so the first real request does not pay one-time
    kernel selection/JIT costs (noticeable with oneDNN on CPU and cuBLAS on GPU)."""
    with torch.inference_mode():
        cache = BatchKVCache()
        ids = torch.full((2, 4), token_id, dtype=torch.long, device=device)
        positions = torch.arange(4, device=device).expand(2, 4)
        model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        model(
            input_ids=ids[:, :1],
            attention_mask=torch.ones((2, 5), dtype=torch.long, device=device),
            position_ids=positions[:, :1] + 4,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
