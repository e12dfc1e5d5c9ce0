"""One generation, token by token: what the text scheduler and the vision engine share.

A `Sequence` owns a request's sampler (its own seeded generator, repetition history) and
its output (engines/inprocess.py's `Output`: the text pipeline, counts and log
probabilities, as OpenVINO's worker keeps them too), and decides after every token whether
the answer is finished and why. The engines differ only in how tokens are produced (a
batched forward, or `generate()`), not in what a token means.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from avito_ai.engines.base import Chunk, FinishReason, SamplingParams, TokenLogprob
from avito_ai.engines.inprocess import Output
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

    __slots__ = ("_eos", "output", "sampler", "spec")

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
        pipeline = TextPipeline(
            new_detokenizer(),
            stop=spec.stop,
            keep_thinking=spec.keep_thinking,
            thinking_open=spec.thinking_open,
        )
        self.output = Output(
            pipeline,
            input_tokens=len(spec.prompt_ids),
            created=spec.created,
            logprobs=spec.token_bytes is not None and self.sampler.logprobs,
            scheduled_at=scheduled_at,
        )

    @property
    def generated(self) -> int:
        return self.output.generated

    def accept(self, token: int, now: float) -> tuple[Chunk | None, FinishReason | None]:
        """Take one sampled token: the delta it releases (None: nothing yet), and why the
        answer ends (or None)."""
        self.sampler.record(token)
        end = token in self._eos
        delta = self.output.token(token, now, self._logprob(token), text=not end)
        if end:
            return None, "stop"
        if self.output.stopped:
            return delta, "stop"
        if self.output.generated >= self.spec.max_new_tokens:
            return delta, "length"
        return delta, None

    def skip(self) -> None:
        """A token sampled for a request whose client left: counted, nothing more."""
        self.output.generated += 1

    def _logprob(self, token: int) -> TokenLogprob | None:
        chosen, self.sampler.chosen_logprob = self.sampler.chosen_logprob, None
        name = self.spec.token_bytes
        if chosen is None or name is None:
            return None
        raw = name(token)
        top = tuple((name(t).decode("utf-8", "replace"), lp, tuple(name(t))) for t, lp in chosen[1])
        return TokenLogprob(raw.decode("utf-8", "replace"), chosen[0], tuple(raw), top)

    def finish(self, reason: FinishReason, now: float) -> list[Chunk]:
        """The chunks that end the answer: any text still held back, then the summary."""
        return self.output.finish(reason, now)


def generation_failure(exc: BaseException) -> BaseException:
    """What a consumer is told when the model itself failed (its traceback is logged)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return ModelUnavailable("Out of memory while generating; retry with a shorter request")
    return RuntimeError(f"Generation failed: {exc}")
