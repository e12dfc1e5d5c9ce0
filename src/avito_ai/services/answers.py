"""A generation's answer: the chunks of a stream gathered into choices, text and counts.

`AnswerCollector` is the one place chunks become an Answer (the generation service uses it
for whole answers and at the end of every stream). With tools, it also parses each
choice's calls out of its text as the text streams (services/tools.py), so a stream's
deltas and its Answer agree on every call and id."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from avito_ai.engines.base import (
    ChoiceEnd,
    Chunk,
    GenerationRequest,
    Timings,
    TokenLogprob,
    ToolCall,
    ToolCallPiece,
)
from avito_ai.errors import ModelUnavailable
from avito_ai.services.tools import ToolCallParser, merged_pieces


@dataclass(frozen=True)
class ChoiceAnswer:
    index: int
    text: str
    finish_reason: str  # stop, length, cancelled; tool_calls when it ended calling tools
    generated_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None  # when asked for
    reasoning: str = ""  # the thinking (thinking on), apart from the text
    tool_calls: tuple[ToolCall, ...] = ()


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
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    # The stop sequence the answer ended at, where the serving layer cut it itself (the
    # Anthropic dialect reports it); None otherwise.
    stop_sequence: str | None = None

    @property
    def tokens_per_second(self) -> float:
        gen = self.timings.generation_s
        return round(self.generated_tokens / gen, 2) if gen > 0 else 0.0


def _forced_tool(request: GenerationRequest | None) -> str | None:
    """The tool a required choice must call, when only one can be: a call cut short
    before its name was written whole is that tool's."""
    if request is None or request.tool_choice != "required":
        return None
    if request.forced_tool is not None:
        return request.forced_tool
    return request.tools[0].name if len(request.tools) == 1 else None


def _named_first(delta: Chunk | None) -> list[Chunk]:
    """A delta that begins a call and carries its first arguments as two: the call named
    (id, name, empty arguments), then the arguments, as OpenAI streams a call (clients
    read the first entry for the name alone)."""
    if delta is None:
        return []
    if not any(p.id is not None and p.arguments for p in delta.tool_calls):
        return [delta]
    named = tuple(
        ToolCallPiece(p.index, p.id, p.name, "") if p.id is not None else p
        for p in delta.tool_calls
    )
    arguments = tuple(
        ToolCallPiece(p.index, None, None, p.arguments)
        for p in delta.tool_calls
        if p.id is not None and p.arguments
    )
    return [
        dataclasses.replace(delta, tool_calls=named),
        Chunk("", index=delta.index, tool_calls=arguments),
    ]


class _PassedCalls:
    """The calls an engine parsed itself (an upstream's parser), gathered as they pass."""

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}  # call index → [id, name, arguments...]

    def add(self, pieces: tuple[ToolCallPiece, ...]) -> None:
        for piece in pieces:
            if piece.id is not None:
                self._calls[piece.index] = [piece.id, piece.name or "", piece.arguments]
            elif piece.index in self._calls:
                self._calls[piece.index].append(piece.arguments)

    @property
    def calls(self) -> list[ToolCall]:
        """Each call whole; one sent without arguments takes none: an empty object."""
        return [
            ToolCall(call_id, name, "".join(arguments) or "{}")
            for call_id, name, *arguments in (self._calls[i] for i in sorted(self._calls))
        ]


class AnswerCollector:
    """Gathers a stream's chunks into the Answer (text, reasoning, calls and logprobs per
    choice); `add` also gives the delta to send on, calls parsed out of its text, or, from
    an engine that parses them itself (`parses_tools`), its calls as they come."""

    def __init__(
        self, request: GenerationRequest | None = None, *, parses_tools: bool = False
    ) -> None:
        self.logprobs = request is not None and request.sampling.logprobs
        self.parses_tools = parses_tools
        self._passed: dict[int, _PassedCalls] = {}
        self._tools = (
            {t.name: t for t in request.tools}
            if request is not None
            and request.tools
            and request.tool_choice != "none"
            and not parses_tools
            else None
        )
        self._parallel = request is None or request.parallel_tool_calls
        self._forced = _forced_tool(request)
        self._required = request is not None and request.tool_choice == "required"
        self._texts: dict[int, list[str]] = {}
        self._thoughts: dict[int, list[str]] = {}
        self._tokens: dict[int, list[TokenLogprob]] = {}
        self._parsers: dict[int, ToolCallParser] = {}

    def _parse(self, chunk: Chunk) -> Chunk:
        if self.parses_tools and chunk.tool_calls:
            self._passed.setdefault(chunk.index, _PassedCalls()).add(chunk.tool_calls)
        if self._tools is None:
            return chunk
        parser = self._parsers.get(chunk.index)
        if parser is None:
            parser = self._parsers[chunk.index] = ToolCallParser(
                self._tools, self._parallel, self._forced, self._required
            )
        text, pieces = parser.feed(chunk.text)
        if chunk.is_final:
            tail, more = parser.finish()
            text, pieces = text + tail, merged_pieces(pieces + more)
        return dataclasses.replace(chunk, text=text, tool_calls=tuple(pieces))

    def _keep(self, chunk: Chunk) -> Chunk | None:
        i = chunk.index
        self._texts.setdefault(i, []).append(chunk.text)
        if chunk.reasoning:
            self._thoughts.setdefault(i, []).append(chunk.reasoning)
        if chunk.logprobs:
            self._tokens.setdefault(i, []).extend(chunk.logprobs)
        if chunk.text or chunk.logprobs or chunk.reasoning or chunk.tool_calls:
            return dataclasses.replace(chunk, finish_reason=None, timings=None, choices=None)
        return None

    def add(self, chunk: Chunk) -> tuple[list[Chunk], Answer | None]:
        """Take one chunk: the deltas to send on (finish and timings stay off them), and
        the Answer once the final chunk came."""
        deltas = _named_first(self._keep(self._parse(chunk)))
        if not chunk.is_final:
            return deltas, None
        if chunk.timings is None:
            raise ModelUnavailable("The model stopped without finishing the answer")
        for index, parser in self._parsers.items():  # the other choices' held text
            if index != chunk.index:
                text, pieces = parser.finish()
                deltas += _named_first(
                    self._keep(Chunk(text, index=index, tool_calls=tuple(pieces)))
                )
        ends = chunk.choices or (
            ChoiceEnd(0, chunk.finish_reason or "stop", chunk.generated_tokens or 0),
        )
        choices = tuple(self._choice(end) for end in sorted(ends, key=lambda e: e.index))
        first = choices[0]
        return deltas, Answer(
            text=first.text,
            finish_reason=first.finish_reason,
            input_tokens=chunk.input_tokens or 0,
            generated_tokens=chunk.generated_tokens or 0,
            timings=chunk.timings,
            choices=choices,
            logprobs=first.logprobs,
            reasoning=first.reasoning,
            tool_calls=first.tool_calls,
        )

    def _choice(self, end: ChoiceEnd) -> ChoiceAnswer:
        parser = self._parsers.get(end.index)
        passed = self._passed.get(end.index)
        calls = tuple(parser.calls if parser is not None else passed.calls if passed else ())
        finish = "tool_calls" if calls and end.finish_reason == "stop" else end.finish_reason
        return ChoiceAnswer(
            end.index,
            "".join(self._texts.get(end.index, ())),
            finish,
            end.generated_tokens,
            tuple(self._tokens.get(end.index, ())) if self.logprobs else None,
            "".join(self._thoughts.get(end.index, ())),
            calls,
        )
