"""Continuous batching for a causal LM, run by one dedicated worker thread.

Why a thread: a forward pass takes tens of milliseconds to seconds and must never run on the
asyncio event loop (health checks and other clients would stall). torch releases the GIL
inside its kernels, so the loop stays responsive while the worker computes.

Why one thread: the model, its KV cache and the batch are touched by the worker only, so
they need no locks. The only shared state is the waiting queue (under `_cond`) and each
ticket's `cancelled` flag (a bool written by the loop and read by the worker at step
boundaries; a stale read costs at most one extra step).

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
step. Each row's positions are its own (position ids count real tokens only), and padding is
masked, so a sequence's answer does not depend on which others share the batch (up to float
rounding; greedy float32 answers are identical in the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from avito_ai.engines.base import Chunk, FinishReason, SamplingParams, Timings
from avito_ai.engines.kvcache import BatchKVCache
from avito_ai.engines.sampling import RowSampler, sample_tokens
from avito_ai.engines.textstream import TextPipeline
from avito_ai.errors import ModelUnavailable, Overloaded, ShuttingDown, Timeout

log = logging.getLogger(__name__)

DEFAULT_PREFILL_TOKEN_BUDGET = 4096


@dataclass
class SequenceSpec:
    """One tokenized request, as the scheduler needs it."""

    prompt_ids: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    strip_thinking: bool = False
    thinking_open: bool = False  # the prompt already opened a <think> block
    deadline: float | None = None  # time.monotonic()
    created: float = field(default_factory=time.monotonic)
    request_id: str = ""
    ignore_eos: bool = False  # benchmarks: always generate max_new_tokens


_Item = Chunk | BaseException


class _Ticket:
    """The link between one consumer (on its event loop) and the worker thread."""

    __slots__ = ("cancelled", "done", "loop", "queue", "spec")

    def __init__(self, spec: SequenceSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        # Written by the consumer when it goes away; read by the worker between steps.
        self.cancelled = False
        # Written by the worker once the final item has been sent.
        self.done = False


class _Row:
    """Worker-side state of one active sequence."""

    __slots__ = (
        "admitted_at",
        "first_token_at",
        "generated",
        "pad",
        "pipeline",
        "sampler",
        "ticket",
    )

    def __init__(self, ticket: _Ticket, decode: Callable[[list[int]], str], device: str) -> None:
        spec = ticket.spec
        self.ticket = ticket
        self.sampler = RowSampler(
            spec.sampling, spec.prompt_ids, max_new_tokens=spec.max_new_tokens, device=device
        )
        self.pipeline = TextPipeline(
            decode,
            stop=spec.stop,
            strip_thinking=spec.strip_thinking,
            thinking_open=spec.thinking_open,
        )
        self.generated = 0
        self.pad = 0  # left padding columns of this row in the KV cache
        self.admitted_at = time.monotonic()
        self.first_token_at: float | None = None


class BatchScheduler:
    """Runs `model` over many concurrent sequences; see the module docstring.

    `model` is a transformers causal LM (anything accepting input_ids, attention_mask,
    position_ids, past_key_values, use_cache, logits_to_keep); `decode` turns token ids into
    text (skipping special tokens); `eos_token_ids` end a sequence with finish_reason "stop".
    """

    def __init__(
        self,
        model: Any,
        decode: Callable[[list[int]], str],
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
        self._decode = decode
        self._eos = frozenset(int(t) for t in eos_token_ids)
        self._pad_id = int(pad_token_id)
        self._device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        self.prefill_token_budget = prefill_token_budget
        self._name = name

        self._cond = threading.Condition()
        self._waiting: deque[_Ticket] = deque()  # guarded by _cond
        self._stopping = False  # guarded by _cond
        self._thread: threading.Thread | None = None

        # Worker-only state.
        self._rows: list[_Row] = []
        self._cache: BatchKVCache | None = None  # the running batch's [B, heads, L, dim]
        # Per-row decode inputs, kept on the model's device so that a decode step does no
        # host->device copy (on a GPU each one is a synchronous memcpy). Rebuilt only when
        # rows join or leave; `_pads` is None while no row is padded.
        self._inputs: torch.Tensor | None = None  # [B] next token of each row
        self._positions: torch.Tensor | None = None  # [B] its position id
        self._pads: torch.Tensor | None = None  # [B] left padding columns
        self._outbox: list[tuple[_Ticket, _Item]] = []

        # Counters, read without locks by metrics/tests (ints are atomic enough).
        self.steps = 0
        self.tokens_generated = 0
        self.batch_high_water = 0

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"{self._name}-scheduler", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the worker: waiting requests get ShuttingDown, active ones end "cancelled".

        Blocking (joins the thread): call it via asyncio.to_thread from async code.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        """False once the worker has exited (stopped, or crashed on a bug)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def active_count(self) -> int:
        return len(self._rows)

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    # ------------------------------------------------------------- consumer side

    def _submit(self, ticket: _Ticket) -> None:
        with self._cond:
            if self._stopping or self._thread is None or not self._thread.is_alive():
                raise ShuttingDown("The model is shutting down")
            if len(self._waiting) >= self.max_queue_size:
                raise Overloaded("Server is overloaded, retry later")
            self._waiting.append(ticket)
            self._cond.notify()

    def _withdraw(self, ticket: _Ticket) -> None:
        """Consumer gone: free its queue place now, or its batch slot at the next step."""
        ticket.cancelled = True
        with self._cond:
            # Not found: already admitted (or finished); the worker drops it at a step boundary.
            with contextlib.suppress(ValueError):
                self._waiting.remove(ticket)
            self._cond.notify()

    async def stream(self, spec: SequenceSpec) -> AsyncGenerator[Chunk, None]:
        """Submit `spec` and yield its chunks; the last one has finish_reason set.

        Raises Overloaded (queue full) or ShuttingDown at the first `__anext__`, before any
        compute; Timeout when `spec.deadline` passes. Closing the generator (GeneratorExit),
        cancelling the task or raising out of it withdraws the request within one step.
        """
        loop = asyncio.get_running_loop()
        ticket = _Ticket(spec, loop)
        self._submit(ticket)
        try:
            while True:
                if spec.deadline is None:
                    item = await ticket.queue.get()
                else:
                    when = loop.time() + (spec.deadline - time.monotonic())
                    try:
                        async with asyncio.timeout_at(when):
                            item = await ticket.queue.get()
                    except TimeoutError:
                        raise Timeout("Request timed out") from None
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not ticket.done:
                self._withdraw(ticket)

    # --------------------------------------------------------------- worker side

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                # Warm up here, in the thread that runs every forward (see threads.py).
                warm_up(self._model, str(self._device), self._pad_id)
                while True:
                    admitted = self._next_work()
                    if admitted is None:
                        break
                    self._step(admitted)
                    self._flush()
        except BaseException:  # pragma: no cover - a bug in the worker itself
            log.exception("%s scheduler worker crashed", self._name)
            with self._cond:
                self._stopping = True
        finally:
            self._shutdown()

    def _next_work(self) -> list[_Ticket] | None:
        """Block until there is something to do; pop the tickets that may join now."""
        with self._cond:
            while not self._stopping and not self._waiting and not self._rows:
                self._cond.wait()
            if self._stopping:
                return None
        # Outside the lock: it may copy the KV cache, and submitters must not wait for that.
        self._drop_finished_rows()
        free = self.max_batch_size - len(self._rows)
        admitted: list[_Ticket] = []
        longest = 0
        now = time.monotonic()
        with self._cond:
            while self._waiting and len(admitted) < free:
                ticket = self._waiting[0]
                spec = ticket.spec
                if ticket.cancelled:
                    self._waiting.popleft()
                    continue
                if spec.deadline is not None and now > spec.deadline:
                    self._waiting.popleft()
                    self._send(ticket, Timeout("Request timed out while queued"), final=True)
                    continue
                new_longest = max(longest, len(spec.prompt_ids))
                if admitted and new_longest * (len(admitted) + 1) > self.prefill_token_budget:
                    break  # prefill the rest at the next step, so running rows keep moving
                longest = new_longest
                admitted.append(self._waiting.popleft())
        return admitted

    def _step(self, admitted: list[_Ticket]) -> None:
        if admitted:
            try:
                self._prefill(admitted)
            except Exception as exc:
                log.exception("%s prefill failed", self._name)
                for ticket in admitted:
                    if not ticket.done:
                        self._send(ticket, _failure(exc), final=True)
            self._flush()  # first tokens out now, not after the next decode step
        if not self._rows:
            return
        try:
            self._decode_step()
        except Exception as exc:
            log.exception("%s decode step failed; dropping the batch", self._name)
            for row in self._rows:
                self._send(row.ticket, _failure(exc), final=True)
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
            deadline = ticket.spec.deadline
            if deadline is not None and now > deadline:
                self._send(ticket, Timeout("Request timed out"), final=True)
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

    def _prefill(self, tickets: list[_Ticket]) -> None:
        """Prefill new sequences together, sample their first token, join the batch."""
        rows = [_Row(t, self._decode, str(self._device)) for t in tickets]
        lengths = [len(t.spec.prompt_ids) for t in tickets]
        longest = max(lengths)
        ids = torch.full((len(rows), longest), self._pad_id, dtype=torch.long)
        positions = torch.zeros((len(rows), longest), dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, (ticket, n) in enumerate(zip(tickets, lengths, strict=True)):
            ids[i, longest - n :] = torch.tensor(ticket.spec.prompt_ids, dtype=torch.long)
            positions[i, longest - n :] = torch.arange(n)
            mask[i, longest - n :] = 1
            rows[i].pad = longest - n
        cache = BatchKVCache()
        out = self._model(
            input_ids=ids.to(self._device),
            attention_mask=mask.to(self._device) if min(lengths) < longest else None,
            position_ids=positions.to(self._device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        chosen = sample_tokens(out.logits[:, -1, :], [r.sampler for r in rows])
        del out
        tokens: list[int] = chosen.tolist()
        positions = torch.tensor(lengths, dtype=torch.long, device=self._device)
        try:
            self._merge(rows, cache, longest, chosen, positions)
        except Exception as exc:
            # (Out of memory, typically.) The running batch may be half merged: end it all.
            for row in [*self._rows, *rows]:
                if not row.ticket.done:
                    self._send(row.ticket, _failure(exc), final=True)
            self._clear_batch()
            raise
        now = time.monotonic()
        for row, token in zip(rows, tokens, strict=True):
            row.first_token_at = now
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
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        chosen = sample_tokens(out.logits[:, -1, :], [r.sampler for r in rows])
        del out
        self._inputs, self._positions = chosen, positions + 1
        tokens: list[int] = chosen.tolist()  # the step's one device->host sync
        self.steps += 1
        now = time.monotonic()
        for row, token in zip(rows, tokens, strict=True):
            self._accept(row, token, now)

    def _accept(self, row: _Row, token: int, now: float) -> None:
        """Feed one sampled token through the row's text pipeline; finish the row if done."""
        row.generated += 1
        self.tokens_generated += 1
        ticket = row.ticket
        if ticket.cancelled:
            return
        row.sampler.record(token)
        finish: FinishReason | None = None
        if token in self._eos and not ticket.spec.ignore_eos:
            finish = "stop"
        else:
            text = row.pipeline.push(token)
            if text:
                self._send(ticket, Chunk(text))
            if row.pipeline.stopped:
                finish = "stop"
            elif row.generated >= ticket.spec.max_new_tokens:
                finish = "length"
        if finish is not None:
            self._finish(row, finish, now)

    def _finish(self, row: _Row, reason: FinishReason, now: float) -> None:
        tail = row.pipeline.finish()
        if tail:
            self._send(row.ticket, Chunk(tail))
        spec = row.ticket.spec
        first = row.first_token_at if row.first_token_at is not None else now
        final = Chunk(
            "",
            finish_reason=reason,
            input_tokens=len(spec.prompt_ids),
            generated_tokens=row.generated,
            timings=Timings(
                queue_s=row.admitted_at - spec.created,
                ttft_s=first - spec.created,
                generation_s=now - row.admitted_at,
                total_s=now - spec.created,
            ),
        )
        self._send(row.ticket, final, final=True)

    # ------------------------------------------------------------------- delivery

    def _send(self, ticket: _Ticket, item: _Item, *, final: bool = False) -> None:
        if final:
            ticket.done = True
        self._outbox.append((ticket, item))

    def _flush(self) -> None:
        """Hand this step's chunks to their event loops: one wake-up per loop per step."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Ticket, _Item]]] = {}
        for ticket, item in self._outbox:
            by_loop.setdefault(ticket.loop, []).append((ticket, item))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for ticket, _ in items:
                    ticket.cancelled = True

    def _shutdown(self) -> None:
        """Worker exit: end every request so no consumer waits forever, free the cache."""
        with self._cond:
            self._stopping = True
            waiting = list(self._waiting)
            self._waiting.clear()
        for ticket in waiting:
            self._send(ticket, ShuttingDown("The model is shutting down"), final=True)
        now = time.monotonic()
        for row in self._rows:
            if not row.ticket.done:
                self._finish(row, "cancelled", now)
        self._clear_batch()
        self._flush()


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
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        model(
            input_ids=ids[:, :1],
            attention_mask=torch.ones((2, 5), dtype=torch.long, device=device),
            position_ids=positions[:, :1] + 4,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )


def _deliver(items: Sequence[tuple[_Ticket, _Item]]) -> None:
    """Runs on the consumer's event loop."""
    for ticket, item in items:
        ticket.queue.put_nowait(item)


def _failure(exc: BaseException) -> BaseException:
    if isinstance(exc, torch.OutOfMemoryError):
        return ModelUnavailable("Out of memory while generating; retry with a shorter request")
    return RuntimeError(f"Generation failed: {exc}")
