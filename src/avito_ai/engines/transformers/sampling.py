"""Next-token choice for a batch in which every row has its own sampling parameters.

Continuous batching puts unrelated requests into one forward pass, so sampling has to be
per row: one client's temperature, top-k/top-p, repetition penalty and seed must never
leak into another's. Two properties matter to users and are tested:

* temperature 0 is plain argmax, so greedy answers do not depend on the batch;
* a seeded request draws from its *own* `torch.Generator`, so the same seed and prompt give
  the same answer whatever else happens to share the batch.

The all-greedy batch without penalties (the common case, and the benchmark case) costs one
`argmax`; everything else is done row by row, which is cheap next to a
forward pass (at most `MAX_BATCH_SIZE` rows).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

from avito_ai.engines.base import SamplingParams
from avito_ai.engines.transformers.grammar import TokenGrammar


class RowSampler:
    """Sampling state of one sequence: its parameters, generator and token history.

    The history (prompt + generated ids) is only kept when a repetition penalty needs it. It
    lives in a preallocated buffer so appending a token is O(1) instead of a tensor concat.
    """

    __slots__ = (
        "_counts",
        "_grammar",
        "_history",
        "_length",
        "chosen_logprob",
        "frequency_penalty",
        "generator",
        "logprobs",
        "presence_penalty",
        "repetition_penalty",
        "temperature",
        "top_k",
        "top_logprobs",
        "top_p",
    )

    def __init__(
        self,
        params: SamplingParams,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        device: torch.device | str = "cpu",
        grammar: TokenGrammar | None = None,
    ) -> None:
        """`grammar`: the row's structured-output constraint (grammar.py)."""
        self._grammar = grammar
        self.logprobs = params.logprobs
        self.top_logprobs = params.top_logprobs
        # After each choice, when logprobs are asked for: (its log probability, the
        # alternatives as (token id, log probability)), from the model's own distribution.
        self.chosen_logprob: tuple[float, list[tuple[int, float]]] | None = None
        self.temperature = float(params.temperature)
        self.top_k = int(params.top_k)
        self.top_p = float(params.top_p)
        self.repetition_penalty = float(params.repetition_penalty)
        self.presence_penalty = float(params.presence_penalty)
        self.frequency_penalty = float(params.frequency_penalty)
        # Generated token -> times, for OpenAI's presence and frequency penalties.
        self._counts: dict[int, int] | None = (
            {} if self.presence_penalty or self.frequency_penalty else None
        )
        self.generator: torch.Generator | None = None
        if self.temperature > 0:
            # An unseeded request still gets its own generator (seeded from the OS) so that it
            # never perturbs, nor is perturbed by, the global torch RNG of other requests.
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)
        self._history: torch.Tensor | None = None
        self._length = 0
        if self.repetition_penalty != 1.0:
            size = len(prompt_ids) + max_new_tokens
            self._history = torch.empty(size, dtype=torch.long, device=device)
            if prompt_ids:
                self._history[: len(prompt_ids)] = torch.tensor(prompt_ids, dtype=torch.long)
            self._length = len(prompt_ids)

    def constrain(self, grammar: TokenGrammar) -> None:
        """From now on every token this row chooses is one `grammar` allows."""
        self._grammar = grammar

    @property
    def is_plain_greedy(self) -> bool:
        """Argmax over raw logits: nothing per-row to do."""
        return (
            self.temperature <= 0
            and self.repetition_penalty == 1.0
            and self._counts is None
            and self._grammar is None
            and not self.logprobs
        )

    def record(self, token_id: int) -> None:
        """Remember a generated token for the penalties and the grammar."""
        if self._grammar is not None:
            self._grammar.accept(token_id)
        if self._counts is not None:
            self._counts[token_id] = self._counts.get(token_id, 0) + 1
        if self._history is not None and self._length < self._history.numel():
            self._history[self._length] = token_id
            self._length += 1

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Pick the next token from one row of float32 logits; returns a 0-d tensor."""
        chosen = self._choose(logits)
        if self.logprobs:  # of the model's distribution, before penalties and constraints
            scores = torch.log_softmax(logits.float(), dim=-1)
            top: list[tuple[int, float]] = []
            if self.top_logprobs:
                values, ids = torch.topk(scores, self.top_logprobs)
                top = list(zip(ids.tolist(), values.tolist(), strict=True))
            self.chosen_logprob = (float(scores[chosen]), top)
        return chosen

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        if self._grammar is not None:
            logits = self._grammar.mask(logits)
        if self._history is not None and self._length:
            logits = apply_repetition_penalty(
                logits, self._history[: self._length], self.repetition_penalty
            )
        if self._counts:
            logits = apply_openai_penalties(
                logits, self._counts, self.presence_penalty, self.frequency_penalty
            )
        if self.temperature <= 0:
            return logits.argmax(-1)
        logits = logits / self.temperature
        if self.top_k > 0:
            logits = apply_top_k(logits, self.top_k)
        if self.top_p < 1.0:
            logits = apply_top_p(logits, self.top_p)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[0]


def apply_repetition_penalty(
    logits: torch.Tensor, seen_ids: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL-style penalty (as in transformers): divide positive, multiply negative logits."""
    out = logits.clone()
    scores = out.gather(-1, seen_ids)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    out.scatter_(-1, seen_ids, scores)
    return out


def apply_openai_penalties(
    logits: torch.Tensor, counts: dict[int, int], presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's (and vLLM's): each generated token's logit minus `presence` once and
    `frequency` per time it was generated."""
    ids = torch.tensor(list(counts), dtype=torch.long, device=logits.device)
    times = torch.tensor(list(counts.values()), dtype=logits.dtype, device=logits.device)
    out = logits.clone()
    out[ids] -= presence + frequency * times
    return out


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits (ties at the k-th value are kept too)."""
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of top tokens whose probability reaches p.

    The most likely token is always kept, so p close to 0 degenerates to greedy instead of
    leaving nothing to sample from.
    """
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each token
    drop = before >= p
    drop[..., 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample_tokens(logits: torch.Tensor, rows: Sequence[RowSampler]) -> torch.Tensor:
    """Choose one token per row of `logits` ([batch, vocab], any float dtype).

    Returns a [batch] long tensor on the logits' device: the scheduler feeds it straight
    back as the next step's input, without a round trip through the host.
    """
    if all(r.is_plain_greedy for r in rows):
        return logits.argmax(-1)
    logits = logits.float()
    return torch.stack([row.choose(logits[i]) for i, row in enumerate(rows)])


def sample_next(logits: torch.Tensor, rows: Sequence[RowSampler]) -> list[int]:
    """`sample_tokens` as plain ints."""
    chosen: list[int] = sample_tokens(logits, rows).tolist()
    return chosen
