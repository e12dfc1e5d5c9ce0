"""OpenAI wire requests → GenerationRequests: sampling, messages (text, images, tool calls
and results), tools and tool_choice, the thinking switch."""

from __future__ import annotations

import dataclasses
import time

from avito_ai.api.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    OpenAISampling,
)
from avito_ai.api.requests import (
    EMPTY_PARAMETERS,
    check_conversation,
    no_images,
    response_format_output,
    sampling_params,
    validate_prompt,
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
from avito_ai.errors import NotFound, ValidationFailed
from avito_ai.schemas.sampling import SamplingBase, SamplingFields
from avito_ai.services.images import decode_base64_image, is_data_uri
from avito_ai.services.output import OutputSpec, with_tools


def _sampling(body: OpenAISampling, role: Role, settings: Settings) -> SamplingParams:
    shared = body.model_dump(include=set(SamplingBase.model_fields))
    shared["max_tokens"] = body.max_completion_tokens or body.max_tokens
    field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    cap = settings.role(role).max_tokens
    if body.max_completion_tokens and body.max_tokens is not None and body.max_tokens > cap:
        # Both sent: max_completion_tokens counts, but max_tokens must still be valid.
        raise ValidationFailed(f"max_tokens must be between 1 and {cap}", param="max_tokens")
    sampling = sampling_params(SamplingFields(**shared), role, settings, max_tokens_field=field)
    if isinstance(body, ChatCompletionRequest):
        top = body.top_logprobs or 0
        if top and not body.logprobs:
            raise ValidationFailed("top_logprobs needs logprobs: true", param="top_logprobs")
        wanted = bool(body.logprobs)
    else:
        assert isinstance(body, CompletionRequest)
        top, wanted = body.logprobs or 0, body.logprobs is not None
    return dataclasses.replace(sampling, logprobs=wanted, top_logprobs=top, n=body.n)


def _content(content: object, index: int, settings: Settings) -> tuple[list[ContentPart], int]:
    """Parts of one message and the number of text characters in it."""
    if content is None:
        return [], 0
    if isinstance(content, str):
        return [TextPart(content)], len(content)
    parts: list[ContentPart] = []
    chars = 0
    assert isinstance(content, list)
    for j, part in enumerate(content):
        if part.type == "text":
            parts.append(TextPart(part.text))
            chars += len(part.text)
            continue
        url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
        field = f"messages.{index}.content.{j}.image_url"
        if not is_data_uri(url):
            raise ValidationFailed(
                "image_url must be a data: URI (data:image/png;base64,...); "
                "the server does not fetch images from the network",
                param=field,
            )
        image = decode_base64_image(
            url, settings.max_image_size_mb, param=field, max_pixels=settings.avision_max_pixels
        )
        parts.append(ImagePart(image))
    return parts, chars


def chat_output(body: ChatCompletionRequest) -> OutputSpec:
    """What a chat request asks of the answer: `response_format`, its tools and
    tool_choice."""
    tools = tuple(
        ToolSpec(
            t.function.name,
            EMPTY_PARAMETERS if t.function.parameters is None else t.function.parameters,
            t.function.description,
        )
        for t in body.tools or ()
    )
    choice = tool_choice(body.tool_choice, bool(tools))
    output = response_format_output(body.response_format)
    return with_tools(output, tools, choice, body.parallel_tool_calls is not False)


def chat_request(
    body: ChatCompletionRequest,
    role: Role,
    settings: Settings,
    request_id: str,
    *,
    images: bool = True,
) -> GenerationRequest:
    """The conversation and sampling of a chat request (its output: `chat_output`).
    `images`: whether the model takes images (its engine's capabilities)."""
    messages: list[ChatMessage] = []
    total_chars = 0
    for i, message in enumerate(body.messages):
        parts, chars = _content(message.content, i, settings)
        total_chars += chars
        if not images and any(isinstance(p, ImagePart) for p in parts):
            raise no_images(role, "messages")
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ()
        )
        total_chars += sum(len(c.arguments) for c in calls)
        msg_role = "system" if message.role == "developer" else message.role
        messages.append(
            ChatMessage(
                role=msg_role,
                content=tuple(parts),
                tool_calls=calls,
                tool_call_id=message.tool_call_id if message.role == "tool" else None,
            )
        )
    check_conversation(messages, total_chars, role, settings, "messages", images=images)
    thinking = (
        body.enable_thinking
        or bool((body.chat_template_kwargs or {}).get("enable_thinking", False))
        or body.reasoning_effort not in (None, "none")
    )
    return GenerationRequest(
        request_id=request_id,
        sampling=_sampling(body, role, settings),
        messages=messages,
        enable_thinking=thinking,
        deadline=time.monotonic() + settings.request_timeout,
    )


def tool_choice(
    choice: str | NamedToolChoice | None, has_tools: bool
) -> tuple[ToolChoice, str | None]:
    """OpenAI's tool_choice as ours: (auto | none | required, the named function)."""
    if isinstance(choice, NamedToolChoice):
        return "required", choice.function.name
    if choice is None:
        return ("auto" if has_tools else "none"), None
    assert choice in ("auto", "none", "required")
    return choice, None  # type: ignore[return-value]


def completion_request(
    body: CompletionRequest,
    role: Role,
    settings: Settings,
    request_id: str,
    *,
    completions: bool = True,
) -> GenerationRequest:
    """`completions`: whether the model continues a raw prompt (its engine's capabilities)."""
    if not completions:
        # 404, as OpenAI answers a chat-only model on this endpoint.
        raise NotFound(
            f"The model '{body.model}' is not served on /v1/completions (text models only); "
            "use /v1/chat/completions",
            param="model",
        )
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    validate_prompt(prompt, settings)
    return GenerationRequest(
        request_id=request_id,
        sampling=_sampling(body, role, settings),
        prompt=prompt,
        deadline=time.monotonic() + settings.request_timeout,
    )
