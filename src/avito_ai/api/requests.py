"""What every dialect's serving shares on the way in: the original specification's prompt
rules, sampling fields → SamplingParams, `response_format` (OpenAI's and the native API's)
→ an OutputSpec, and the single-turn chat the native API and the forms send (an optional
system message, then the user's text or image and question)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from avito_ai.config import Settings
from avito_ai.engines.base import (
    ChatMessage,
    ContentPart,
    GenerationRequest,
    ImagePart,
    Role,
    SamplingParams,
    TextPart,
)
from avito_ai.errors import ValidationFailed
from avito_ai.schemas.sampling import SamplingFields
from avito_ai.schemas.structured import (
    ResponseFormatGrammar,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    ResponseFormatRegex,
)
from avito_ai.services.output import OutputSpec

if TYPE_CHECKING:
    from PIL.Image import Image

# A function declared without parameters takes none.
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def response_format_output(response_format: object) -> OutputSpec:
    """`response_format` (schemas/structured.py: OpenAI's kinds and the native API's regex
    and grammar) as an OutputSpec; None or text: free text."""
    if isinstance(response_format, ResponseFormatJSONObject):
        return OutputSpec(format="json_object")
    if isinstance(response_format, ResponseFormatJSONSchema):
        spec = response_format.json_schema
        return OutputSpec(
            format="json_schema",
            schema=spec.schema_,
            name=spec.name,
            strict=bool(spec.strict),
            description=spec.description,
        )
    if isinstance(response_format, ResponseFormatRegex):
        return OutputSpec(format="regex", pattern=response_format.regex)
    if isinstance(response_format, ResponseFormatGrammar):
        return OutputSpec(format="grammar", pattern=response_format.grammar)
    return OutputSpec()


def validate_prompt(prompt: object, settings: Settings, *, field: str = "prompt") -> str:
    """The original specification's prompt rules: present, a string, not blank, at most
    MAX_PROMPT_LENGTH characters."""
    if prompt is None:
        raise ValidationFailed("Prompt is required", param=field)
    if not isinstance(prompt, str):
        raise ValidationFailed("Prompt must be a string", param=field)
    if not prompt.strip():
        raise ValidationFailed("Prompt must not be empty", param=field)
    if len(prompt) > settings.max_prompt_length:
        raise ValidationFailed(
            f"Prompt too long. Maximum length: {settings.max_prompt_length} characters",
            param=field,
        )
    return prompt


def no_images(role: Role, field: str) -> ValidationFailed:
    return ValidationFailed(
        f"Model {role} does not accept images; use model 'avision'", param=field
    )


def check_conversation(
    messages: list[ChatMessage],
    chars: int,
    role: Role,
    settings: Settings,
    field: str,
    *,
    images: bool = True,
) -> None:
    """What every chat dialect checks of a conversation (`field`: where its messages are):
    MAX_PROMPT_LENGTH characters in all, a user message, images only for a model that
    takes them (`images`: its engine's capabilities) and at most AVISION_MAX_IMAGES."""
    if chars > settings.max_prompt_length:
        raise ValidationFailed(
            f"Prompt too long. Maximum length: {settings.max_prompt_length} characters",
            param=field,
        )
    if not any(m.role == "user" and m.content for m in messages):
        raise ValidationFailed(f"{field} must contain a user message", param=field)
    count = sum(isinstance(p, ImagePart) for m in messages for p in m.content)
    if count and not images:
        raise no_images(role, field)
    if count > settings.avision_max_images:
        raise ValidationFailed(
            f"Too many images: {count}; at most {settings.avision_max_images} per request "
            "(AVISION_MAX_IMAGES)",
            param=field,
        )


def question_or_default(question: str | None, default: str) -> str:
    """The question asked about an image: none, or only whitespace, means `default`."""
    return question if question is not None and question.strip() else default


GREEDY_BELOW = 1e-5


def sampling_params(
    fields: SamplingFields, role: Role, settings: Settings, *, max_tokens_field: str = "max_tokens"
) -> SamplingParams:
    """`max_tokens_field`: the name the client used for max_tokens (named in the error)."""
    cap = settings.role(role).max_tokens
    max_tokens = cap if fields.max_tokens is None else fields.max_tokens
    if not 1 <= max_tokens <= cap:
        raise ValidationFailed(
            f"{max_tokens_field} must be between 1 and {cap}", param=max_tokens_field
        )
    stop = (fields.stop,) if isinstance(fields.stop, str) else tuple(fields.stop or ())
    temperature = settings.temperature if fields.temperature is None else fields.temperature
    return SamplingParams(
        max_tokens=max_tokens,
        # As vLLM does: below 1e-5 sampling is greedy in all but name, and dividing logits
        # by such a temperature overflows float32 (transformers' sampling got NaNs).
        temperature=0.0 if temperature < GREEDY_BELOW else temperature,
        top_p=1.0 if fields.top_p is None else fields.top_p,
        top_k=fields.top_k or 0,
        repetition_penalty=fields.repetition_penalty or 1.0,
        presence_penalty=fields.presence_penalty or 0.0,
        frequency_penalty=fields.frequency_penalty or 0.0,
        stop=stop,
        seed=fields.seed,
        ignore_eos=fields.ignore_eos,
        logprobs=fields.logprobs or fields.top_logprobs > 0,
        top_logprobs=fields.top_logprobs,
    )


def chat_request(
    *,
    request_id: str,
    role: Role,
    user_content: list[ContentPart],
    fields: SamplingFields,
    settings: Settings,
) -> GenerationRequest:
    """A single-turn chat (optional system message) as the native API and forms send it."""
    messages: list[ChatMessage] = []
    if fields.system is not None and fields.system.strip():
        validate_prompt(fields.system, settings, field="system")
        messages.append(ChatMessage.text("system", fields.system))
    messages.append(ChatMessage(role="user", content=tuple(user_content)))
    return GenerationRequest(
        request_id=request_id,
        sampling=sampling_params(fields, role, settings),
        messages=messages,
        enable_thinking=fields.enable_thinking,
        deadline=time.monotonic() + settings.request_timeout,
    )


def text_request(
    prompt: object,
    fields: SamplingFields,
    settings: Settings,
    request_id: str,
) -> GenerationRequest:
    text = validate_prompt(prompt, settings)
    return chat_request(
        request_id=request_id,
        role="avibe",
        user_content=[TextPart(text)],
        fields=fields,
        settings=settings,
    )


def image_request(
    image: Image,
    text: str,
    fields: SamplingFields,
    settings: Settings,
    request_id: str,
) -> GenerationRequest:
    """An image and a (validated) question for A-Vision."""
    return chat_request(
        request_id=request_id,
        role="avision",
        user_content=[ImagePart(image), TextPart(text)],
        fields=fields,
        settings=settings,
    )
