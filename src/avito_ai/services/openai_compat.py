"""The OpenAI front door's serving layer: wire requests → GenerationRequests (model name →
role, messages → chat parts), and answers → OpenAI responses and stream chunks."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
    TokenLogprob,
)
from avito_ai.errors import NotFound, ValidationFailed
from avito_ai.schemas.native import SamplingBase, SamplingFields
from avito_ai.schemas.openai import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    ModelCard,
    ModelList,
    OpenAISampling,
    TopLogprob,
    Usage,
)
from avito_ai.schemas.openai import TokenLogprob as WireTokenLogprob
from avito_ai.services.generation import Answer, sampling_params, validate_prompt
from avito_ai.services.images import decode_base64_image, is_data_uri
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


# ------------------------------------------------------------------ responses


def completion_id(request_id: str, *, chat: bool) -> str:
    """OpenAI-style id, derived from the request id so logs and answers line up."""
    return ("chatcmpl-" if chat else "cmpl-") + request_id.replace("-", "")[:32]


def usage(answer: Answer) -> Usage:
    return Usage(
        prompt_tokens=answer.input_tokens,
        completion_tokens=answer.generated_tokens,
        total_tokens=answer.input_tokens + answer.generated_tokens,
    )


def chat_logprobs(tokens: Sequence[TokenLogprob] | None) -> ChoiceLogprobs | None:
    """OpenAI's chat `logprobs`: each token with its bytes and alternatives."""
    if tokens is None:
        return None
    return ChoiceLogprobs(
        content=[
            WireTokenLogprob(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.bytes),
                top_logprobs=[
                    TopLogprob(token=token, logprob=logprob, bytes=list(raw))
                    for token, logprob, raw in t.top
                ],
            )
            for t in tokens
        ]
    )


def completion_logprobs(
    tokens: Sequence[TokenLogprob] | None, offset: int = 0
) -> CompletionLogprobs | None:
    """The completions endpoint's older shape: parallel lists, alternatives as maps."""
    if tokens is None:
        return None
    offsets: list[int] = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[{token: logprob for token, logprob, _ in t.top} for t in tokens],
        text_offset=offsets,
    )


def chat_completion(answer: Answer, request_id: str, model: str) -> ChatCompletion:
    return ChatCompletion(
        id=completion_id(request_id, chat=True),
        created=int(time.time()),
        model=model,
        choices=[
            ChatChoice(
                index=choice.index,
                message=AssistantMessage(content=choice.text),
                finish_reason=choice.finish_reason,
                logprobs=chat_logprobs(choice.logprobs),
            )
            for choice in answer.choices
        ],
        usage=usage(answer),
    )


def text_completion(answer: Answer, request_id: str, model: str, echo: str = "") -> Completion:
    """A /v1/completions answer; `echo` is the prompt when the client asked for it back."""
    return Completion(
        id=completion_id(request_id, chat=False),
        created=int(time.time()),
        model=model,
        choices=[
            CompletionChoice(
                index=choice.index,
                text=echo + choice.text,
                finish_reason=choice.finish_reason,
                logprobs=completion_logprobs(choice.logprobs, len(echo)),
            )
            for choice in answer.choices
        ],
        usage=usage(answer),
    )


@dataclass
class StreamChunks:
    """The bodies of one streamed answer's chunks (`chat.completion.chunk` or
    `text_completion`), with the same id, model and creation time in each. Choices
    (n > 1) interleave, each chunk naming its `index`."""

    request_id: str
    model: str
    chat: bool
    n: int = 1
    logprobs: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    _offsets: dict[int, int] = field(default_factory=dict)

    def _body(self, choice: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        return {
            "id": completion_id(self.request_id, chat=self.chat),
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [] if choice is None else [choice],
            **extra,
        }

    def openings(self) -> list[dict[str, Any]]:
        """Chat streams open each choice with the assistant role; text streams do not."""
        if not self.chat:
            return []
        return [
            self._body(
                {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            )
            for i in range(self.n)
        ]

    def _logprobs(self, index: int, tokens: Sequence[TokenLogprob] | None) -> Any:
        if not self.logprobs:
            return None
        if self.chat:
            wire = chat_logprobs(tokens or ())
            return wire.model_dump() if wire else None
        offset = self._offsets.get(index, 0)
        self._offsets[index] = offset + sum(len(t.token) for t in tokens or ())
        text = completion_logprobs(tokens or (), offset)
        return text.model_dump() if text else None

    def delta(self, chunk: Chunk) -> dict[str, Any]:
        logprobs = self._logprobs(chunk.index, chunk.logprobs)
        if self.chat:
            choice: dict[str, Any] = {
                "index": chunk.index,
                "delta": {"content": chunk.text},
                "finish_reason": None,
            }
            if logprobs is not None:
                choice["logprobs"] = logprobs
            return self._body(choice)
        return self._body(
            {"index": chunk.index, "text": chunk.text, "finish_reason": None, "logprobs": logprobs}
        )

    def finishes(self, answer: Answer) -> list[dict[str, Any]]:
        """Each choice's last chunk, with its finish_reason."""
        if self.chat:
            return [
                self._body({"index": c.index, "delta": {}, "finish_reason": c.finish_reason})
                for c in answer.choices
            ]
        return [
            self._body({"index": c.index, "text": "", "finish_reason": c.finish_reason})
            for c in answer.choices
        ]

    def usage(self, answer: Answer) -> dict[str, Any]:
        return self._body(None, usage=usage(answer).model_dump())


def model_list(state: ServiceState) -> ModelList:
    """Every name a client may use, for every configured role."""
    created = int(state.started_at)
    cards = [
        ModelCard(id=name, created=created, root=state.engines[role].status().model_id or role)
        for name, role in model_names(state, configured=True).items()
    ]
    return ModelList(data=cards)
