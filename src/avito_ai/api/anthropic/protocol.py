"""Anthropic's Messages API wire formats (/v1/messages, /v1/messages/count_tokens), as the
official `anthropic` SDK sends and reads them.

Unknown fields are ignored (`cache_control`, `service_tier`, `container`...); what would
change the answer and is not served (server tools, image URLs) is refused while the
request is built (requests.py), naming the field."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    ValidationInfo,
    field_validator,
)

from avito_ai.schemas.sampling import (
    EXAMPLE_IMAGE,
    SamplingBase,
    StopText,
    Text,
    WholeNumber,
)

# Bounds checked while the body is parsed, before any work: the OpenAI dialect's (a 12 MB
# body of 600,000 empty messages once held the event loop for 19 s).
MAX_MESSAGES = 256
MAX_BLOCKS = 64  # per message (a tool loop's results: MAX_PARALLEL calls at most)
MAX_TOOLS = 128
MAX_STOP_SEQUENCES = 4  # as `stop` in the other dialects
# Tool names as the OpenAI dialect (and the upstreams it forwards to) take them.
ToolName = Annotated[StrictStr, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
ToolUseId = Annotated[StrictStr, Field(min_length=1, max_length=256)]


def by_type(*models: type[BaseModel], note: str = "") -> Discriminator:
    """A union told apart by `type`, tagged with the class names: a problem inside a block
    is named `messages.0.content.1.source.data`, without the branch (error field names
    leave out capitalised tags: services/validation.py)."""
    tags = {get_args(m.model_fields["type"].annotation)[0]: m.__name__ for m in models}

    def tag(value: Any) -> str | None:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        return tags.get(kind) if isinstance(kind, str) else None

    return Discriminator(
        tag,
        custom_error_type="unknown_kind",
        custom_error_message="`type` must be one of " + ", ".join(map(repr, tags)) + note,
    )


class _Block(BaseModel):
    model_config = ConfigDict(extra="ignore")  # cache_control, citations...


class TextBlockIn(_Block):
    type: Literal["text"]
    text: Text


class Base64Source(_Block):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: StrictStr


class URLSource(_Block):
    type: Literal["url"]
    url: StrictStr


class FileSource(_Block):
    type: Literal["file"]
    file_id: StrictStr


ImageSource = Annotated[
    Annotated[Base64Source, Tag("Base64Source")]
    | Annotated[URLSource, Tag("URLSource")]
    | Annotated[FileSource, Tag("FileSource")],
    by_type(Base64Source, URLSource, FileSource),
]


class ImageBlockIn(_Block):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlockIn(_Block):
    """A call the assistant made earlier in the conversation."""

    type: Literal["tool_use"]
    id: ToolUseId
    name: ToolName
    input: dict[str, Any]


ToolResultPart = Annotated[
    Annotated[TextBlockIn, Tag("TextBlockIn")] | Annotated[ImageBlockIn, Tag("ImageBlockIn")],
    by_type(TextBlockIn, ImageBlockIn),
]


class ToolResultBlockIn(_Block):
    """The result of a call, in a user message."""

    type: Literal["tool_result"]
    tool_use_id: ToolUseId
    content: Text | Annotated[list[ToolResultPart], Field(max_length=MAX_BLOCKS)] | None = None
    is_error: StrictBool = False


class ThinkingBlockIn(_Block):
    """Thinking an earlier answer showed: accepted in the history, not shown to the model."""

    type: Literal["thinking"]
    thinking: StrictStr
    signature: StrictStr | None = None


class RedactedThinkingBlockIn(_Block):
    type: Literal["redacted_thinking"]
    data: StrictStr


BLOCKS = (
    TextBlockIn,
    ImageBlockIn,
    ToolUseBlockIn,
    ToolResultBlockIn,
    ThinkingBlockIn,
    RedactedThinkingBlockIn,
)
ContentBlockIn = Annotated[
    Annotated[TextBlockIn, Tag("TextBlockIn")]
    | Annotated[ImageBlockIn, Tag("ImageBlockIn")]
    | Annotated[ToolUseBlockIn, Tag("ToolUseBlockIn")]
    | Annotated[ToolResultBlockIn, Tag("ToolResultBlockIn")]
    | Annotated[ThinkingBlockIn, Tag("ThinkingBlockIn")]
    | Annotated[RedactedThinkingBlockIn, Tag("RedactedThinkingBlockIn")],
    by_type(*BLOCKS, note=" (document, search_result... are not served)"),
]


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # "system": the SDK's SystemMessageParam (only before the conversation, see requests.py)
    role: Literal["user", "assistant", "system"]
    content: Text | Annotated[list[ContentBlockIn], Field(min_length=1, max_length=MAX_BLOCKS)]


class ToolIn(BaseModel):
    """A client tool. Anthropic's server tools (web_search_20250305, bash_20250124...) have
    a `type` and are refused, naming it."""

    model_config = ConfigDict(extra="ignore")  # cache_control, strict, input_examples...

    type: StrictStr | None = None
    name: ToolName
    description: StrictStr | None = None
    # JSON Schema of the input (checked: a 400 naming the tool when it is not one).
    input_schema: dict[str, Any] | None = Field(None, validate_default=True)

    @field_validator("type")
    @classmethod
    def _client_tools_only(cls, value: str | None) -> str | None:
        if value not in (None, "custom"):
            raise ValueError(
                f"{value!r} is an Anthropic server tool, which this server does not run; "
                'only client tools ("custom": name, description, input_schema) are served'
            )
        return value

    @field_validator("input_schema")
    @classmethod
    def _schema_required(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and "type" in info.data:  # (a refused `type` says enough)
            raise ValueError("Field required")
        return value


class _Choice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    disable_parallel_tool_use: StrictBool = False


class ToolChoiceAuto(_Choice):
    type: Literal["auto"]


class ToolChoiceAny(_Choice):
    type: Literal["any"]


class ToolChoiceTool(_Choice):
    type: Literal["tool"]
    name: ToolName


class ToolChoiceNone(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["none"]


ToolChoiceIn = Annotated[
    Annotated[ToolChoiceAuto, Tag("ToolChoiceAuto")]
    | Annotated[ToolChoiceAny, Tag("ToolChoiceAny")]
    | Annotated[ToolChoiceTool, Tag("ToolChoiceTool")]
    | Annotated[ToolChoiceNone, Tag("ToolChoiceNone")],
    by_type(ToolChoiceAuto, ToolChoiceAny, ToolChoiceTool, ToolChoiceNone),
]


class ThinkingEnabled(BaseModel):
    model_config = ConfigDict(extra="ignore")  # display

    type: Literal["enabled"]
    # Accepted, not enforced: the engines have no thinking budget (max_tokens bounds it).
    budget_tokens: Annotated[StrictInt, Field(ge=1), WholeNumber]


class ThinkingAdaptive(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["adaptive"]


class ThinkingDisabled(BaseModel):
    type: Literal["disabled"]


ThinkingIn = Annotated[
    Annotated[ThinkingEnabled, Tag("ThinkingEnabled")]
    | Annotated[ThinkingAdaptive, Tag("ThinkingAdaptive")]
    | Annotated[ThinkingDisabled, Tag("ThinkingDisabled")],
    by_type(ThinkingEnabled, ThinkingAdaptive, ThinkingDisabled),
]


class JSONOutputFormat(BaseModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")  # effort: accepted, no meaning here

    format: JSONOutputFormat | None = None


class MessagesInput(SamplingBase):
    """What /v1/messages and /v1/messages/count_tokens share. The sampling fields of the
    other dialects (seed, repetition_penalty, ...) are accepted as extensions."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr
    messages: Annotated[list[MessageIn], Field(min_length=1, max_length=MAX_MESSAGES)]
    system: Text | Annotated[list[TextBlockIn], Field(max_length=MAX_BLOCKS)] | None = None
    tools: Annotated[list[ToolIn], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoiceIn | None = None
    thinking: ThinkingIn | None = None
    output_config: OutputConfig | None = None
    stop_sequences: Annotated[list[StopText], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    metadata: dict[str, Any] | None = None  # accepted, ignored


class MessagesRequest(MessagesInput):
    max_tokens: Annotated[StrictInt, Field(ge=1), WholeNumber]
    stream: StrictBool = False

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": "avibe",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": "Привет! Как дела?"}],
                },
                {
                    "model": "avision",
                    "max_tokens": 64,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/png",
                                        "data": EXAMPLE_IMAGE.split(",", 1)[1],
                                    },
                                },
                                {"type": "text", "text": "Что на фото?"},
                            ],
                        }
                    ],
                },
            ]
        },
    )


class CountTokensRequest(MessagesInput):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"model": "avibe", "messages": [{"role": "user", "content": "Привет!"}]}]
        },
    )


# ---------------------------------------------------------------------------- answers


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingBlock(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""  # no signature: the history's thinking is not checked, nor shown


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = Annotated[ThinkingBlock | TextBlock | ToolUseBlock, Field(discriminator="type")]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    # No prompt caching here: always 0 (said, as Anthropic says it, for clients that add them).
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(BaseModel):
    input_tokens: int
