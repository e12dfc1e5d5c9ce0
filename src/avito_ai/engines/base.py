"""The engine contract every backend implements, and the types that cross it.

Routes and services only ever see these types; an engine never sees HTTP.
`generate` is an async iterator of `Chunk`s: text deltas, then one final chunk with
`finish_reason`, token counts and timings. Non-streaming callers collect it.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from avito_ai.config import Role as Role  # the roles, re-exported with the contract

if TYPE_CHECKING:
    from PIL.Image import Image

FinishReason = Literal["stop", "length", "cancelled"]


class EngineState(StrEnum):
    NOT_CONFIGURED = "not_configured"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class EngineStatus:
    role: Role
    state: EngineState
    model_id: str | None = None
    device: str | None = None
    dtype: str | None = None
    reason: str | None = None
    engine: str | None = (
        None  # the backend serving it: openvino, transformers, remote, fake, vllm, ...
    )
    # Seconds after which a failed model may be back (an engine process restarting).
    retry_after: int | None = None

    def as_dict(self) -> dict[str, str | None]:
        """The public view (health, the page: no key needed): model ids and states, never
        a local path (only its last part) nor an engine's pid or port (those are in the
        logs and, for a client with a key, /api/metrics)."""
        return {
            "state": self.state.value,
            "engine": self.engine,
            "model": public_model_id(self.model_id),
            "device": self.device,
            "dtype": self.dtype,
            "reason": without_paths(self.reason),
        }


# An absolute path inside a message: its folders go, its last part stays.
_PATH = re.compile(r"(?<![\w:/.~-])(?:~/(?:[\w.+@-]+/)*|/(?:[\w.+@-]+/)+)(?=[\w.+@-])")


def without_paths(text: str | None) -> str | None:
    """`text` with each absolute path cut to its last part ("cannot load x.gguf")."""
    return None if text is None else _PATH.sub("", text)


def public_model_id(model_id: str | None) -> str | None:
    """A local model's id without its folders (/models/avibe-ov -> avibe-ov); hub ids
    (AvitoTech/avibe) as they are."""
    if model_id and model_id.startswith(("/", "~", "./", "../")):
        return PurePath(model_id).name or model_id
    return model_id


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    image: Image


ContentPart = TextPart | ImagePart
MessageRole = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call: its name, what it does, its JSON Schema parameters."""

    name: str
    parameters: dict[str, Any] = field(hash=False, compare=False)
    description: str | None = None


@dataclass(frozen=True)
class ToolCall:
    """A call the model made (or made earlier, in the history): `arguments` is JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallPiece:
    """A piece of a call in a stream: the first names it (`id`, `name`), the others carry
    its arguments' JSON text in order. `index`: the call's place among the choice's calls."""

    index: int
    id: str | None
    name: str | None
    arguments: str


def new_call_id() -> str:
    """A tool call's id, OpenAI's shape (call_ and 24 hex digits)."""
    return "call_" + secrets.token_hex(12)


# auto: the model decides; none: no calls; required: at least one call (one of
# `GenerationRequest.tools`, or `forced_tool` alone when it is set).
ToolChoice = Literal["auto", "none", "required"]


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat. An assistant message may carry the calls it made (and no
    text); a `tool` message is a call's result, `tool_call_id` naming the call."""

    role: MessageRole
    content: tuple[ContentPart, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    @classmethod
    def text(cls, role: MessageRole, text: str) -> ChatMessage:
        return cls(role=role, content=(TextPart(text),))

    @property
    def images(self) -> list[Image]:
        return [p.image for p in self.content if isinstance(p, ImagePart)]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k filter
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0  # OpenAI's, over the generated tokens; 0 is off
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_tokens
    logprobs: bool = False  # each generated token's log probability
    top_logprobs: int = 0  # and this many most likely alternatives at each position
    n: int = 1  # independent choices of one prompt


ConstraintKind = Literal["json_schema", "json_object", "regex", "grammar"]


@dataclass(frozen=True)
class OutputConstraint:
    """What the answer must match, applied after a thinking block (never to the thinking).

    `grammar` is the answer's compact grammar in xgrammar's EBNF (root rule `root`), compiled
    by the services (services/constraints.py): what in-process engines enforce. Upstreams
    get the client's own terms: `schema` (JSON schema, JSON object) or `pattern` (the regex
    or EBNF as given)."""

    kind: ConstraintKind
    grammar: str
    schema: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    pattern: str | None = None
    name: str = "answer"
    strict: bool = False
    description: str | None = None


@dataclass(frozen=True)
class Capabilities:
    """What an engine is and honours beyond plain sampling, known before a request runs:
    the services and the API layer ask this, never the role or the backend's name.

    `logprobs`: it gives each token's log probability; `top_logprobs`: how many
    alternatives per token at most (0: the chosen token only); `choices`: it makes n > 1
    choices itself (else the services run n generations)."""

    constraints: frozenset[ConstraintKind] = frozenset()
    logprobs: bool = False
    top_logprobs: int = 0
    choices: bool = False
    # It applies tool_choice itself (vLLM, SGLang, remote upstreams); else a grammar does.
    tools: bool = False
    # It takes images in the messages (a vision model).
    images: bool = False
    # It continues a raw prompt (/v1/completions); a chat-only model does not.
    completions: bool = True
    # How many requests it works on at once (fair admission's places); None: the
    # in-process batch (MAX_BATCH_SIZE). A role's MAX_CONCURRENCY overrides either.
    capacity: int | None = None
    # Its chunks carry tool calls already parsed (`Chunk.tool_calls`: an upstream's own
    # parser); else the services parse the Hermes calls out of its text.
    parses_tools: bool = False


def capabilities_of(engine: object) -> Capabilities:
    """What `engine` declares; an engine that declares nothing honours nothing extra."""
    return engine.capabilities() if isinstance(engine, DeclaresCapabilities) else Capabilities()


ALL_CONSTRAINTS: frozenset[ConstraintKind] = frozenset(
    {"json_schema", "json_object", "regex", "grammar"}
)


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. `prompt` (raw text, no chat template) or `messages` (chat).

    Immutable once built (services/pipeline.py): a step that changes it makes a new one
    (`dataclasses.replace`), so what a client's request became is what every later step,
    and the engine, sees."""

    request_id: str
    sampling: SamplingParams
    messages: list[ChatMessage] = field(default_factory=list)
    prompt: str | None = None
    enable_thinking: bool = False
    # time.monotonic() by which the request must be finished; None means no deadline.
    deadline: float | None = None
    created: float = field(default_factory=time.monotonic)
    # Priority class rank (0 interactive, 1 batch): engines that schedule by priority
    # (vLLM with --scheduling-policy priority) get it; the others ignore it.
    priority: int = 0
    # Structured output (response_format); None: free text.
    constraint: OutputConstraint | None = None
    # Functions the model may call (rendered by the chat template, or a system block).
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    forced_tool: str | None = None  # tool_choice naming one function
    parallel_tool_calls: bool = True
    # The W3C trace headers of its `generate` span (tracing on): upstreams continue it.
    trace: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Timings:
    queue_s: float  # submitted -> first scheduled
    ttft_s: float  # submitted -> first token
    generation_s: float  # first scheduled -> finished
    total_s: float  # submitted -> finished


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text (and bytes: a token may hold part of a character), its
    log probability, and the most likely alternatives when they were asked for."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class ChoiceEnd:
    """How one of several choices ended (the final chunk of an n > 1 generation)."""

    index: int
    finish_reason: FinishReason
    generated_tokens: int


@dataclass(frozen=True)
class Chunk:
    """A text delta; the last chunk of a generation also carries the summary.

    On a delta, `generated_tokens` is the count so far when the engine knows it (what a
    request cancelled mid-answer is charged); on the final chunk, the whole count (of every
    choice). `index`: the choice the delta belongs to (n > 1); `logprobs`: the tokens of
    this delta's text, when asked for (on the final chunk: those that made no text).
    `choices`: on the final chunk of n > 1 choices, how each ended."""

    text: str
    finish_reason: FinishReason | None = None
    input_tokens: int | None = None
    # The model's thinking released with this delta (thinking on), apart from the answer.
    reasoning: str = ""
    # Tool calls parsed out of the answer (services/tools.py), when the request has tools.
    tool_calls: tuple[ToolCallPiece, ...] = ()
    generated_tokens: int | None = None
    timings: Timings | None = None
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] | None = None
    choices: tuple[ChoiceEnd, ...] | None = None

    @property
    def is_final(self) -> bool:
        return self.finish_reason is not None


def final_chunk(
    reason: FinishReason,
    *,
    input_tokens: int,
    generated_tokens: int,
    created: float,
    scheduled: float,
    first_token: float | None,
    finished: float,
) -> Chunk:
    """The summary chunk that ends every generation, from its moments (time.monotonic()).

    `created`: the request was submitted; `scheduled`: work on it began; `first_token`: the
    first token was produced (None: no token, so "first token" is the end).
    """
    first = finished if first_token is None else first_token
    return Chunk(
        "",
        finish_reason=reason,
        input_tokens=input_tokens,
        generated_tokens=generated_tokens,
        timings=Timings(
            queue_s=scheduled - created,
            ttft_s=first - created,
            generation_s=finished - scheduled,
            total_s=finished - created,
        ),
    )


@runtime_checkable
class DeclaresCapabilities(Protocol):
    """An engine that honours constraints (structured output); the others honour none."""

    def capabilities(self) -> Capabilities: ...


@runtime_checkable
class CountsPromptTokens(Protocol):
    """An engine that can say how many tokens a request's prompt is before it runs (it
    has the tokenizer and chat template): token budgets reserve exactly that much. Others
    get an estimate (services/budgets.py), corrected by the final count."""

    def prompt_tokens(self, request: GenerationRequest) -> int:
        """The prompt's tokens as the model will see it. Raises ValidationFailed."""
        ...


@runtime_checkable
class ReportsEngineFigures(Protocol):
    """An engine served by a separate engine process (vLLM, SGLang) that can report that
    process's state and key figures (running, waiting, KV cache, speculative acceptance)."""

    async def engine_figures(self) -> dict[str, Any]: ...


@runtime_checkable
class Engine(Protocol):
    role: Role

    async def start(self) -> None:
        """Load weights. May take minutes; must not block the event loop."""

    async def stop(self) -> None:
        """Finish or cancel work and free memory."""

    def status(self) -> EngineStatus: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream the answer. Raises errors.Overloaded, ModelUnavailable or Timeout.

        Closing the iterator early (client gone) must stop the work within a step.
        """
        ...


class NotConfiguredEngine:
    """Stands in for a role with no model configured: health says so, requests get 503."""

    def __init__(self, role: Role, hint: str) -> None:
        self.role: Role = role
        self._hint = hint

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def status(self) -> EngineStatus:
        return EngineStatus(self.role, EngineState.NOT_CONFIGURED, reason=self._hint)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        from avito_ai.errors import ModelUnavailable

        raise ModelUnavailable(self._hint)
        yield Chunk("")  # pragma: no cover - makes this an async generator
