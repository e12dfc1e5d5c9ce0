"""Anthropic's Messages API routes. Thin: the serving layer answers; the route only picks a
JSON body or an event stream. (The `anthropic-version` and `anthropic-beta` headers are
accepted and need no check; keys come as `x-api-key` or `Authorization: Bearer`.)"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from avito_ai.api.anthropic.protocol import (
    CountTokensRequest,
    Message,
    MessagesRequest,
    TokenCount,
)
from avito_ai.api.anthropic.serving import AnthropicServing
from avito_ai.api.deps import CallDep, StateDep
from avito_ai.api.openapi import errors
from avito_ai.api.sse import sse_response

router = APIRouter(prefix="/v1", tags=["Anthropic-compatible API"])
STREAMED: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}
# Anthropic's name for the request id: the SDK reads it into `message._request_id`.
REQUEST_ID = "request-id"


@router.post(
    "/messages",
    summary="Create a message (Anthropic-compatible)",
    response_model=Message,
    responses={**errors(400, 404, 503, 504), **STREAMED},
)
async def messages(
    body: MessagesRequest, state: StateDep, call: CallDep, response: Response
) -> Message | StreamingResponse:
    answer = await AnthropicServing(state).messages(body, call)
    if isinstance(answer, Message):
        response.headers[REQUEST_ID] = call.request_id
        return answer
    streamed = sse_response(answer)
    streamed.headers[REQUEST_ID] = call.request_id
    return streamed


@router.post(
    "/messages/count_tokens",
    summary="Count a message's input tokens (Anthropic-compatible)",
    responses=errors(400, 404, 503),
)
async def count_tokens(
    body: CountTokensRequest, state: StateDep, call: CallDep, response: Response
) -> TokenCount:
    response.headers[REQUEST_ID] = call.request_id
    return await AnthropicServing(state).count_tokens(body, call)
