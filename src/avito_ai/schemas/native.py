"""The seed's JSON shapes for the native API."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class SamplingBase(BaseModel):
    """Sampling fields and their ranges, shared by the native and the OpenAI API."""

    model_config = ConfigDict(extra="ignore")

    max_tokens: Annotated[StrictInt | None, Field(ge=1)] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    top_k: Annotated[StrictInt | None, Field(ge=0)] = None
    repetition_penalty: Annotated[float | None, Field(gt=0, le=2)] = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None = None
    seed: StrictInt | None = None
    ignore_eos: StrictBool = Field(
        False, description="keep generating until max_tokens (benchmarks), as in vLLM"
    )


class SamplingFields(SamplingBase):
    system: StrictStr | None = None
    stream: StrictBool = False
    enable_thinking: StrictBool = False


class TextGenerateRequest(SamplingFields):
    # Optional here so a missing prompt gets the service's own clear message.
    prompt: StrictStr | None = None

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
    prompt: StrictStr | None = None

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"image": "data:image/jpeg;base64,/9j/4AAQ...", "prompt": "Что на фото?"}]
        },
    )
