"""The continuous-batching scheduler, driven by a scripted model with a real tokenizer.

`ScriptedLM` answers each registered prompt with a fixed script, and it reads each row's
history *from the KV cache the scheduler manages* (token ids are stored as "keys", a
real-token flag as "values"). So every test here also checks the cache bookkeeping: a row
padded, merged, selected or trimmed wrongly would see a wrong history and answer "ERROR".
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from avito_ai.engines.base import Chunk, SamplingParams
from avito_ai.engines.transformers.detokenize import detokenizer_factory
from avito_ai.engines.transformers.scheduler import BatchScheduler, SequenceSpec
from avito_ai.errors import Overloaded, ShuttingDown, Timeout
from tests.tiny_models import train_tokenizer
from tests.waiting import wait_until_async

VOCAB_PAD = 8  # spare ids past the tokenizer's vocabulary


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(), eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


class ScriptedLM:
    """A stand-in causal LM: prompt -> scripted answer, history read from the KV cache."""

    def __init__(self, vocab_size: int, eos: int, error: int, *, delay: float = 0.0) -> None:
        self.vocab_size = vocab_size
        self.eos = eos
        self.error = error
        self.delay = delay
        self.scripts: dict[tuple[int, ...], list[int]] = {}
        self.batch_sizes: list[int] = []
        self.prefills: list[tuple[int, int]] = []  # (rows, tokens) of each multi-token call
        self.gate = threading.Event()  # cleared: the next forward waits (the worker is held)
        self.gate.set()
        self.held = threading.Event()  # set once a forward is waiting at the closed gate
        self.calls = 0
        self.lock = threading.Lock()

    def add(self, prompt: Sequence[int], answer: Sequence[int], *, eos: bool = True) -> None:
        self.scripts[tuple(prompt)] = [*answer, *([self.eos] if eos else [])]

    def _next(self, history: list[int]) -> int:
        for prompt, script in self.scripts.items():
            if tuple(history[: len(prompt)]) == prompt:
                done = len(history) - len(prompt)
                return script[done] if done < len(script) else self.eos
        return self.error

    def __call__(
        self,
        *,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Any,
        use_cache: bool,
        logits_to_keep: int,
    ) -> Any:
        if not self.gate.is_set():
            self.held.set()
            self.gate.wait(10)
        batch, q = input_ids.shape
        real = torch.ones_like(input_ids) if attention_mask is None else attention_mask[:, -q:]
        keys = input_ids.to(torch.float32)[:, None, :, None]
        values = real.to(torch.float32)[:, None, :, None]
        all_keys, all_values = cache.update(keys, values, 0)
        logits = torch.full((batch, 1, self.vocab_size), -1e4)
        for row in range(batch):
            flags = all_values[row, 0, :, 0].tolist()
            ids = all_keys[row, 0, :, 0].tolist()
            history = [int(t) for t, f in zip(ids, flags, strict=True) if f > 0.5]
            logits[row, 0, self._next(history)] = 0.0
        with self.lock:
            self.calls += 1
            self.batch_sizes.append(batch)
            if q > 1:
                self.prefills.append((batch, q))
        if self.delay:
            time.sleep(self.delay)  # the behaviour under test: a forward pass takes time
        return SimpleNamespace(logits=logits)


@dataclass
class Harness:
    model: ScriptedLM
    scheduler: BatchScheduler
    tokenizer: Any

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def spec(
        self,
        prompt: str,
        answer: str | None = None,
        *,
        max_tokens: int = 64,
        eos: bool = True,
        **kwargs: Any,
    ) -> SequenceSpec:
        ids = self.encode(prompt)
        if answer is not None:
            self.model.add(ids, self.encode(answer), eos=eos)
        stop = tuple(kwargs.pop("stop", ()))
        sampling = SamplingParams(max_tokens=max_tokens, stop=stop)
        return SequenceSpec(
            prompt_ids=ids, sampling=sampling, max_new_tokens=max_tokens, stop=stop, **kwargs
        )


@pytest.fixture
def make(tokenizer: Any) -> Any:
    started: list[BatchScheduler] = []

    def factory(
        *, batch: int = 4, queue: int = 8, delay: float = 0.0, budget: int = 4096
    ) -> Harness:
        vocab = len(tokenizer) + VOCAB_PAD
        model = ScriptedLM(vocab, tokenizer.eos_token_id, len(tokenizer) + 1, delay=delay)
        scheduler = BatchScheduler(
            model,
            detokenizer_factory(copy.deepcopy(tokenizer)),
            eos_token_ids=[tokenizer.eos_token_id],
            pad_token_id=tokenizer.pad_token_id,
            device="cpu",
            max_batch_size=batch,
            max_queue_size=queue,
            prefill_token_budget=budget,
        )
        scheduler.start()
        started.append(scheduler)
        return Harness(model, scheduler, tokenizer)

    yield factory
    for scheduler in started:
        scheduler.stop(timeout=10)


async def collect(stream: AsyncIterator[Chunk]) -> tuple[str, Chunk]:
    parts: list[str] = []
    async for chunk in stream:
        if chunk.is_final:
            return "".join(parts) + chunk.text, chunk
        parts.append(chunk.text)
    raise AssertionError("stream ended without a final chunk")


async def test_answers_and_reports_counts(make: Any) -> None:
    h = make()
    text, final = await collect(h.scheduler.stream(h.spec("Hello there", "The capital is Paris.")))
    assert text == "The capital is Paris."
    assert final.finish_reason == "stop"
    assert final.input_tokens == len(h.encode("Hello there"))
    assert final.generated_tokens == len(h.encode("The capital is Paris.")) + 1  # + EOS
    t = final.timings
    assert t is not None and 0 <= t.queue_s <= t.ttft_s <= t.total_s
    assert t.generation_s <= t.total_s


async def test_mixed_lengths_joining_mid_flight_keep_their_own_answers(make: Any) -> None:
    """Rows with different prompt lengths join a running batch at different steps."""
    h = make(batch=4, delay=0.002)
    cases = [
        (f"prompt {i} " + "word " * (i * 3), f"answer number {i}: " + "ok " * (5 + 2 * i))
        for i in range(10)
    ]

    async def one(i: int) -> str:
        # Staggered arrivals: request i joins after the model's 2*i-th step, mid-generation.
        await wait_until_async(lambda: h.model.calls >= 2 * i, 10, f"step {2 * i}")
        prompt, answer = cases[i]
        text, final = await collect(h.scheduler.stream(h.spec(prompt, answer)))
        assert final.finish_reason == "stop"
        return text

    results = await asyncio.gather(*(one(i) for i in range(len(cases))))
    assert results == [answer for _, answer in cases]
    assert max(h.model.batch_sizes) == 4
    assert h.scheduler.batch_high_water == 4


async def test_streamed_deltas_keep_cyrillic_intact(make: Any) -> None:
    h = make()
    answer = "Продаю велосипед, цена договорная. Ёлка и щука — съезд!"
    deltas: list[str] = []
    async for chunk in h.scheduler.stream(h.spec("Объявление:", answer)):
        deltas.append(chunk.text)
    assert "".join(deltas) == answer
    assert all("\ufffd" not in d for d in deltas)
    assert len([d for d in deltas if d]) > 5  # really streamed, not one blob


async def test_max_tokens_ends_with_length(make: Any) -> None:
    h = make()
    answer = "one two three four five six seven eight nine ten"
    text, final = await collect(h.scheduler.stream(h.spec("Count:", answer, max_tokens=4)))
    assert final.finish_reason == "length"
    assert final.generated_tokens == 4
    assert text == h.tokenizer.decode(h.encode(answer)[:4])


async def test_stop_string_cuts_the_text_and_the_compute(make: Any) -> None:
    h = make()
    answer = "Paris is the capital. END and then much more text that must not be generated"
    spec = h.spec("Q:", answer, stop=("END",))
    deltas = [c.text async for c in h.scheduler.stream(spec)]
    assert "".join(deltas) == "Paris is the capital. "
    assert "E" not in "".join(deltas[:-1])[-1:]  # the held-back prefix never leaked
    assert h.model.calls < len(h.encode(answer))  # stopped at the stop string


async def test_stop_string_across_tokens_and_partial_prefixes(make: Any) -> None:
    h = make()
    spec = h.spec("Q2:", "a <x <y <sto <stop> tail", stop=("<stop>",))
    text, final = await collect(h.scheduler.stream(spec))
    assert text == "a <x <y <sto "
    assert final.finish_reason == "stop"


async def test_thinking_is_stripped_while_streaming(make: Any) -> None:
    h = make()
    answer = "<think>Let me think about Paris.</think>\n\nParis."
    spec = h.spec("Think:", answer)
    chunks = [c async for c in h.scheduler.stream(spec)]
    assert "".join(c.text for c in chunks) == "Paris."
    assert not any("think" in c.text or c.reasoning for c in chunks)
    # Opened by the template: the output only closes the block.
    spec = h.spec("Think2:", "reasoning here</think>\nAnswer.")
    spec.thinking_open = True
    text, _ = await collect(h.scheduler.stream(spec))
    assert text == "Answer."
    # Kept apart, as the reasoning, when thinking was asked for.
    chunks = [c async for c in h.scheduler.stream(h.spec("Think3:", answer, keep_thinking=True))]
    assert "".join(c.text for c in chunks) == "Paris."
    assert "".join(c.reasoning for c in chunks) == "Let me think about Paris."
    assert sum(bool(c.reasoning) for c in chunks) > 1  # streamed as it came, not at the end
    spec = h.spec("Think4:", "reasoning here</think>\nAnswer.", keep_thinking=True)
    spec.thinking_open = True
    chunks = [c async for c in h.scheduler.stream(spec)]
    assert "".join(c.text for c in chunks) == "Answer."
    assert "".join(c.reasoning for c in chunks) == "reasoning here"


async def test_full_queue_raises_overloaded_immediately(make: Any) -> None:
    h = make(batch=1, queue=1, delay=0.01)
    running = h.scheduler.stream(h.spec("Long:", "x " * 200))
    first = await running.__anext__()  # admitted and generating
    assert not first.is_final
    waiting = h.scheduler.stream(h.spec("Wait:", "y"))
    waiting_task = asyncio.ensure_future(collect(waiting))
    await wait_until_async(lambda: h.scheduler.waiting_count == 1, 5, "one waiting")
    started = time.monotonic()
    with pytest.raises(Overloaded):
        await h.scheduler.stream(h.spec("Third:", "z")).__anext__()
    assert time.monotonic() - started < 0.05
    await running.aclose()  # frees the slot: the waiting one runs now
    text, final = await asyncio.wait_for(waiting_task, 5)
    assert (text, final.finish_reason) == ("y", "stop")


async def test_closed_consumer_frees_its_slot_within_a_step(make: Any) -> None:
    h = make(batch=1, queue=4, delay=0.01)
    stream = h.scheduler.stream(h.spec("Long:", "x " * 500))
    await stream.__anext__()
    await stream.aclose()  # client disconnected
    calls_at_close = h.model.calls
    text, _final = await asyncio.wait_for(
        collect(h.scheduler.stream(h.spec("Next:", "next answer"))), 5
    )
    assert text == "next answer"
    # The abandoned row cost at most one more step, then the next request ran alone.
    assert h.model.calls - calls_at_close <= len(h.encode("next answer")) + 3
    assert h.scheduler.active_count == 0


async def test_cancelled_task_frees_its_slot(make: Any) -> None:
    h = make(batch=1, queue=4, delay=0.01)
    got_first = asyncio.Event()

    async def consumer() -> None:
        async for _ in h.scheduler.stream(h.spec("Long:", "x " * 500)):
            got_first.set()

    task = asyncio.ensure_future(consumer())
    await asyncio.wait_for(got_first.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    text, _ = await asyncio.wait_for(collect(h.scheduler.stream(h.spec("After:", "done"))), 5)
    assert text == "done"


async def test_cancelled_while_queued_leaves_the_queue(make: Any) -> None:
    h = make(batch=1, queue=1, delay=0.01)
    running = h.scheduler.stream(h.spec("Long:", "x " * 300))
    await running.__anext__()
    queued = asyncio.ensure_future(collect(h.scheduler.stream(h.spec("Queued:", "q"))))
    await wait_until_async(lambda: h.scheduler.waiting_count == 1, 5, "one queued")
    queued.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await queued
    assert h.scheduler.waiting_count == 0
    # The queue place is free again at once.
    again = asyncio.ensure_future(collect(h.scheduler.stream(h.spec("Again:", "a"))))
    await wait_until_async(lambda: h.scheduler.waiting_count == 1, 5, "the place taken again")
    await running.aclose()
    assert (await asyncio.wait_for(again, 5))[0] == "a"


async def test_deadline_raises_timeout_and_frees_the_slot(make: Any) -> None:
    h = make(batch=1, queue=4, delay=0.01)
    spec = h.spec("Slow:", "x " * 1000, deadline=time.monotonic() + 0.2)
    started = time.monotonic()
    with pytest.raises(Timeout):
        await collect(h.scheduler.stream(spec))
    assert time.monotonic() - started < 1.0
    text, _ = await asyncio.wait_for(collect(h.scheduler.stream(h.spec("Then:", "fine"))), 5)
    assert text == "fine"


async def test_deadline_passed_while_queued(make: Any) -> None:
    h = make(batch=1, queue=4, delay=0.01)
    running = h.scheduler.stream(h.spec("Long:", "x " * 300))
    await running.__anext__()
    spec = h.spec("Late:", "never", deadline=time.monotonic() + 0.05)
    with pytest.raises(Timeout):
        await collect(h.scheduler.stream(spec))
    await running.aclose()


async def test_prefill_budget_splits_a_burst_but_serves_everyone(make: Any) -> None:
    budget = 24
    h = make(batch=9, budget=budget, delay=0.01)
    running = h.scheduler.stream(h.spec("Long:", "x " * 300))
    await running.__anext__()
    h.model.gate.clear()  # hold the worker, so that the whole burst is waiting at once
    assert await asyncio.to_thread(h.model.held.wait, 5)  # it is inside a forward now
    specs = [h.spec(f"burst {i} " + "w " * 6, f"reply {i}") for i in range(8)]
    length = len(specs[0].prompt_ids)
    assert all(len(s.prompt_ids) == length for s in specs) and length > 4  # warm-up is 4
    burst = asyncio.gather(*(collect(h.scheduler.stream(s)) for s in specs))
    await wait_until_async(lambda: h.scheduler.waiting_count == 8, 5, "the burst waiting")
    h.model.gate.set()
    assert h.scheduler.waiting_count == 8
    results = await burst
    await running.aclose()
    assert [r[0] for r in results] == [f"reply {i}" for i in range(8)]
    rows = [n for n, q in h.model.prefills if q == length]
    assert sum(rows) == 8
    # Without the budget the 8 waiting prompts would be prefilled in one call.
    assert max(rows) == budget // length and len(rows) > 1


async def test_stop_ends_waiting_and_running_requests(make: Any) -> None:
    h = make(batch=1, queue=4, delay=0.01)
    running = h.scheduler.stream(h.spec("Long:", "x " * 500))
    await running.__anext__()
    queued = asyncio.ensure_future(collect(h.scheduler.stream(h.spec("Queued:", "q"))))
    await wait_until_async(lambda: h.scheduler.waiting_count == 1, 5, "one queued")
    await asyncio.to_thread(h.scheduler.stop, 5)
    with pytest.raises(ShuttingDown):
        await queued
    last = [c async for c in running][-1]
    assert last.finish_reason == "cancelled"
    with pytest.raises(ShuttingDown):
        await h.scheduler.stream(h.spec("After:", "a")).__anext__()
