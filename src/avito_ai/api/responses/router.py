"""OpenAI's Responses API route: /v1/responses, stateless. Thin: the serving layer answers;
the route only picks a JSON body or an event stream."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from avito_ai.api.deps import CallDep, StateDep
from avito_ai.api.openapi import errors
from avito_ai.api.responses.objects import Response
from avito_ai.api.responses.protocol import ResponsesRequest
from avito_ai.api.responses.serving import ResponsesServing
from avito_ai.api.sse import sse_response

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])
STREAMED: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


@router.post(
    "/responses",
    summary="Create a model response (OpenAI Responses API, stateless)",
    response_model=Response,
    responses={**errors(400, 404, 503, 504), **STREAMED},
)
async def create_response(
    body: ResponsesRequest, state: StateDep, call: CallDep
) -> Response | StreamingResponse:
    answer = await ResponsesServing(state).create(body, call)
    return answer if isinstance(answer, Response) else sse_response(answer)
