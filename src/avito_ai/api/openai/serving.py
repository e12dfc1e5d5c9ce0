"""The OpenAI API's serving layer: wire requests → GenerationRequests (model name → role,
messages → chat parts), and answers → OpenAI bodies or stream events (chunks.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator

from avito_ai.api.deps import Call
from avito_ai.api.errors import stream_failure
from avito_ai.api.openai.chunks import StreamChunks, chat_completion, text_completion
from avito_ai.api.openai.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
    OpenAISampling,
)
from avito_ai.api.requests import sampling_params, validate_prompt
from avito_ai.api.sse import event
from avito_ai.config import Settings
from avito_ai.engines.base import (
    ChatMessage,
    Chunk,
    ContentPart,
    EngineState,
    GenerationRequest,
    ImagePart,
    OutputConstraint,
    Role,
    SamplingParams,
    TextPart,
)
from avito_ai.errors import NotFound, ValidationFailed
from avito_ai.schemas.sampling import SamplingBase, SamplingFields
from avito_ai.services.answers import Answer
from avito_ai.services.constraints import check_supported, constraint_from
from avito_ai.services.images import decode_base64_image, is_data_uri, off_loop
from avito_ai.services.state import ServiceState


def model_names(state: ServiceState, *, configured: bool = False) -> dict[str, Role]:
    """Every name a client may use: the role, and the configured model id of each role.

    `configured`: only the roles that have a model (what a client is offered); a request
    for a role without one still resolves, and gets 503 saying what to set.
    """
    names: dict[str, Role] = {}
    for role, engine in state.engines.items():
        if configured and engine.status().state is EngineState.NOT_CONFIGURED:
            continue
        names[role] = role
        model_id = engine.status().model_id
        if model_id:
            names.setdefault(model_id, role)
    return names


def resolve_role(model: str, state: ServiceState) -> Role:
    role = model_names(state).get(model)
    if role is None:
        offered = ", ".join(model_names(state, configured=True))
        raise NotFound(f"The model '{model}' does not exist. Available: {offered}", param="model")
    return role


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
        parts.append(ImagePart(decode_base64_image(url, settings.max_image_size_mb, param=field)))
    return parts, chars


def chat_request(
    body: ChatCompletionRequest,
    role: Role,
    settings: Settings,
    request_id: str,
    constraint: OutputConstraint | None = None,
) -> GenerationRequest:
    messages: list[ChatMessage] = []
    total_chars = 0
    for i, message in enumerate(body.messages):
        parts, chars = _content(message.content, i, settings)
        total_chars += chars
        if role == "avibe" and any(isinstance(p, ImagePart) for p in parts):
            raise ValidationFailed(
                "Model avibe does not accept images; use model 'avision'", param="messages"
            )
        msg_role = "system" if message.role == "developer" else message.role
        messages.append(ChatMessage(role=msg_role, content=tuple(parts)))
    if total_chars > settings.max_prompt_length:
        raise ValidationFailed(
            f"Prompt too long. Maximum length: {settings.max_prompt_length} characters",
            param="messages",
        )
    if not any(m.role == "user" and m.content for m in messages):
        raise ValidationFailed("messages must contain a user message", param="messages")
    images = sum(isinstance(p, ImagePart) for m in messages for p in m.content)
    if images > settings.avision_max_images:
        raise ValidationFailed(
            f"Too many images: {images}; at most {settings.avision_max_images} per request "
            "(AVISION_MAX_IMAGES)",
            param="messages",
        )
    thinking = body.enable_thinking or bool(
        (body.chat_template_kwargs or {}).get("enable_thinking", False)
    )
    return GenerationRequest(
        request_id=request_id,
        sampling=_sampling(body, role, settings),
        messages=messages,
        enable_thinking=thinking,
        deadline=time.monotonic() + settings.request_timeout,
        constraint=constraint,
    )


def completion_request(
    body: CompletionRequest,
    role: Role,
    settings: Settings,
    request_id: str,
    constraint: OutputConstraint | None = None,
) -> GenerationRequest:
    if role != "avibe":
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
        constraint=constraint,
    )


def model_list(state: ServiceState) -> ModelList:
    """Every name a client may use, for every configured role."""
    created = int(state.started_at)
    cards = [
        ModelCard(id=name, created=created, root=state.engines[role].status().model_id or role)
        for name, role in model_names(state, configured=True).items()
    ]
    return ModelList(data=cards)


async def openai_events(
    items: AsyncGenerator[Chunk | Answer, None], frames: StreamChunks, *, include_usage: bool
) -> AsyncIterator[str]:
    """OpenAI streaming chunks ending with `data: [DONE]`; `echo` (completions) first."""
    for opening in frames.openings():
        yield event(opening)
    try:
        async for item in items:
            if not isinstance(item, Answer):
                yield event(frames.delta(item))
                continue
            for finish in frames.finishes(item):
                yield event(finish)
            if include_usage:
                yield event(frames.usage(item))
    except Exception as exc:
        yield event(stream_failure(exc, frames.request_id, "openai"))
    finally:
        await items.aclose()
    yield event("[DONE]")


class OpenAIServing:
    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.settings = state.settings
        self.generation = state.generation

    async def chat(
        self, body: ChatCompletionRequest, call: Call
    ) -> ChatCompletion | AsyncIterator[str]:
        role = resolve_role(body.model, self.state)
        engine = await self.generation.ready_engine(role)  # 503 before images or schemas
        constraint = await constraint_from(body.response_format)
        check_supported(engine, constraint, "response_format")
        # Off the loop: it decodes the images of the messages.
        generation = await off_loop(
            chat_request, body, role, self.settings, call.request_id, constraint
        )
        if body.stream:
            items = await self.generation.stream(engine, generation, call.client, call.disconnected)
            return openai_events(
                items, self._frames(body, generation, chat=True), include_usage=_usage(body)
            )
        answer = await self.generation.complete(engine, generation, call.client, call.disconnected)
        return chat_completion(answer, call.request_id, body.model)

    async def completions(
        self, body: CompletionRequest, call: Call
    ) -> Completion | AsyncIterator[str]:
        role = resolve_role(body.model, self.state)
        constraint = await constraint_from(body.response_format)
        generation = completion_request(body, role, self.settings, call.request_id, constraint)
        engine = await self.generation.ready_engine(role)
        check_supported(engine, constraint, "response_format")
        echo = (generation.prompt or "") if body.echo else ""
        if body.stream:
            items = await self.generation.stream(engine, generation, call.client, call.disconnected)
            frames = self._frames(body, generation, chat=False)
            # With echo the prompt comes back first, as in the whole answer.
            return openai_events(
                _preceded_by(echo, items) if echo else items,
                frames,
                include_usage=_usage(body),
            )
        answer = await self.generation.complete(engine, generation, call.client, call.disconnected)
        return text_completion(answer, call.request_id, body.model, echo)

    def models(self) -> ModelList:
        return model_list(self.state)

    @staticmethod
    def _frames(body: OpenAISampling, generation: GenerationRequest, *, chat: bool) -> StreamChunks:
        return StreamChunks(
            generation.request_id,
            body.model,
            chat,
            n=generation.sampling.n,
            logprobs=generation.sampling.logprobs,
        )


def _usage(body: OpenAISampling) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


async def _preceded_by(
    text: str, items: AsyncGenerator[Chunk | Answer, None]
) -> AsyncGenerator[Chunk | Answer, None]:
    """`text` as a first delta, then the generation's (an echoed prompt). Closing this
    closes `items` at once, so the engine stops working for a client that left."""
    try:
        yield Chunk(text)
        async for item in items:
            yield item
    finally:
        await items.aclose()
