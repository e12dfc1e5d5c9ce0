"""OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models.

Thin: parse, call the serving layer (`services/openai_compat.py`), return.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from avito_ai.api.deps import RequestIdDep, SettingsDep, StateDep, disconnect_waiter
from avito_ai.api.openapi import errors
from avito_ai.api.sse import openai_events, sse_response
from avito_ai.engines.base import GenerationRequest, Role
from avito_ai.schemas.openai import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelList,
    OpenAISampling,
)
from avito_ai.services import generation as gen
from avito_ai.services import openai_compat as oa
from avito_ai.services.constraints import check_supported, constraint_from
from avito_ai.services.images import off_loop
from avito_ai.services.state import ServiceState
from avito_ai.services.streaming import open_stream, preceded_by, unless_disconnected

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])


async def _run(
    request: Request,
    state: ServiceState,
    role: Role,
    generation: GenerationRequest,
    body: OpenAISampling,
    *,
    chat: bool,
    echo: str = "",
) -> gen.Answer | StreamingResponse:
    """Generate for either endpoint: an SSE stream, or the collected answer."""
    engine = await gen.ready_engine(state, role)
    if not body.stream:
        return await unless_disconnected(
            gen.complete(engine, generation), disconnect_waiter(request)
        )
    opened = await unless_disconnected(open_stream(engine, generation), disconnect_waiter(request))
    # With echo the prompt comes back first, as in the whole answer.
    chunks = preceded_by(echo, opened) if echo else opened
    return sse_response(
        openai_events(
            chunks,
            oa.StreamChunks(
                generation.request_id,
                body.model,
                chat,
                n=generation.sampling.n,
                logprobs=generation.sampling.logprobs,
            ),
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
        )
    )


@router.post(
    "/chat/completions",
    summary="Chat completion (OpenAI-compatible)",
    response_model=ChatCompletion,
    responses={**errors(400, 404, 503, 504), 200: {"content": {"text/event-stream": {}}}},
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    state: StateDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> ChatCompletion | StreamingResponse:
    role = oa.resolve_role(body.model, state)
    engine = await gen.ready_engine(state, role)  # 503 before decoding images or schemas
    constraint = await constraint_from(body.response_format)
    check_supported(engine, constraint, "response_format")
    # Off the loop: it decodes the images of the messages.
    generation = await off_loop(oa.chat_request, body, role, settings, request_id, constraint)
    result = await _run(request, state, role, generation, body, chat=True)
    if isinstance(result, StreamingResponse):
        return result
    return oa.chat_completion(result, request_id, body.model)


@router.post(
    "/completions",
    summary="Text completion (OpenAI-compatible)",
    response_model=Completion,
    responses={**errors(400, 404, 503, 504), 200: {"content": {"text/event-stream": {}}}},
)
async def completions(
    body: CompletionRequest,
    request: Request,
    state: StateDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> Completion | StreamingResponse:
    role = oa.resolve_role(body.model, state)
    constraint = await constraint_from(body.response_format)
    generation = oa.completion_request(body, role, settings, request_id, constraint)
    check_supported(await gen.ready_engine(state, role), constraint, "response_format")
    echo = (generation.prompt or "") if body.echo else ""
    result = await _run(request, state, role, generation, body, chat=False, echo=echo)
    if isinstance(result, StreamingResponse):
        return result
    return oa.text_completion(result, request_id, body.model, echo)


@router.get("/models", summary="Models this server answers to (roles and model ids)")
async def list_models(state: StateDep) -> ModelList:
    return oa.model_list(state)
