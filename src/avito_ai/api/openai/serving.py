"""The OpenAI API's serving layer: wire requests → GenerationRequests (model name → role,
messages → chat parts), and answers → OpenAI bodies or stream events (chunks.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime

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
from avito_ai.api.openai.requests import chat_request, completion_request
from avito_ai.api.sse import event
from avito_ai.engines.base import (
    Chunk,
    EngineState,
    GenerationRequest,
    Role,
)
from avito_ai.errors import NotFound
from avito_ai.services.answers import Answer
from avito_ai.services.constraints import check_supported, constraint_from
from avito_ai.services.images import off_loop
from avito_ai.services.state import ServiceState
from avito_ai.services.tools import apply_tool_choice, check_tools

DISPLAY_NAMES: dict[Role, str] = {"avibe": "A-Vibe", "avision": "A-Vision"}


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


def model_list(state: ServiceState) -> ModelList:
    """Every name a client may use, for every configured role."""
    created = int(state.started_at)
    at = datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z")
    cards = [
        ModelCard(
            id=name,
            created=created,
            root=state.engines[role].status().model_id or role,
            display_name=DISPLAY_NAMES[role] if name == role else f"{DISPLAY_NAMES[role]} ({name})",
            created_at=at,
        )
        for name, role in model_names(state, configured=True).items()
    ]
    ids = [card.id for card in cards]
    return ModelList(data=cards, first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None)


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
        await check_tools(generation, self.settings)
        await apply_tool_choice(engine, generation)
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

    def model(self, name: str) -> ModelCard:
        """One name's card (both SDKs' `models.retrieve`), as the list has it."""
        card = next((c for c in model_list(self.state).data if c.id == name), None)
        if card is None:
            offered = ", ".join(model_names(self.state, configured=True))
            raise NotFound(f"The model '{name}' does not exist. Available: {offered}")
        return card

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
