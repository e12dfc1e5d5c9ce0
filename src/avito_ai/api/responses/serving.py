"""The Responses API's serving layer: a request → its generation (model name → role,
input items → chat, text.format → a constraint, tools and tool_choice checked), and the
answer → the response object or its stream of events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from avito_ai.api.deps import Call
from avito_ai.api.openai.serving import resolve_role
from avito_ai.api.responses.events import ResponseEvents, response_events
from avito_ai.api.responses.objects import Response
from avito_ai.api.responses.output import ResponseFrame
from avito_ai.api.responses.protocol import ResponsesRequest
from avito_ai.api.responses.requests import responses_request, text_constraint
from avito_ai.engines.base import Engine, GenerationRequest
from avito_ai.errors import ValidationFailed
from avito_ai.services.constraints import check_supported
from avito_ai.services.images import off_loop
from avito_ai.services.state import ServiceState
from avito_ai.services.tools import apply_tool_choice, check_tools


async def _apply_tool_choice(engine: Engine, generation: GenerationRequest) -> None:
    """services/tools.py names a tool's schema as chat does (`tools.N.function.parameters`);
    a Responses tool is flat (`tools.N.parameters`)."""
    try:
        await apply_tool_choice(engine, generation)
    except ValidationFailed as exc:
        if exc.param and exc.param.endswith(".function.parameters"):
            exc.param = exc.param.replace(".function.parameters", ".parameters")
        raise


class ResponsesServing:
    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.settings = state.settings
        self.generation = state.generation

    async def create(self, body: ResponsesRequest, call: Call) -> Response | AsyncIterator[str]:
        role = resolve_role(body.model, self.state)
        engine = await self.generation.ready_engine(role)  # 503 before images or schemas
        constraint = await text_constraint(body)
        check_supported(engine, constraint, "text.format")
        # Off the loop: it decodes the images of the input.
        generation = await off_loop(
            responses_request, body, role, self.settings, call.request_id, constraint
        )
        await check_tools(generation, self.settings)
        await _apply_tool_choice(engine, generation)
        frame = ResponseFrame(call.request_id, body, generation)
        if body.stream:
            items = await self.generation.stream(engine, generation, call.client, call.disconnected)
            return response_events(items, ResponseEvents(frame))
        answer = await self.generation.complete(engine, generation, call.client, call.disconnected)
        return frame.whole(answer)
