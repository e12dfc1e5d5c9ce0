"""OpenAI-compatible wire formats (chat completions, completions, models)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

from avito_ai.schemas.sampling import EXAMPLE_IMAGE, SamplingBase, Text, WholeNumber
from avito_ai.schemas.structured import ResponseFormat

# Bounds checked while the body is parsed, before any work: a 12 MB body of 600,000 empty
# messages once held the event loop for 19 s.
MAX_MESSAGES = 256
MAX_PARTS = 32
UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "best_of",
    "logit_bias",
    "suffix",
)
# What each unsupported field may be: its "off" values.
_OFF: list[dict[str, Any]] = [
    {"type": "null"},
    {"const": False},
    {"type": "array", "maxItems": 0},
    {"type": "object", "maxProperties": 0},
    {"const": ""},
    {"const": 1},
]
_UNSUPPORTED_SCHEMA: dict[str, Any] = {
    "description": 'not supported by this server: leave it out (null, false, [], {}, "" '
    "and best_of 1 pass)",
    "deprecated": True,
    "anyOf": _OFF,
}


def _is_off(value: Any) -> bool:
    return (
        value is None
        or value is False
        or (type(value) in (list, dict, str) and not value)
        or (type(value) is int and value == 1)
    )


# stream_options only with stream: true (the schema says so too, for the contract test)
STREAM_OPTIONS_RULE: dict[str, Any] = {
    "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
    "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
}


class ImageURL(BaseModel):
    url: StrictStr
    detail: str | None = None


class TextContentPart(BaseModel):
    type: Literal["text"]
    text: Text


class ImageContentPart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL | StrictStr


ContentPartIn = Annotated[TextContentPart | ImageContentPart, Field(discriminator="type")]


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    # Required: a message without content is a mistake (tool calls are not supported).
    content: Text | Annotated[list[ContentPartIn], Field(min_length=1, max_length=MAX_PARTS)]
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class OpenAISampling(SamplingBase):
    model: StrictStr
    max_completion_tokens: Annotated[StrictInt, Field(ge=1), WholeNumber] | None = None
    # Choices per request; the server's bound is MAX_CHOICES (a 400 past it).
    n: Annotated[StrictInt, Field(ge=1, le=128), WholeNumber] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Parts of the OpenAI API this server does not implement: refused, never ignored. Only
    # their "off" values (null, false, []) are accepted, and the schema says so.
    tools: Any = Field(None, json_schema_extra=_UNSUPPORTED_SCHEMA)
    tool_choice: Any = Field(None, json_schema_extra=_UNSUPPORTED_SCHEMA)
    functions: Any = Field(None, json_schema_extra=_UNSUPPORTED_SCHEMA)
    response_format: ResponseFormat | None = None
    best_of: Any = Field(None, json_schema_extra=_UNSUPPORTED_SCHEMA)
    logit_bias: Any = Field(None, json_schema_extra=_UNSUPPORTED_SCHEMA)
    suffix: Any = Field(None, json_schema_extra=_UNSUPPORTED_SCHEMA)

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _refuse_unsupported(cls, value: Any) -> Any:
        if not _is_off(value):
            raise ValueError("not supported by this server")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            # OpenAI's own answer to it (`stream` is declared, so validated, before)
            raise ValueError(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            )
        return value


class ChatCompletionRequest(OpenAISampling):
    messages: Annotated[
        list[ChatMessageIn],
        Field(
            min_length=1,
            max_length=MAX_MESSAGES,
            description="at least one message from the user",
            json_schema_extra={
                "contains": {
                    "type": "object",
                    "required": ["role"],
                    "properties": {"role": {"const": "user"}},
                }
            },
        ),
    ]
    enable_thinking: StrictBool = False
    chat_template_kwargs: dict[str, Any] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20), WholeNumber] | None = None

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            **STREAM_OPTIONS_RULE,
            "examples": [
                {
                    "model": "avibe",
                    "messages": [{"role": "user", "content": "Привет! Как дела?"}],
                    "max_tokens": 64,
                },
                {
                    "model": "avision",
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "Что на фото?"},
                                {
                                    "type": "image_url",
                                    "image_url": {"url": EXAMPLE_IMAGE},
                                },
                            ],
                        }
                    ],
                },
            ],
        },
    )


class CompletionRequest(OpenAISampling):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]
    echo: StrictBool = False
    # Completions' own: the log probability of each token and of this many alternatives.
    logprobs: Annotated[StrictInt, Field(ge=0, le=5), WholeNumber] | None = None

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            **STREAM_OPTIONS_RULE,
            "examples": [{"model": "avibe", "prompt": "Once upon a time"}],
        },
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "avito"
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
