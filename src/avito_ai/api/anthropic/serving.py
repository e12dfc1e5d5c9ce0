"""Anthropic's Messages API serving layer: wire requests → GenerationRequests (model name →
role, as the OpenAI dialect resolves it), answers → Messages or stream events (chunks.py),
and prompt token counts."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator

from avito_ai.api.anthropic.chunks import Event, StreamEvents, message
from avito_ai.api.anthropic.protocol import (
    CountTokensRequest,
    Message,
    MessagesInput,
    MessagesRequest,
    TokenCount,
)
from avito_ai.api.anthropic.requests import messages_request
from avito_ai.api.anthropic.stops import cut_at_stops
from avito_ai.api.deps import Call
from avito_ai.api.errors import stream_failure
from avito_ai.api.openai.serving import resolve_role
from avito_ai.api.sse import event
from avito_ai.engines.base import Chunk, Engine, GenerationRequest
from avito_ai.errors import ModelUnavailable
from avito_ai.schemas.structured import JSONSchemaSpec, ResponseFormatJSONSchema
from avito_ai.services.answers import Answer
from avito_ai.services.budgets import prompt_tokens
from avito_ai.services.constraints import check_supported, checked_schema, constraint_from
from avito_ai.services.generation import unless_disconnected
from avito_ai.services.images import off_loop
from avito_ai.services.state import ServiceState
from avito_ai.services.tools import apply_tool_choice, check_tools

OUTPUT_FORMAT = "output_config.format"


def _frames(events: list[Event]) -> list[str]:
    return [event(data, name) for name, data in events]


async def anthropic_events(
    items: AsyncGenerator[Chunk | Answer, None], frames: StreamEvents
) -> AsyncIterator[str]:
    """message_start, the content blocks, message_delta and message_stop; a failure after
    the start is an `error` event, and the stream ends there."""
    try:
        for frame in _frames(frames.start()):
            yield frame
        async for item in items:
            if isinstance(item, Answer):
                for frame in _frames(frames.finish(item)):
                    yield frame
            else:
                for frame in _frames(frames.delta(item)):
                    yield frame
    except Exception as exc:
        yield event(stream_failure(exc, frames.request_id, "anthropic"), "error")
    finally:
        await items.aclose()  # a client gone: the generation is cancelled


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

    async def _prepare(self, body: MessagesInput, call: Call) -> tuple[Engine, GenerationRequest]:
        """The engine and the checked request: the same for an answer and a count."""
        role = resolve_role(body.model, self.state)
        engine = await self.generation.ready_engine(role)  # 503 before images or schemas
        output = body.output_config.format if body.output_config else None
        constraint = None
        if output is not None:  # named as sent (then constraint_from finds it cached)
            await checked_schema(output.schema_, f"{OUTPUT_FORMAT}.schema")
            spec = JSONSchemaSpec(name="output", schema=output.schema_)
            response_format = ResponseFormatJSONSchema(type="json_schema", json_schema=spec)
            constraint = await constraint_from(response_format, OUTPUT_FORMAT)
            check_supported(engine, constraint, OUTPUT_FORMAT)
        # Off the loop: it decodes the images of the messages.
        generation = await off_loop(
            messages_request, body, role, self.settings, call.request_id, constraint
        )
        await check_tools(generation, self.settings)
        await apply_tool_choice(engine, generation)
        return engine, generation

    async def messages(self, body: MessagesRequest, call: Call) -> Message | AsyncIterator[str]:
        engine, generation = await self._prepare(body, call)
        stops = generation.sampling.stop
        if not body.stream and not stops:
            answer = await self.generation.complete(
                engine, generation, call.client, call.disconnected
            )
            return message(answer, call.request_id, body.model)
        # message_start says the prompt's tokens before the answer, as Anthropic's does.
        counted = prompt_tokens(engine, generation, self.settings.avision_max_pixels)
        if stops:  # cut here, to say which one ended the answer (stops.py)
            generation.sampling = dataclasses.replace(generation.sampling, stop=())
        items = await self.generation.stream(engine, generation, call.client, call.disconnected)
        if stops:
            items = cut_at_stops(items, stops, counted)
        if body.stream:
            return anthropic_events(items, StreamEvents(call.request_id, body.model, counted))
        answer = await unless_disconnected(_answer_of(items), call.disconnected)
        return message(answer, call.request_id, body.model)

    async def count_tokens(self, body: CountTokensRequest, call: Call) -> TokenCount:
        """The prompt's tokens, as the model will see it (the engine counts when it can:
        then it is the answer's usage.input_tokens exactly; otherwise an estimate)."""
        engine, generation = await self._prepare(body, call)
        return TokenCount(
            input_tokens=prompt_tokens(engine, generation, self.settings.avision_max_pixels)
        )
