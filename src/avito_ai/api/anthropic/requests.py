"""Anthropic wire requests → GenerationRequests: the system prompt, messages (text, images,
tool_use and tool_result blocks), tools and tool_choice, thinking, sampling.

Every refusal is a ValidationFailed naming the field as the client wrote it
(`messages.2.content.0.tool_use_id`)."""

from __future__ import annotations

import json
import time

from avito_ai.api.anthropic.protocol import (
    MAX_STOP_SEQUENCES,
    Base64Source,
    CountTokensRequest,
    ImageBlockIn,
    MessagesInput,
    TextBlockIn,
    ThinkingAdaptive,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceIn,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlockIn,
    ToolUseBlockIn,
    URLSource,
)
from avito_ai.api.requests import check_conversation, no_images, sampling_params
from avito_ai.config import Settings
from avito_ai.engines.base import (
    ChatMessage,
    ContentPart,
    GenerationRequest,
    ImagePart,
    Role,
    SamplingParams,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolSpec,
)
from avito_ai.errors import ValidationFailed
from avito_ai.schemas.sampling import SamplingBase, SamplingFields
from avito_ai.services.images import decode_base64_image
from avito_ai.services.output import FieldNames, OutputSpec, with_tools

ERROR_PREFIX = "Error: "  # a tool_result with is_error: true, as the model reads it


def _sampling(body: MessagesInput, role: Role, settings: Settings) -> SamplingParams:
    shared = body.model_dump(include=set(SamplingBase.model_fields))
    # stop_sequences, and the other dialects' `stop` as an extension, in one list.
    extra = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
    stops = list(dict.fromkeys([*(body.stop_sequences or ()), *extra]))
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ValidationFailed(
            f"At most {MAX_STOP_SEQUENCES} stop sequences per request", param="stop_sequences"
        )
    shared["stop"] = stops or None
    if isinstance(body, CountTokensRequest):
        shared["max_tokens"] = None  # not part of count_tokens: the role's cap
    return sampling_params(SamplingFields(**shared), role, settings)


def _image(
    block: ImageBlockIn, field: str, role: Role, settings: Settings, images: bool
) -> ImagePart:
    source = block.source
    if isinstance(source, URLSource):
        raise ValidationFailed(
            'image sources must be base64 ("source": {"type": "base64", "media_type", '
            '"data"}); the server does not fetch images from the network',
            param=f"{field}.source",
        )
    if not isinstance(source, Base64Source):
        raise ValidationFailed(
            'the Files API is not served here: send the image as base64 ("source": '
            '{"type": "base64", ...})',
            param=f"{field}.source",
        )
    if not images:  # refused before it is decoded
        raise no_images(role, field)
    data = source.data
    return ImagePart(
        decode_base64_image(
            data,
            settings.max_image_size_mb,
            param=f"{field}.source.data",
            max_pixels=settings.avision_max_pixels,
        )
    )


def _tool_result_text(block: ToolResultBlockIn, field: str) -> str:
    if block.content is None:
        text = ""
    elif isinstance(block.content, str):
        text = block.content
    else:
        texts: list[str] = []
        for k, part in enumerate(block.content):
            if not isinstance(part, TextBlockIn):
                raise ValidationFailed(
                    "a tool_result carries text only here (no images)",
                    param=f"{field}.content.{k}",
                )
            texts.append(part.text)
        text = "\n".join(texts)
    return ERROR_PREFIX + text if block.is_error and not text.startswith(ERROR_PREFIX) else text


class _Conversation:
    """The wire messages as chat messages, checked block by block."""

    def __init__(self, role: Role, settings: Settings, images: bool) -> None:
        self.role: Role = role
        self.settings = settings
        self.images = images
        self.messages: list[ChatMessage] = []
        self.system: list[str] = []
        self.chars = 0
        self.called: set[str] = set()  # tool_use ids of earlier assistant messages

    def add(self, i: int, role: str, content: object) -> None:
        blocks = [TextBlockIn(type="text", text=content)] if isinstance(content, str) else content
        assert isinstance(blocks, list)
        field = f"messages.{i}"
        if role == "system":
            if self.messages:
                raise ValidationFailed(
                    "system messages only come before the conversation (or use `system`)",
                    param=f"{field}.role",
                )
            for j, block in enumerate(blocks):
                if not isinstance(block, TextBlockIn):
                    raise ValidationFailed(
                        "a system message carries text blocks only",
                        param=f"{field}.content.{j}",
                    )
                self.system.append(block.text)
                self.chars += len(block.text)
        elif role == "user":
            self._user(field, blocks)
        else:
            self._assistant(field, blocks)

    def _user(self, field: str, blocks: list[object]) -> None:
        parts: list[ContentPart] = []
        for j, block in enumerate(blocks):
            where = f"{field}.content.{j}"
            if isinstance(block, ToolResultBlockIn):
                if parts:
                    raise ValidationFailed(
                        "tool_result blocks come first in a user message, before its text "
                        "and images",
                        param=where,
                    )
                if block.tool_use_id not in self.called:
                    raise ValidationFailed(
                        f"tool_use_id {block.tool_use_id!r} answers no tool_use block of an "
                        "earlier assistant message",
                        param=f"{where}.tool_use_id",
                    )
                text = _tool_result_text(block, where)
                self.chars += len(text)
                self.messages.append(
                    ChatMessage(
                        role="tool", content=(TextPart(text),), tool_call_id=block.tool_use_id
                    )
                )
            elif isinstance(block, TextBlockIn):
                parts.append(TextPart(block.text))
                self.chars += len(block.text)
            elif isinstance(block, ImageBlockIn):
                parts.append(_image(block, where, self.role, self.settings, self.images))
            else:
                kind = getattr(block, "type", "this")
                raise ValidationFailed(
                    f"{kind} blocks belong in assistant messages", param=f"{where}.type"
                )
        if parts:
            self.messages.append(ChatMessage(role="user", content=tuple(parts)))

    def _assistant(self, field: str, blocks: list[object]) -> None:
        texts: list[str] = []
        calls: list[ToolCall] = []
        for j, block in enumerate(blocks):
            where = f"{field}.content.{j}"
            if isinstance(block, TextBlockIn):
                texts.append(block.text)
                self.chars += len(block.text)
            elif isinstance(block, ToolUseBlockIn):
                arguments = json.dumps(block.input, ensure_ascii=False)
                self.chars += len(arguments)
                calls.append(ToolCall(block.id, block.name, arguments))
                self.called.add(block.id)
            elif isinstance(block, ImageBlockIn | ToolResultBlockIn):
                raise ValidationFailed(
                    f"{block.type} blocks belong in user messages", param=f"{where}.type"
                )
            # thinking and redacted_thinking: earlier reasoning, not shown to the model
        if texts or calls:
            content = (TextPart("".join(texts)),) if texts else ()
            self.messages.append(
                ChatMessage(role="assistant", content=content, tool_calls=tuple(calls))
            )

    def chat(self) -> list[ChatMessage]:
        system = "\n\n".join(t for t in self.system if t.strip())
        return ([ChatMessage.text("system", system)] if system else []) + self.messages


def _system(body: MessagesInput) -> list[str]:
    if body.system is None:
        return []
    if isinstance(body.system, str):
        return [body.system]
    return [block.text for block in body.system]


# Where an Anthropic client writes what it asks of the answer.
MESSAGES_FIELDS = FieldNames(
    format="output_config.format",
    schema="output_config.format.schema",
    tool_parameters="tools.{}.input_schema",
)


def messages_output(body: MessagesInput) -> OutputSpec:
    """What a Messages request asks of the answer: `output_config.format` (a JSON Schema),
    its tools and tool_choice."""
    tools = tuple(ToolSpec(t.name, t.input_schema or {}, t.description) for t in body.tools or ())
    choice, forced, parallel = tool_choice(body.tool_choice, bool(tools))
    form = body.output_config.format if body.output_config else None
    output = OutputSpec() if form is None else OutputSpec("json_schema", form.schema_, "output")
    return with_tools(output, tools, (choice, forced), parallel)


def messages_request(
    body: MessagesInput,
    role: Role,
    settings: Settings,
    request_id: str,
    *,
    images: bool = True,
) -> GenerationRequest:
    """The conversation and sampling of a Messages request (its output: `messages_output`).
    `images`: whether the model takes images (its engine's capabilities)."""
    conversation = _Conversation(role, settings, images)
    conversation.system = _system(body)
    conversation.chars = sum(len(t) for t in conversation.system)
    for i, message in enumerate(body.messages):
        conversation.add(i, message.role, message.content)
    last = len(body.messages) - 1
    if body.messages[last].role != "user":
        raise ValidationFailed(
            "the last message must be the user's: this server answers with a new assistant "
            "turn and does not continue a prefilled one",
            param=f"messages.{last}.role",
        )
    messages = conversation.chat()
    check_conversation(messages, conversation.chars, role, settings, "messages", images=images)
    return GenerationRequest(
        request_id=request_id,
        sampling=_sampling(body, role, settings),
        messages=messages,
        enable_thinking=isinstance(body.thinking, ThinkingEnabled | ThinkingAdaptive),
        deadline=time.monotonic() + settings.request_timeout,
    )


def tool_choice(
    choice: ToolChoiceIn | None, has_tools: bool
) -> tuple[ToolChoice, str | None, bool]:
    """Anthropic's tool_choice as ours: (auto | none | required, the named tool, whether
    several calls may be made at once)."""
    if choice is None:
        return ("auto" if has_tools else "none"), None, True
    if isinstance(choice, ToolChoiceNone):
        return "none", None, True
    parallel = not choice.disable_parallel_tool_use
    if isinstance(choice, ToolChoiceTool):
        return "required", choice.name, parallel
    if isinstance(choice, ToolChoiceAny):
        return "required", None, parallel
    return "auto", None, parallel
