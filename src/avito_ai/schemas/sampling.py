"""The sampling fields every dialect's requests share (the native API, the forms and the
OpenAI API), with the input checks they all apply."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from avito_ai.schemas.structured import NativeResponseFormat


def _whole_unicode(value: str) -> str:
    """JSON can carry a lone UTF-16 surrogate ("\ud800"); no tokenizer or log can."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    return value


def _json_integer(value: object) -> object:
    """JSON has one number type: 10.0 is the integer 10 (as JSON Schema says). Strings and
    booleans stay refused, and 10.5 is still not an integer."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# For integer fields, after their bounds: strict (no "10", no true), but 10.0 is 10.
# (Bounds placed after it would leave the JSON schema with "ge" instead of "minimum".)
WholeNumber = BeforeValidator(_json_integer)


def _not_empty(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


# Text a client sends: a string of whole Unicode characters.
Text = Annotated[StrictStr, AfterValidator(_whole_unicode)]
# A stop string: an empty one would stop before the first character; a long one costs every
# token a scan of its length (a 200 kB one was accepted).
MAX_STOP_CHARS = 256


def _short_stop(value: str) -> str:
    if len(value) > MAX_STOP_CHARS:
        raise ValueError(f"a stop string has at most {MAX_STOP_CHARS} characters")
    return value


StopText = Annotated[
    Text,
    AfterValidator(_not_empty),
    AfterValidator(_short_stop),
    Field(json_schema_extra={"minLength": 1, "maxLength": MAX_STOP_CHARS}),
]
# The smallest normal float32: engines compute in float32 (or less), where a smaller
# positive value is 0 (OpenVINO then refused top_p=1e-300 with its own text).
FLOAT32_MIN = 1.1754943508222875e-38


def _zero_or_float32(value: float | None) -> float | None:
    if value is not None and 0 < value < FLOAT32_MIN:
        raise ValueError(f"must be 0 or at least {FLOAT32_MIN:.8g} (float32's smallest)")
    return value


def _float32_floor(value: object) -> object:
    """Before the bounds (whose message would print 1.2e-38 as 38 decimals)."""
    if isinstance(value, float | int) and not isinstance(value, bool) and value < FLOAT32_MIN:
        raise ValueError(f"must be at least {FLOAT32_MIN:.8g} (float32's smallest)")
    return value


# A seed is an integer JSON carries exactly everywhere (|seed| < 2^53, JavaScript's safe
# integers): past that, clients and validators that read JSON numbers as doubles change it.
MAX_SEED = 2**53 - 1
Seed = Annotated[StrictInt, Field(ge=-MAX_SEED, le=MAX_SEED), WholeNumber]

# A small real PNG, so the documented examples are requests the server answers.
EXAMPLE_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAAKklEQVR42u3NMQEAAAQ"
    "AMATRP4pYSvBtBZbTHZ8qngkEAoFAIBAIBIIrC+AFAUQz669uAAAAAElFTkSuQmCC"
)


class SamplingBase(BaseModel):
    """Sampling fields and their ranges, shared by the native and the OpenAI API."""

    model_config = ConfigDict(extra="ignore")

    max_tokens: Annotated[StrictInt, Field(ge=1), WholeNumber] | None = None
    # Strict, as the integers are: a number, not true or "0.5" (an integer is a number).
    temperature: Annotated[
        StrictFloat | None,
        Field(
            ge=0,
            le=2,
            json_schema_extra={
                "not": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": FLOAT32_MIN}
            },
        ),
        AfterValidator(_zero_or_float32),
    ] = None
    top_p: Annotated[
        StrictFloat | None, Field(ge=FLOAT32_MIN, le=1), BeforeValidator(_float32_floor)
    ] = None
    # 0 is off; anything past the vocabulary is the same as off.
    top_k: Annotated[StrictInt, Field(ge=0, le=2**31 - 1), WholeNumber] | None = None
    repetition_penalty: Annotated[
        StrictFloat | None, Field(ge=FLOAT32_MIN, le=2), BeforeValidator(_float32_floor)
    ] = None
    # OpenAI's penalties on the tokens generated so far: presence (once seen), frequency
    # (per occurrence); -2..2, 0 off.
    presence_penalty: Annotated[StrictFloat | None, Field(ge=-2, le=2)] = None
    frequency_penalty: Annotated[StrictFloat | None, Field(ge=-2, le=2)] = None
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    seed: Seed | None = None
    ignore_eos: StrictBool = Field(
        False, description="keep generating until max_tokens (benchmarks), as in vLLM"
    )


class SamplingFields(SamplingBase):
    system: Text | None = None
    stream: StrictBool = False
    enable_thinking: StrictBool = False
    # Structured output (docs/structured-output.md): OpenAI's shapes, plus regex and grammar.
    response_format: NativeResponseFormat | None = None
    # Each generated token's log probability (and this many alternatives), in data.logprobs.
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20), WholeNumber] = 0
