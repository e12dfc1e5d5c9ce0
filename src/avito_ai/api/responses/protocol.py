"""OpenAI Responses API wire formats (/v1/responses): the request, its input items and
tools (the response object: objects.py).

Stateless: nothing is stored, so what would refer to a stored object (`store: true`,
`previous_response_id`, `conversation`, `prompt`, item references) is refused, as are
hosted tools (web search, file search, ...): 400 naming the field, never ignored.

Input items and tools are told apart by their `type`; an item or tool of a type this
server does not take parses (as `UnsupportedItem` / `UnsupportedTool`) only to be refused
with its own words, naming `input.N.type` or `tools.N.type`. The union tags are
capitalised so that the field names in errors leave them out (services/validation.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

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

from avito_ai.schemas.chat import MAX_MESSAGES, MAX_PARTS, MAX_TOOLS, FunctionName
from avito_ai.schemas.sampling import SamplingBase, Text, WholeNumber

# What an "off" value of an unsupported field is: absent, null, false, empty.
_OFF_SCHEMA: dict[str, Any] = {
    "description": "not supported by this stateless server: leave it out (null, false, "
    "[] or {} pass)",
    "deprecated": True,
    "anyOf": [
        {"type": "null"},
        {"const": False},
        {"type": "array", "maxItems": 0},
        {"type": "object", "maxProperties": 0},
        {"const": ""},
    ],
}
# Fields refused unless off, and why (the 400's message).
REFUSED = {
    "previous_response_id": "responses are not stored by this server (stateless): send the "
    "whole conversation in `input` instead",
    "conversation": "conversations are not stored by this server (stateless): send the whole "
    "conversation in `input` instead",
    "prompt": "stored prompt templates are not supported: send `instructions` and `input`",
    "background": "background responses are not supported (nothing is stored to poll)",
    "max_tokens": "not a Responses API field: use max_output_tokens",
}


def _is_off(value: Any) -> bool:
    return value is None or value is False or (type(value) in (list, dict, str) and not value)


def _kind(tags: dict[str, str], *, untyped: str | None = None) -> Callable[[Any], str]:
    """A discriminator: the union tag of a value's `type`; "Unsupported" for any other type;
    `untyped` for a mapping without one (a message given by its role alone)."""

    def kind(value: Any) -> str:
        if isinstance(value, dict):
            if "type" not in value and untyped is not None:
                return untyped
            kind_of = value.get("type")
        else:
            kind_of = getattr(value, "type", None)
        if not isinstance(kind_of, str):
            return untyped or next(iter(tags.values()))
        return tags.get(kind_of, "Unsupported")

    return kind


def _other_types(known: list[str], title: str, field: str) -> dict[str, Any]:
    """The schema of the `Unsupported` branch: any other type, refused."""
    return {
        "title": title,
        "description": f"any other type: refused (400 naming `{field}.N.type`)",
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"type": "string", "not": {"enum": known}}},
    }


# ------------------------------------------------------------------ content parts


class InputText(BaseModel):
    type: Literal["input_text"]
    text: Text


class OutputTextIn(BaseModel):
    """An earlier answer's text (an assistant message sent back as history)."""

    type: Literal["output_text"]
    text: Text


class RefusalIn(BaseModel):
    type: Literal["refusal"]
    refusal: Text


class InputImage(BaseModel):
    type: Literal["input_image"]
    # A data: URI; the server fetches nothing and stores no files (file_id: 400).
    image_url: StrictStr | None = None
    file_id: StrictStr | None = None
    detail: Literal["low", "high", "auto", "original"] | None = None


PART_TAGS = {
    "input_text": "InputText",
    "output_text": "OutputText",
    "refusal": "Refusal",
    "input_image": "InputImage",
}
ContentPart = Annotated[
    Annotated[InputText, Tag("InputText")]
    | Annotated[OutputTextIn, Tag("OutputText")]
    | Annotated[RefusalIn, Tag("Refusal")]
    | Annotated[InputImage, Tag("InputImage")],
    Discriminator(
        _kind(PART_TAGS),
        custom_error_type="unsupported_part",
        custom_error_message="a content part is input_text, output_text, refusal or "
        "input_image (files and audio are not supported)",
    ),
]
Content = Text | Annotated[list[ContentPart], Field(max_length=MAX_PARTS)]


# ------------------------------------------------------------------ input items


class MessageItem(BaseModel):
    """A message: the user's, the instructions' (system, developer), or an earlier answer
    (assistant; an output message sent back as it came, id and status ignored)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Content


class FunctionCallItem(BaseModel):
    """A call the model made earlier (an output item sent back)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function_call"]
    call_id: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    name: FunctionName
    arguments: StrictStr  # JSON text, as the model wrote it


class FunctionCallOutputItem(BaseModel):
    """The result of a call, for the model to read."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function_call_output"]
    call_id: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    output: Text | Annotated[list[InputText], Field(max_length=MAX_PARTS)]


class ReasoningItem(BaseModel):
    """Earlier reasoning sent back: accepted and left out (the model does not reread its
    thinking, as Qwen3's template drops it)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["reasoning"]


ITEM_TAGS = {
    "message": "Message",
    "function_call": "FunctionCall",
    "function_call_output": "FunctionCallOutput",
    "reasoning": "Reasoning",
}


class UnsupportedItem(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra=lambda s, _: s.update(
            _other_types(list(ITEM_TAGS), "UnsupportedItem", "input")
        ),
    )

    type: StrictStr

    @field_validator("type")
    @classmethod
    def _refuse(cls, value: str) -> str:
        stored = " (nothing is stored: send the items themselves)" if "reference" in value else ""
        raise ValueError(
            f"input items of type {value!r} are not supported{stored}; this server takes "
            + ", ".join(ITEM_TAGS)
        )


InputItem = Annotated[
    Annotated[MessageItem, Tag("Message")]
    | Annotated[FunctionCallItem, Tag("FunctionCall")]
    | Annotated[FunctionCallOutputItem, Tag("FunctionCallOutput")]
    | Annotated[ReasoningItem, Tag("Reasoning")]
    | Annotated[UnsupportedItem, Tag("Unsupported")],
    Discriminator(_kind(ITEM_TAGS, untyped="Message")),
]


# ------------------------------------------------------------------ tools and formats


class ResponseFunctionTool(BaseModel):
    type: Literal["function"]
    name: FunctionName
    description: StrictStr | None = None
    # JSON Schema of the arguments (checked: 400 naming the tool when it is not one).
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class UnsupportedTool(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra=lambda s, _: s.update(
            _other_types(["function"], "UnsupportedTool", "tools")
        ),
    )

    type: StrictStr

    @field_validator("type")
    @classmethod
    def _refuse(cls, value: str) -> str:
        raise ValueError(
            f"{value!r} tools are not supported: this server runs no hosted tools (web "
            "search, file search, code interpreter, computer use, MCP, image generation...); "
            "only tools of type 'function'"
        )


ToolIn = Annotated[
    Annotated[ResponseFunctionTool, Tag("Function")]
    | Annotated[UnsupportedTool, Tag("Unsupported")],
    Discriminator(_kind({"function": "Function"})),
]


class ToolChoiceFunction(BaseModel):
    type: Literal["function"]
    name: FunctionName


ToolChoiceIn = Literal["auto", "none", "required"] | ToolChoiceFunction


class FormatText(BaseModel):
    type: Literal["text"]


class FormatJSONObject(BaseModel):
    type: Literal["json_object"]


class FormatJSONSchema(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    type: Literal["json_schema"]
    name: Annotated[StrictStr, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(
        None, alias="schema", description="a JSON Schema (Draft 2020-12) the answer matches"
    )
    strict: StrictBool | None = None


TextFormat = Annotated[
    FormatText | FormatJSONObject | FormatJSONSchema, Field(discriminator="type")
]


class TextConfig(BaseModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # accepted, no effect


class ReasoningConfig(BaseModel):
    # Thinking on unless "none" (Qwen3 thinks or not; it has no levels in between).
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None  # no summaries: the text
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponseStreamOptions(BaseModel):
    include_obfuscation: StrictBool | None = None  # accepted; no obfuscation is added


# ------------------------------------------------------------------ the request


class ResponsesRequest(SamplingBase):
    """`POST /v1/responses`. Sampling beyond temperature and top_p (top_k, penalties, stop,
    seed) is this server's extension, as in vLLM."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"model": "avibe", "input": "Привет! Как дела?", "max_output_tokens": 64},
                {
                    "model": "avibe",
                    "instructions": "Answer briefly.",
                    "input": [{"role": "user", "content": "What is the capital of France?"}],
                },
            ]
        },
    )

    model: StrictStr
    input: Text | Annotated[list[InputItem], Field(min_length=1, max_length=MAX_MESSAGES)]
    instructions: Text | None = None
    max_output_tokens: Annotated[StrictInt, Field(ge=1), WholeNumber] | None = None
    stream: StrictBool = False
    stream_options: ResponseStreamOptions | None = None
    tools: Annotated[list[ToolIn], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoiceIn | None = None
    parallel_tool_calls: StrictBool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    # Stateless: false or absent (OpenAI's default is true; nothing is stored here).
    store: StrictBool | None = Field(None, json_schema_extra={"not": {"const": True}})
    # `message.output_text.logprobs` is honoured; the others name hosted tools' outputs and
    # stored inputs, which never occur here (ignored). `reasoning.encrypted_content`:
    # the reasoning is sent as text instead.
    include: Annotated[list[StrictStr], Field(max_length=16)] | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20), WholeNumber] | None = None
    truncation: Literal["disabled"] | None = None
    metadata: Annotated[dict[StrictStr, StrictStr], Field(max_length=16)] | None = None
    user: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None
    service_tier: StrictStr | None = None  # accepted; one tier ("default")
    max_tool_calls: Annotated[StrictInt, Field(ge=1), WholeNumber] | None = None
    previous_response_id: Any = Field(None, json_schema_extra=_OFF_SCHEMA)
    conversation: Any = Field(None, json_schema_extra=_OFF_SCHEMA)
    prompt: Any = Field(None, json_schema_extra=_OFF_SCHEMA)
    background: Any = Field(None, json_schema_extra=_OFF_SCHEMA)
    max_tokens: Any = Field(None, json_schema_extra=_OFF_SCHEMA)

    @field_validator(*REFUSED)
    @classmethod
    def _refuse_unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if not _is_off(value):
            raise ValueError(REFUSED[str(info.field_name)])
        return value

    @field_validator("store")
    @classmethod
    def _not_stored(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError(
                "responses are not stored by this server (stateless): send store false or "
                "leave it out"
            )
        return value

    @field_validator("truncation", mode="before")
    @classmethod
    def _no_truncation(cls, value: Any) -> Any:
        if value == "auto":
            raise ValueError(
                "truncation 'auto' is not supported (no input is dropped to fit): send "
                "'disabled' and an input that fits"
            )
        return value
