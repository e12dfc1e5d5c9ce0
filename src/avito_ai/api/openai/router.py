"""The OpenAI API's routes: /v1/chat/completions, /v1/completions, /v1/models (and one). Thin: the
serving layer answers; the route only picks a JSON body or an event stream."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from avito_ai.api.deps import CallDep, StateDep
from avito_ai.api.openai.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from avito_ai.api.openai.serving import OpenAIServing
from avito_ai.api.openapi import errors
from avito_ai.api.sse import sse_response

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])
STREAMED: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


@router.post(
    "/chat/completions",
    summary="Chat completion (OpenAI-compatible)",
    response_model=ChatCompletion,
    responses={**errors(400, 404, 503, 504), **STREAMED},
)
async def chat_completions(
    body: ChatCompletionRequest, state: StateDep, call: CallDep
) -> ChatCompletion | StreamingResponse:
    answer = await OpenAIServing(state).chat(body, call)
    return answer if isinstance(answer, ChatCompletion) else sse_response(answer)


@router.post(
    "/completions",
    summary="Text completion (OpenAI-compatible)",
    response_model=Completion,
    responses={**errors(400, 404, 503, 504), **STREAMED},
)
async def completions(
    body: CompletionRequest, state: StateDep, call: CallDep
) -> Completion | StreamingResponse:
    answer = await OpenAIServing(state).completions(body, call)
    return answer if isinstance(answer, Completion) else sse_response(answer)


@router.get("/models", summary="Models this server answers to (roles and model ids)")
async def list_models(state: StateDep) -> ModelList:
    return OpenAIServing(state).models()


@router.get(
    "/models/{model:path}",
    summary="One model name (OpenAI's and Anthropic's `models.retrieve`)",
    responses=errors(404),
)
async def retrieve_model(model: str, state: StateDep) -> ModelCard:
    return OpenAIServing(state).model(model)
