"""A generation's answer: the chunks of a stream gathered into choices, text and counts.

`AnswerCollector` is the one place chunks become an Answer (the generation service uses it
for whole answers and at the end of every stream)."""

from __future__ import annotations

from dataclasses import dataclass

from avito_ai.engines.base import ChoiceEnd, Chunk, Timings, TokenLogprob
from avito_ai.errors import ModelUnavailable


@dataclass(frozen=True)
class ChoiceAnswer:
    index: int
    text: str
    finish_reason: str
    generated_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None  # when asked for


@dataclass(frozen=True)
class Answer:
    """A whole generation: the first choice's text and finish, every choice in `choices`,
    token counts of all of them."""

    text: str
    finish_reason: str
    input_tokens: int
    generated_tokens: int
    timings: Timings
    choices: tuple[ChoiceAnswer, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None  # the first choice's, when asked for

    @property
    def tokens_per_second(self) -> float:
        gen = self.timings.generation_s
        return round(self.generated_tokens / gen, 2) if gen > 0 else 0.0


class AnswerCollector:
    """Gathers a stream's chunks into the Answer (text and logprobs per choice)."""

    def __init__(self, logprobs: bool = False) -> None:
        self.logprobs = logprobs
        self._texts: dict[int, list[str]] = {}
        self._tokens: dict[int, list[TokenLogprob]] = {}

    def add(self, chunk: Chunk) -> Answer | None:
        """Take one chunk; the Answer once the final one came."""
        self._texts.setdefault(chunk.index, []).append(chunk.text)
        if chunk.logprobs:
            self._tokens.setdefault(chunk.index, []).extend(chunk.logprobs)
        if not chunk.is_final:
            return None
        if chunk.timings is None:
            raise ModelUnavailable("The model stopped without finishing the answer")
        ends = chunk.choices or (
            ChoiceEnd(0, chunk.finish_reason or "stop", chunk.generated_tokens or 0),
        )
        choices = tuple(
            ChoiceAnswer(
                end.index,
                "".join(self._texts.get(end.index, ())),
                end.finish_reason,
                end.generated_tokens,
                tuple(self._tokens.get(end.index, ())) if self.logprobs else None,
            )
            for end in sorted(ends, key=lambda e: e.index)
        )
        first = choices[0]
        return Answer(
            text=first.text,
            finish_reason=first.finish_reason,
            input_tokens=chunk.input_tokens or 0,
            generated_tokens=chunk.generated_tokens or 0,
            timings=chunk.timings,
            choices=choices,
            logprobs=first.logprobs,
        )
