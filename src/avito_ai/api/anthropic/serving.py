"""Anthropic's Messages API serving layer: wire requests → GenerationRequests (model name →
role, as the OpenAI dialect resolves it), answers → Messages or stream events (chunks.py),
and prompt token counts."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator

from avito_ai.api.anthropic.chunks import StreamEvents, message
from avito_ai.api.anthropic.protocol import (
    CountTokensRequest,
    Message,
    MessagesInput,
    MessagesRequest,
    TokenCount,
)
from avito_ai.api.anthropic.requests import MESSAGES_FIELDS, messages_output, messages_request
from avito_ai.api.anthropic.stops import cut_at_stops
from avito_ai.api.deps import Call
from avito_ai.api.streaming import drive
from avito_ai.engines.base import Chunk
from avito_ai.errors import ModelUnavailable
from avito_ai.services.answers import Answer
from avito_ai.services.budgets import prompt_tokens
from avito_ai.services.generation import unless_disconnected
from avito_ai.services.pipeline import Prepared, prepare
from avito_ai.services.state import ServiceState


async def _answer_of(items: AsyncGenerator[Chunk | Answer, None]) -> Answer:
    """The Answer that ends `items` (its deltas passed over)."""
    async with contextlib.aclosing(items):
        async for item in items:
            if isinstance(item, Answer):
                return item
    raise ModelUnavailable("The model stopped without finishing the answer")


class AnthropicServing:
    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.settings = state.settings
        self.generation = state.generation

    async def _prepare(self, body: MessagesInput, call: Call) -> Prepared:
        """The engine and the checked request: the same for an answer and a count."""
        return await prepare(
            self.state,
            body.model,
            messages_output(body),
            MESSAGES_FIELDS,
            lambda role, can: messages_request(
                body, role, self.settings, call.request_id, images=can.images
            ),
        )

    async def messages(self, body: MessagesRequest, call: Call) -> Message | AsyncIterator[str]:
        ready = await self._prepare(body, call)
        engine, generation = ready.engine, ready.request
        stops = generation.sampling.stop
        if not body.stream and not stops:
            answer = await self.generation.complete(
                engine, generation, call.client, call.disconnected
            )
            return message(answer, call.request_id, body.model)
        # message_start says the prompt's tokens before the answer, as Anthropic's does.
        counted = prompt_tokens(engine, generation, self.settings.avision_max_pixels)
        if stops:  # cut here, to say which one ended the answer (stops.py)
            sampling = dataclasses.replace(generation.sampling, stop=())
            generation = dataclasses.replace(generation, sampling=sampling)
        items = await self.generation.stream(engine, generation, call.client, call.disconnected)
        if stops:
            items = cut_at_stops(items, stops, counted)
        if body.stream:
            return drive(items, StreamEvents(call.request_id, body.model, counted))
        answer = await unless_disconnected(_answer_of(items), call.disconnected)
        return message(answer, call.request_id, body.model)

    async def count_tokens(self, body: CountTokensRequest, call: Call) -> TokenCount:
        """The prompt's tokens, as the model will see it (the engine counts when it can:
        then it is the answer's usage.input_tokens exactly; otherwise an estimate)."""
        ready = await self._prepare(body, call)
        return TokenCount(
            input_tokens=prompt_tokens(
                ready.engine, ready.request, self.settings.avision_max_pixels
            )
        )
