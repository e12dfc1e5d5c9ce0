"""The native API's wire models: the original specification's JSON shapes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from avito_ai.schemas.sampling import EXAMPLE_IMAGE, SamplingFields, Text


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


class NativeTopLogprob(BaseModel):
    token: str
    logprob: float


class NativeTokenLogprob(BaseModel):
    token: str
    logprob: float
    top_logprobs: list[NativeTopLogprob] = []


class GenerationData(BaseModel):
    text: str
    generated_tokens: int
    input_tokens: int
    finish_reason: str
    # Only when the request asked for logprobs (otherwise the original body, unchanged).
    logprobs: list[NativeTokenLogprob] | None = Field(None, exclude_if=lambda v: v is None)
    # The model's thinking, apart from the text: only with enable_thinking (and a model
    # that thinks).
    reasoning: str | None = Field(None, exclude_if=lambda v: v is None)


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


class ImageAnalyzeJSON(SamplingFields):
    """JSON variant of image analysis: the image as base64 or a `data:` URI."""

    image: StrictStr
    prompt: Text | None = None

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"image": EXAMPLE_IMAGE, "prompt": "Что на фото?"}]},
    )
