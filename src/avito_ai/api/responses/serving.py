"""The Responses API's serving layer: a request → its generation (model name → role,
input items → chat, text.format → a constraint, tools and tool_choice checked), and the
answer → the response object or its stream of events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from avito_ai.api.deps import Call
from avito_ai.api.responses.events import ResponseEvents, response_events
from avito_ai.api.responses.objects import Response
from avito_ai.api.responses.output import ResponseFrame
from avito_ai.api.responses.protocol import ResponsesRequest
from avito_ai.api.responses.requests import (
    RESPONSES_FIELDS,
    responses_output,
    responses_request,
)
from avito_ai.services.pipeline import prepare
from avito_ai.services.state import ServiceState


class ResponsesServing:
    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.settings = state.settings
        self.generation = state.generation

    async def create(self, body: ResponsesRequest, call: Call) -> Response | AsyncIterator[str]:
        ready = await prepare(
            self.state,
            body.model,
            responses_output(body),
            RESPONSES_FIELDS,
            lambda role, can: responses_request(
                body, role, self.settings, call.request_id, images=can.images
            ),
        )
        engine, generation = ready.engine, ready.request
        frame = ResponseFrame(call.request_id, body, generation)
        if body.stream:
            items = await self.generation.stream(engine, generation, call.client, call.disconnected)
            return response_events(items, ResponseEvents(frame))
        answer = await self.generation.complete(engine, generation, call.client, call.disconnected)
        return frame.whole(answer)
