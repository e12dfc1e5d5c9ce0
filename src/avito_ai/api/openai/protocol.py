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
    model_validator,
)

from avito_ai.schemas.chat import MAX_MESSAGES, MAX_PARTS, MAX_TOOLS, FunctionName
from avito_ai.schemas.sampling import EXAMPLE_IMAGE, SamplingBase, Text, WholeNumber
from avito_ai.schemas.structured import ResponseFormat

UNSUPPORTED = (
    "functions",
    "function_call",
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

CHAT_UNSUPPORTED = ("store", "web_search_options", "prediction")
_CHAT_UNSUPPORTED_SCHEMA: dict[str, Any] = {
    "description": 'not supported by this server: leave it out (null, false, [], {}, "" pass)',
    "deprecated": True,
    "anyOf": _OFF[:-1],
}


def _or_null(schema: dict[str, Any]) -> None:
    """The field's schema also admits null, which its validator reads as the default."""
    typed = {k: schema.pop(k) for k in ("type", "minimum", "maximum") if k in schema}
    schema["anyOf"] = [typed, {"type": "null"}]


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


class FunctionCallIn(BaseModel):
    name: FunctionName
    arguments: StrictStr  # JSON text, as the model wrote it


class ToolCallIn(BaseModel):
    id: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    tool_calls: Annotated[list[ToolCallIn], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: StrictStr | None = None  # role "tool": the call it answers
    # Required, except on an assistant message that made tool calls.
    content: (
        Text | Annotated[list[ContentPartIn], Field(min_length=1, max_length=MAX_PARTS)] | None
    ) = Field(None, validate_default=True)
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _content_unless_calls(cls, value: Any, info: ValidationInfo) -> Any:
        role, calls = info.data.get("role"), info.data.get("tool_calls")
        if value is None and not (role == "assistant" and calls):
            raise ValueError("Field required")
        return value

    @model_validator(mode="after")
    def _calls_and_results(self) -> ChatMessageIn:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self


class FunctionDefinition(BaseModel):
    name: FunctionName
    description: StrictStr | None = None
    # JSON Schema of the arguments (checked: 400 naming the tool when it is not one).
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class FunctionTool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: FunctionName


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoiceIn = Literal["auto", "none", "required"] | NamedToolChoice


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class OpenAISampling(SamplingBase):
    model: StrictStr
    max_completion_tokens: Annotated[StrictInt, Field(ge=1), WholeNumber] | None = None
    # Choices per request; the server's bound is MAX_CHOICES (a 400 past it).
    n: Annotated[StrictInt, Field(ge=1, le=128, json_schema_extra=_or_null), WholeNumber] = 1
    stream: Annotated[StrictBool, Field(json_schema_extra=_or_null)] = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Parts of the OpenAI API this server does not implement: refused, never ignored. Only
    # their "off" values (null, false, []) are accepted, and the schema says so.
    functions: Any = Field(None, json_schema_extra=_UNSUPPORTED_SCHEMA)
    function_call: Any = Field(None, json_schema_extra=_UNSUPPORTED_SCHEMA)
    response_format: ResponseFormat | None = None
    best_of: Any = Field(None, json_schema_extra=_UNSUPPORTED_SCHEMA)
    logit_bias: Any = Field(None, json_schema_extra=_UNSUPPORTED_SCHEMA)
    suffix: Any = Field(None, json_schema_extra=_UNSUPPORTED_SCHEMA)

    @field_validator("n", "stream", mode="before")
    @classmethod
    def _null_is_the_default(cls, value: Any, info: ValidationInfo) -> Any:
        # OpenAI's reference types both as "integer or null" / "boolean or null": null
        # means the default (1 choice, no stream), as clients that send every field write it.
        if value is None:
            return 1 if info.field_name == "n" else False
        return value

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
    # Thinking on unless "none" (Qwen3 thinks or not; it has no levels in between).
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoiceIn | None = None
    parallel_tool_calls: StrictBool | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20), WholeNumber] | None = None
    # Chat's own parts this server does not implement (stored completions, web search,
    # predicted outputs): refused, never ignored; only their "off" values pass.
    store: Any = Field(None, json_schema_extra=_CHAT_UNSUPPORTED_SCHEMA)
    web_search_options: Any = Field(None, json_schema_extra=_CHAT_UNSUPPORTED_SCHEMA)
    prediction: Any = Field(None, json_schema_extra=_CHAT_UNSUPPORTED_SCHEMA)

    @field_validator(*CHAT_UNSUPPORTED)
    @classmethod
    def _refuse_chat_unsupported(cls, value: Any) -> Any:
        if not _is_off(value) or type(value) is int:
            raise ValueError("not supported by this server")
        return value

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


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    # Left out when empty, as OpenAI leaves them out.
    tool_calls: list[ToolCallOut] | None = Field(None, exclude_if=lambda v: v is None)
    # The thinking (thinking on): vLLM's name and its newer one.
    reasoning_content: str | None = Field(None, exclude_if=lambda v: v is None)
    reasoning: str | None = Field(None, exclude_if=lambda v: v is None)


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


# Streamed answers (`chat.completion.chunk`, `text_completion` chunks), as vLLM's protocol
# has them: built with model_construct (no validation per event) and sent without the
# fields a chunk does not set (api/openai/chunks.py), so the key order is the wire's.


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    """A call's first entry has its id, type and name; the next ones only arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """A name every dialect's `model` takes, in OpenAI's shape and Anthropic's at once
    (`type`, `display_name`, `created_at`): both SDKs' `models.list()` read it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "avito"
    root: str | None = None
    type: Literal["model"] = "model"
    display_name: str
    created_at: str  # RFC 3339


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    # Anthropic's paging fields (one page holds every name).
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
