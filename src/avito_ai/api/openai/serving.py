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
from avito_ai.api.openai.requests import chat_output, chat_request, completion_request
from avito_ai.api.requests import response_format_output
from avito_ai.api.sse import event
from avito_ai.engines.base import Chunk, GenerationRequest
from avito_ai.services.answers import Answer
from avito_ai.services.models import offered_models, unknown_model
from avito_ai.services.output import CHAT_FIELDS
from avito_ai.services.pipeline import prepare
from avito_ai.services.state import ServiceState


def model_list(state: ServiceState) -> ModelList:
    """Every name a client may use, for every configured role (services/models.py)."""
    created = int(state.started_at)
    at = datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z")
    cards = [
        ModelCard(
            id=m.name, created=created, root=m.root, display_name=m.display_name, created_at=at
        )
        for m in offered_models(state)
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
        ready = await prepare(
            self.state,
            body.model,
            chat_output(body),
            CHAT_FIELDS,
            lambda role: chat_request(body, role, self.settings, call.request_id),
        )
        engine, generation = ready.engine, ready.request
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
        ready = await prepare(
            self.state,
            body.model,
            response_format_output(body.response_format),
            CHAT_FIELDS,
            lambda role: completion_request(body, role, self.settings, call.request_id),
        )
        engine, generation = ready.engine, ready.request
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
            raise unknown_model(name, self.state, param=None)
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
