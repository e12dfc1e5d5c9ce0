"""The OpenAI API's serving layer: wire requests → GenerationRequests (model name → role,
messages → chat parts), and answers → OpenAI bodies or stream events (chunks.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Any

from avito_ai.api.deps import Call
from avito_ai.api.openai.chunks import ChatChunks, TextChunks, chat_completion, text_completion
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
from avito_ai.api.streaming import drive
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
            lambda role, can: chat_request(
                body, role, self.settings, call.request_id, images=can.images
            ),
        )
        engine, generation = ready.engine, ready.request
        if body.stream:
            items = await self.generation.stream(engine, generation, call.client, call.disconnected)
            return drive(
                items, ChatChunks(call.request_id, body.model, **_options(body, generation))
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
            lambda role, can: completion_request(
                body, role, self.settings, call.request_id, completions=can.completions
            ),
        )
        engine, generation = ready.engine, ready.request
        echo = (generation.prompt or "") if body.echo else ""
        if body.stream:
            items = await self.generation.stream(engine, generation, call.client, call.disconnected)
            chunks = TextChunks(call.request_id, body.model, **_options(body, generation))
            # With echo the prompt comes back first, as in the whole answer.
            return drive(_preceded_by(echo, items) if echo else items, chunks)
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


def _options(body: OpenAISampling, generation: GenerationRequest) -> dict[str, Any]:
    return {
        "n": generation.sampling.n,
        "logprobs": generation.sampling.logprobs,
        "include_usage": bool(body.stream_options and body.stream_options.include_usage),
    }


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
