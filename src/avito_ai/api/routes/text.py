"""Native JSON API for A-Vibe: POST /api/v1/text/generate."""

from __future__ import annotations

from fastapi import APIRouter

from avito_ai.api.deps import RequestIdDep, SettingsDep, StateDep
from avito_ai.schemas.native import (
    ErrorResponse,
    GenerationData,
    GenerationMetrics,
    GenerationResponse,
    TextGenerateRequest,
)
from avito_ai.services.generation import Completion, complete, ready_engine, text_request

router = APIRouter(prefix="/api/v1", tags=["native API"])


def native_response(result: Completion, request_id: str) -> GenerationResponse:
    t = result.timings
    return GenerationResponse(
        data=GenerationData(
            text=result.text,
            generated_tokens=result.generated_tokens,
            input_tokens=result.input_tokens,
            finish_reason=result.finish_reason,
        ),
        metrics=GenerationMetrics(
            generation_time=round(t.generation_s, 3),
            total_time=round(t.total_s, 3),
            tokens_per_second=result.tokens_per_second,
            queue_time=round(t.queue_s, 3),
            time_to_first_token=round(t.ttft_s, 3),
        ),
        request_id=request_id,
    )


@router.post(
    "/text/generate",
    summary="Generate text with A-Vibe",
    responses={
        400: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
        504: {"model": ErrorResponse},
    },
)
async def generate_text(
    body: TextGenerateRequest, state: StateDep, settings: SettingsDep, request_id: RequestIdDep
) -> GenerationResponse:
    request = text_request(body.prompt, body, settings, request_id)
    engine = ready_engine(state, "avibe")
    result = await complete(engine, request)
    return native_response(result, request_id)
