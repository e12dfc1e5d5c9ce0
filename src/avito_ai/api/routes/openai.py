"""OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from avito_ai.api.deps import RequestIdDep, SettingsDep, StateDep
from avito_ai.api.native import disconnect_waiter
from avito_ai.api.sse import completion_id, openai_events, sse_response
from avito_ai.engines.base import GenerationRequest, Role
from avito_ai.lifespan import ServiceState
from avito_ai.schemas.openai import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    OpenAISampling,
    Usage,
)
from avito_ai.services import generation as gen
from avito_ai.services.openai_compat import (
    chat_request,
    completion_request,
    model_names,
    resolve_role,
)
from avito_ai.services.streaming import open_stream, unless_disconnected

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])


def _usage(result: gen.Completion) -> Usage:
    return Usage(
        prompt_tokens=result.input_tokens,
        completion_tokens=result.generated_tokens,
        total_tokens=result.input_tokens + result.generated_tokens,
    )


async def _run(
    request: Request,
    state: ServiceState,
    role: Role,
    generation: GenerationRequest,
    body: OpenAISampling,
    *,
    chat: bool,
) -> gen.Completion | StreamingResponse:
    """Generate for either endpoint: an SSE stream, or the collected answer."""
    engine = await gen.ready_engine(state, role)
    if not body.stream:
        return await unless_disconnected(
            gen.complete(engine, generation), disconnect_waiter(request)
        )
    chunks = await unless_disconnected(open_stream(engine, generation), disconnect_waiter(request))
    return sse_response(
        openai_events(
            chunks,
            request_id=generation.request_id,
            model=body.model,
            chat=chat,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
        )
    )


@router.post(
    "/chat/completions",
    summary="Chat completion (OpenAI-compatible)",
    response_model=ChatCompletion,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    state: StateDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> ChatCompletion | StreamingResponse:
    role = resolve_role(body.model, state)
    await gen.ready_engine(state, role)  # 503 before decoding images for an absent model
    generation = chat_request(body, role, settings, request_id)
    result = await _run(request, state, role, generation, body, chat=True)
    if isinstance(result, StreamingResponse):
        return result
    return ChatCompletion(
        id=completion_id(request_id, chat=True),
        created=int(time.time()),
        model=body.model,
        choices=[
            ChatChoice(
                message=AssistantMessage(content=result.text), finish_reason=result.finish_reason
            )
        ],
        usage=_usage(result),
    )


@router.post(
    "/completions",
    summary="Text completion (OpenAI-compatible)",
    response_model=Completion,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def completions(
    body: CompletionRequest,
    request: Request,
    state: StateDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> Completion | StreamingResponse:
    role = resolve_role(body.model, state)
    generation = completion_request(body, role, settings, request_id)
    result = await _run(request, state, role, generation, body, chat=False)
    if isinstance(result, StreamingResponse):
        return result
    prompt = (generation.prompt or "") if body.echo else ""
    return Completion(
        id=completion_id(request_id, chat=False),
        created=int(time.time()),
        model=body.model,
        choices=[CompletionChoice(text=prompt + result.text, finish_reason=result.finish_reason)],
        usage=_usage(result),
    )


@router.get("/models", summary="Models this server answers to (roles and model ids)")
async def list_models(state: StateDep) -> ModelList:
    created = int(state.started_at)
    cards = [
        ModelCard(id=name, created=created, root=state.engines[role].status().model_id or role)
        for name, role in model_names(state).items()
        if state.engines[role].status().state.value != "not_configured"
    ]
    return ModelList(data=cards)
