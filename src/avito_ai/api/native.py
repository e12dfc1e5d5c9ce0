"""Answering a native-API generation: the seed's JSON body, or SSE when `stream` is set."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import StreamingResponse

from avito_ai.api.deps import disconnect_waiter
from avito_ai.api.sse import native_events, sse_response
from avito_ai.engines.base import Engine, GenerationRequest
from avito_ai.schemas.native import (
    GenerationData,
    GenerationMetrics,
    GenerationResponse,
    NativeTokenLogprob,
    NativeTopLogprob,
)
from avito_ai.services.generation import Answer, complete
from avito_ai.services.streaming import open_stream, unless_disconnected


def native_response(result: Answer, request_id: str) -> GenerationResponse:
    t = result.timings
    return GenerationResponse(
        data=GenerationData(
            text=result.text,
            generated_tokens=result.generated_tokens,
            input_tokens=result.input_tokens,
            finish_reason=result.finish_reason,
            logprobs=None
            if result.logprobs is None
            else [
                NativeTokenLogprob(
                    token=t.token,
                    logprob=t.logprob,
                    top_logprobs=[NativeTopLogprob(token=k, logprob=v) for k, v, _ in t.top],
                )
                for t in result.logprobs
            ],
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


async def generate_native(
    request: Request, engine: Engine, generation: GenerationRequest, stream: bool
) -> GenerationResponse | StreamingResponse:
    rid = generation.request_id
    if stream:
        chunks = await unless_disconnected(
            open_stream(engine, generation), disconnect_waiter(request)
        )
        return sse_response(
            native_events(chunks, rid, lambda c: native_response(c, rid).model_dump())
        )
    result = await unless_disconnected(complete(engine, generation), disconnect_waiter(request))
    return native_response(result, rid)
