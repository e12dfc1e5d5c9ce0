"""A request in OpenVINO GenAI's terms: its sampling as a GenerationConfig, what a
constraint may cost, and its row in the pipeline. Shared by the OpenVINO engines."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from avito_ai.engines.base import FinishReason, GenerationRequest, SamplingParams
from avito_ai.engines.bridge import Ticket
from avito_ai.engines.grammar import after_thinking, bounded_character_runs
from avito_ai.engines.inprocess import Output
from avito_ai.engines.textstream import THINK_OPEN, TextPipeline
from avito_ai.errors import ValidationFailed


@dataclass
class Prepared:
    """A request ready for `add_request`: token ids (A-Vibe), or a prompt with its images
    (A-Vision)."""

    request: GenerationRequest
    prompt_tokens: int
    config: Any  # openvino_genai.GenerationConfig
    stop: tuple[str, ...]
    keep_thinking: bool  # the reasoning goes apart (Chunk.reasoning), not dropped
    thinking_open: bool  # the prompt opened a <think> block
    input_ids: Any = None  # openvino.Tensor [1, n]
    prompt: str = ""  # the chat-templated text, an image tag where each image goes
    images: tuple[Any, ...] = ()  # openvino.Tensor [1, H, W, 3] uint8 each
    # What add_request refusing it is about, in the client's message.
    what: str = "generation settings"


# OpenVINO compiles a request's grammar inside its step, where every other request waits:
# a constraint may hold at most this many bounded-length strings (about 0.2-0.7 s each).
MAX_BOUNDED_RUNS = 4


def check_grammar_cost(grammar: str) -> None:
    runs = bounded_character_runs(grammar)
    if runs > MAX_BOUNDED_RUNS:
        raise ValidationFailed(
            f"The schema bounds the length of {runs} strings (maxLength, or minLength below "
            f"it); the OpenVINO engine compiles each in its step, where every request waits, "
            f"so it takes at most {MAX_BOUNDED_RUNS}: drop some bounds, or use another engine",
            param="response_format",
        )


def generation_config(sampling: SamplingParams) -> Any:
    """The request's sampling as OpenVINO GenAI's GenerationConfig."""
    import openvino_genai as genai

    config = genai.GenerationConfig()
    config.max_new_tokens = sampling.max_tokens
    if sampling.temperature > 0:
        config.do_sample = True
        config.temperature = sampling.temperature
        config.top_p = sampling.top_p
        if sampling.top_k > 0:
            config.top_k = sampling.top_k
        # The request's own generator: an unseeded request gets a random seed.
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
        config.rng_seed = seed % 2**64
    else:
        config.do_sample = False
    config.repetition_penalty = sampling.repetition_penalty
    config.presence_penalty = sampling.presence_penalty
    config.frequency_penalty = sampling.frequency_penalty
    # Stop strings are the text pipeline's alone (the worker cancels the request when it
    # sees one): the pipeline's own matching withholds the token that completes a stop
    # string, so a stop spread over tokens ("tal of " in " capital", " of", " France")
    # left its head ("tal of") in the answer.
    config.ignore_eos = sampling.ignore_eos
    if sampling.logprobs:
        config.logprobs = 1  # the chosen token's (OpenVINO gives no alternatives)
    return config


def constrain(config: Any, request: GenerationRequest, *, thinking_opened: bool) -> None:
    """Set the request's constraint (if any) on `config`, holding after a thinking block."""
    if request.constraint is None:
        return
    import openvino_genai as genai

    grammar = request.constraint.grammar
    check_grammar_cost(grammar)
    if request.enable_thinking or thinking_opened:
        grammar = after_thinking(grammar, opened=thinking_opened)
    config.structured_output_config = genai.StructuredOutputConfig(grammar=grammar)


def request_config(
    request: GenerationRequest, prompt: str, tokens: int, context: int, *, counted: str
) -> tuple[Any, bool]:
    """The request's GenerationConfig for a `tokens`-token prompt (`counted` says how they
    were counted), its budget cut to what the model's `context` leaves (0: unknown), its
    constraint set; and whether the prompt opened a thinking block. Raises ValidationFailed."""
    sampling = request.sampling
    room = context - tokens if context else sampling.max_tokens
    if room < 1:
        raise ValidationFailed(
            f"The prompt is {counted}; the model's context is {context} tokens",
            param="prompt" if request.prompt is not None else "messages",
        )
    config = generation_config(sampling)
    config.max_new_tokens = min(sampling.max_tokens, room)
    opened = prompt.rstrip().endswith(THINK_OPEN)
    constrain(config, request, thinking_opened=opened)
    return config, opened


class Row:
    """A request in the pipeline: its handle, its output so far, why it ends."""

    __slots__ = ("finish", "handle", "output", "ticket")

    def __init__(self, ticket: Ticket[Prepared], handle: Any, text: TextPipeline) -> None:
        self.ticket = ticket
        self.handle = handle
        prepared = ticket.payload
        self.output = Output(
            text,
            input_tokens=prepared.prompt_tokens,
            created=prepared.request.created,
            logprobs=prepared.request.sampling.logprobs,
        )
        self.finish: FinishReason | None = None
