"""Responses API requests → GenerationRequests: `instructions` and `input` items become
chat messages (function calls join the assistant message before them, their outputs
become tool messages), tools and tool_choice ours, `text.format` a constraint, the
reasoning effort the thinking switch."""

from __future__ import annotations

import time

from avito_ai.api.requests import EMPTY_PARAMETERS, check_conversation, sampling_params
from avito_ai.api.responses.protocol import (
    Content,
    FormatJSONObject,
    FormatJSONSchema,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    MessageItem,
    RefusalIn,
    ResponseFunctionTool,
    ResponsesRequest,
    ToolChoiceFunction,
)
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
from avito_ai.services.images import decode_base64_image, is_data_uri
from avito_ai.services.output import FieldNames, OutputSpec, with_tools

LOGPROBS = "message.output_text.logprobs"
# Where a Responses client writes what it asks of the answer (its tools are flat).
RESPONSES_FIELDS = FieldNames(
    format="text.format", schema="text.format.schema", tool_parameters="tools.{}.parameters"
)


def _sampling(body: ResponsesRequest, role: Role, settings: Settings) -> SamplingParams:
    shared = body.model_dump(include=set(SamplingBase.model_fields) - {"max_tokens"})
    top = body.top_logprobs or 0
    logprobs = LOGPROBS in (body.include or ()) or top > 0  # alternatives imply logprobs
    fields = SamplingFields(
        **shared, max_tokens=body.max_output_tokens, logprobs=logprobs, top_logprobs=top
    )
    return sampling_params(fields, role, settings, max_tokens_field="max_output_tokens")


def _parts(content: Content, where: str, settings: Settings) -> tuple[list[ContentPart], int]:
    """One message's parts and the number of text characters in them."""
    if isinstance(content, str):
        return [TextPart(content)], len(content)
    parts: list[ContentPart] = []
    chars = 0
    for j, part in enumerate(content):
        if not isinstance(part, InputImage):
            text = part.refusal if isinstance(part, RefusalIn) else part.text
            parts.append(TextPart(text))
            chars += len(text)
            continue
        field = f"{where}.content.{j}"
        if part.file_id is not None:
            raise ValidationFailed(
                "Files are not stored by this server: send the image as image_url, a data: "
                "URI (data:image/png;base64,...)",
                param=f"{field}.file_id",
            )
        if part.image_url is None or not is_data_uri(part.image_url):
            raise ValidationFailed(
                "image_url must be a data: URI (data:image/png;base64,...); "
                "the server does not fetch images from the network",
                param=f"{field}.image_url",
            )
        image = decode_base64_image(
            part.image_url,
            settings.max_image_size_mb,
            param=f"{field}.image_url",
            max_pixels=settings.avision_max_pixels,
        )
        parts.append(ImagePart(image))
    return parts, chars


def _messages(body: ResponsesRequest, settings: Settings) -> tuple[list[ChatMessage], int]:
    """The chat the input makes (instructions first), and its text length."""
    messages: list[ChatMessage] = []
    chars = 0
    if body.instructions is not None and body.instructions.strip():
        messages.append(ChatMessage.text("system", body.instructions))
        chars += len(body.instructions)
    if isinstance(body.input, str):
        messages.append(ChatMessage.text("user", body.input))
        return messages, chars + len(body.input)
    called: set[str] = set()
    for i, item in enumerate(body.input):
        if isinstance(item, MessageItem):
            parts, count = _parts(item.content, f"input.{i}", settings)
            role = "system" if item.role == "developer" else item.role
            messages.append(ChatMessage(role=role, content=tuple(parts)))
            chars += count
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(item.call_id, item.name, item.arguments)
            called.add(item.call_id)
            chars += len(item.arguments)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":  # calls of the same turn
                messages[-1] = ChatMessage(
                    "assistant", last.content, (*last.tool_calls, call), last.tool_call_id
                )
            else:
                messages.append(ChatMessage("assistant", (), (call,)))
        elif isinstance(item, FunctionCallOutputItem):
            if item.call_id not in called:
                raise ValidationFailed(
                    f"No function_call item before this output has call_id {item.call_id!r}",
                    param=f"input.{i}.call_id",
                )
            output = (
                item.output
                if isinstance(item.output, str)
                else "".join(p.text for p in item.output)
            )
            messages.append(ChatMessage("tool", (TextPart(output),), tool_call_id=item.call_id))
            chars += len(output)
        # reasoning items: left out
    return messages, chars


def tool_choice(body: ResponsesRequest, has_tools: bool) -> tuple[ToolChoice, str | None]:
    """The Responses tool_choice as ours: (auto | none | required, the named function)."""
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceFunction):
        return "required", choice.name
    if choice is None:
        return ("auto" if has_tools else "none"), None
    return choice, None


def responses_output(body: ResponsesRequest) -> OutputSpec:
    """What a Responses request asks of the answer: `text.format`, its function tools and
    tool_choice."""
    tools = tuple(
        ToolSpec(t.name, EMPTY_PARAMETERS if t.parameters is None else t.parameters, t.description)
        for t in body.tools or ()
        if isinstance(t, ResponseFunctionTool)
    )
    form = body.text.format if body.text else None
    output = OutputSpec()
    if isinstance(form, FormatJSONObject):
        output = OutputSpec(format="json_object")
    elif isinstance(form, FormatJSONSchema):
        output = OutputSpec(
            format="json_schema",
            schema=form.schema_,
            name=form.name,
            strict=bool(form.strict),
            description=form.description,
        )
    choice = tool_choice(body, bool(tools))
    return with_tools(output, tools, choice, body.parallel_tool_calls is not False)


def responses_request(
    body: ResponsesRequest,
    role: Role,
    settings: Settings,
    request_id: str,
    *,
    images: bool = True,
) -> GenerationRequest:
    """The conversation and sampling a Responses request asks for (decodes its images: run
    it off the event loop; its output: `responses_output`). Raises ValidationFailed naming
    the field."""
    messages, chars = _messages(body, settings)
    check_conversation(messages, chars, role, settings, "input", images=images)
    effort = body.reasoning.effort if body.reasoning else None
    return GenerationRequest(
        request_id=request_id,
        sampling=_sampling(body, role, settings),
        messages=messages,
        enable_thinking=effort not in (None, "none"),
        deadline=time.monotonic() + settings.request_timeout,
    )
