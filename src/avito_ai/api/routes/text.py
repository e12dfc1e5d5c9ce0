"""Native JSON API for A-Vibe: POST /api/v1/text/generate."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from avito_ai.api.deps import RequestIdDep, SettingsDep, StateDep
from avito_ai.api.native import generate_native
from avito_ai.api.openapi import errors
from avito_ai.schemas.native import GenerationResponse, TextGenerateRequest
from avito_ai.services.constraints import check_supported, constraint_from
from avito_ai.services.generation import ready_engine, text_request

router = APIRouter(prefix="/api/v1", tags=["native API"])


@router.post(
    "/text/generate",
    summary="Generate text with A-Vibe",
    response_model=GenerationResponse,
    responses={**errors(400, 503, 504), 200: {"content": {"text/event-stream": {}}}},
    description="""Seed example:

```bash
curl -X POST http://localhost:8085/api/v1/text/generate \\
  -H "Content-Type: application/json" \\
  -d '{"prompt": "Привет, подскажи рецепт борща", "max_tokens": 256, "temperature": 0.7}'
```

With `"stream": true` the answer is Server-Sent Events: `event: delta` with `{"text": ...}`
per piece of text, then `event: done` with the complete response body (or `event: error`).
""",
)
async def generate_text(
    body: TextGenerateRequest,
    request: Request,
    state: StateDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> GenerationResponse | StreamingResponse:
    constraint = await constraint_from(body.response_format)
    generation = text_request(body.prompt, body, settings, request_id, constraint)
    engine = await ready_engine(state, "avibe")
    check_supported(engine, constraint, "response_format")
    return await generate_native(request, engine, generation, body.stream)
