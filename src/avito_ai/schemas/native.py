"""The seed's JSON shapes for the native API."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)


def _whole_unicode(value: str) -> str:
    """JSON can carry a lone UTF-16 surrogate ("\ud800"); no tokenizer or log can."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    return value


# Text a client sends: a string of whole Unicode characters.
Text = Annotated[StrictStr, AfterValidator(_whole_unicode)]
# What torch, OpenVINO and upstream servers accept as a seed: int64 or uint64.
Seed = Annotated[StrictInt, Field(ge=-(2**63), le=2**64 - 1)]


class SamplingBase(BaseModel):
    """Sampling fields and their ranges, shared by the native and the OpenAI API."""

    model_config = ConfigDict(extra="ignore")

    max_tokens: Annotated[StrictInt | None, Field(ge=1)] = None
    # Strict, as the integers are: a number, not true or "0.5" (an integer is a number).
    temperature: Annotated[StrictFloat | None, Field(ge=0, le=2)] = None
    top_p: Annotated[StrictFloat | None, Field(gt=0, le=1)] = None
    top_k: Annotated[StrictInt | None, Field(ge=0)] = None
    repetition_penalty: Annotated[StrictFloat | None, Field(gt=0, le=2)] = None
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None
    seed: Seed | None = None
    ignore_eos: StrictBool = Field(
        False, description="keep generating until max_tokens (benchmarks), as in vLLM"
    )


class SamplingFields(SamplingBase):
    system: Text | None = None
    stream: StrictBool = False
    enable_thinking: StrictBool = False


class TextGenerateRequest(SamplingFields):
    # Optional here so a missing prompt gets the service's own clear message.
    prompt: Text | None = None

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"prompt": "Привет, подскажи рецепт борща", "max_tokens": 256, "temperature": 0.7}
            ]
        },
    )


class GenerationData(BaseModel):
    text: str
    generated_tokens: int
    input_tokens: int
    finish_reason: str


class GenerationMetrics(BaseModel):
    generation_time: float
    total_time: float
    tokens_per_second: float
    queue_time: float
    time_to_first_token: float


class GenerationResponse(BaseModel):
    success: bool = True
    data: GenerationData
    metrics: GenerationMetrics
    request_id: str


class ErrorResponse(BaseModel):
    error: str
    message: str
    request_id: str


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse, "description": "validation_error"},
    401: {"model": ErrorResponse, "description": "unauthorized"},
    413: {"model": ErrorResponse, "description": "payload_too_large"},
    429: {"model": ErrorResponse, "description": "rate_limit_exceeded"},
    503: {"model": ErrorResponse, "description": "model_unavailable or overloaded"},
    504: {"model": ErrorResponse, "description": "timeout"},
}


class ImageAnalyzeJSON(SamplingFields):
    """JSON variant of image analysis: the image as base64 or a `data:` URI."""

    image: StrictStr
    prompt: Text | None = None

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"image": "data:image/jpeg;base64,/9j/4AAQ...", "prompt": "Что на фото?"}]
        },
    )
