"""One generation, token by token: what the text scheduler and the vision engine share.

A `Sequence` owns a request's sampler (its own seeded generator, repetition history), its
text pipeline (detokenize, strip thinking, stop strings) and its counts, and decides after
every token whether the answer is finished and why. The engines differ only in how tokens
are produced (a batched forward, or `generate()`), not in what a token means.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from avito_ai.engines.base import Chunk, FinishReason, SamplingParams, TokenLogprob, final_chunk
from avito_ai.engines.textstream import Detokenizer, TextPipeline
from avito_ai.engines.transformers.grammar import TokenGrammar
from avito_ai.engines.transformers.sampling import RowSampler
from avito_ai.errors import ModelUnavailable


@dataclass
class SequenceSpec:
    """One tokenized request, as the engines need it."""

    prompt_ids: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    keep_thinking: bool = False  # the reasoning goes apart (Chunk.reasoning), not dropped
    thinking_open: bool = False  # the prompt already opened a <think> block
    deadline: float | None = None  # time.monotonic()
    created: float = field(default_factory=time.monotonic)
    request_id: str = ""
    ignore_eos: bool = False  # benchmarks: always generate max_new_tokens
    # The structured-output constraint, compiled for this model (grammar.py); None: free.
    grammar: Any = None
    vocab_size: int = 0
    # A token id's own bytes (logprobs); None when none are asked for.
    token_bytes: Callable[[int], bytes] | None = None


class Sequence:
    """Worker-side state of one generation (see the module docstring)."""

    __slots__ = (
        "_eos",
        "_logprobs",
        "first_token_at",
        "generated",
        "pipeline",
        "sampler",
        "scheduled_at",
        "spec",
    )

    def __init__(
        self,
        spec: SequenceSpec,
        new_detokenizer: Callable[[], Detokenizer],
        *,
        eos_token_ids: frozenset[int],
        device: torch.device | str,
        scheduled_at: float | None = None,
    ) -> None:
        """`scheduled_at`: when work on it began (default: now)."""
        self.spec = spec
        self._eos = frozenset() if spec.ignore_eos else eos_token_ids
        self.sampler = RowSampler(
            spec.sampling,
            spec.prompt_ids,
            max_new_tokens=spec.max_new_tokens,
            device=device,
            grammar=TokenGrammar(spec.grammar, spec.vocab_size) if spec.grammar else None,
        )
        self.pipeline = TextPipeline(
            new_detokenizer(),
            stop=spec.stop,
            keep_thinking=spec.keep_thinking,
            thinking_open=spec.thinking_open,
        )
        self.generated = 0
        self._logprobs: list[TokenLogprob] = []
        self.scheduled_at = time.monotonic() if scheduled_at is None else scheduled_at
        self.first_token_at: float | None = None

    def accept(self, token: int, now: float) -> tuple[Chunk | None, FinishReason | None]:
        """Take one sampled token: the delta it releases (None: nothing yet), and why the
        answer ends (or None)."""
        self.generated += 1
        if self.first_token_at is None:
            self.first_token_at = now
        self.sampler.record(token)
        self._note_logprob(token)
        if token in self._eos:
            return None, "stop"
        text = self.pipeline.push(token)
        reasoning = self.pipeline.take_reasoning()
        delta = self.delta(text, reasoning) if text or reasoning else None
        if self.pipeline.stopped:
            return delta, "stop"
        if self.generated >= self.spec.max_new_tokens:
            return delta, "length"
        return delta, None

    def _note_logprob(self, token: int) -> None:
        chosen, self.sampler.chosen_logprob = self.sampler.chosen_logprob, None
        name = self.spec.token_bytes
        if chosen is None or name is None:
            return
        raw = name(token)
        top = tuple((name(t).decode("utf-8", "replace"), lp, tuple(name(t))) for t, lp in chosen[1])
        self._logprobs.append(
            TokenLogprob(raw.decode("utf-8", "replace"), chosen[0], tuple(raw), top)
        )

    def take_logprobs(self) -> tuple[TokenLogprob, ...] | None:
        """The tokens' log probabilities since the last call (None: not asked for)."""
        if self.spec.token_bytes is None or not self.sampler.logprobs:
            return None
        taken, self._logprobs = tuple(self._logprobs), []
        return taken

    def delta(self, text: str, reasoning: str = "") -> Chunk:
        return Chunk(
            text,
            generated_tokens=self.generated,
            logprobs=self.take_logprobs(),
            reasoning=reasoning,
        )

    def finish(self, reason: FinishReason, now: float) -> list[Chunk]:
        """The chunks that end the answer: any text still held back, then the summary."""
        tail = self.pipeline.finish()
        thought = self.pipeline.take_reasoning()
        final = final_chunk(
            reason,
            input_tokens=len(self.spec.prompt_ids),
            generated_tokens=self.generated,
            created=self.spec.created,
            scheduled=self.scheduled_at,
            first_token=self.first_token_at,
            finished=now,
        )
        logprobs = self.take_logprobs()
        if logprobs:  # the tokens that made no text (the end, a held-back tail)
            final = dataclasses.replace(final, logprobs=logprobs)
        return [Chunk(tail, reasoning=thought), final] if tail or thought else [final]


def generation_failure(exc: BaseException) -> BaseException:
    """What a consumer is told when the model itself failed (its traceback is logged)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return ModelUnavailable("Out of memory while generating; retry with a shorter request")
    return RuntimeError(f"Generation failed: {exc}")
