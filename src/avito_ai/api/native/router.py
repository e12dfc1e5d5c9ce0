"""The native API's routes: POST /api/v1/text/generate (A-Vibe) and
POST /api/v1/image/analyze (A-Vision, multipart or JSON with base64). Thin: the serving
layer answers; the route only picks a JSON body or an event stream."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from avito_ai.api.deps import CallDep, StateDep
from avito_ai.api.native.protocol import GenerationResponse, ImageAnalyzeJSON, TextGenerateRequest
from avito_ai.api.native.serving import DEFAULT_IMAGE_PROMPT, NativeAnswer, NativeServing
from avito_ai.api.openapi import errors, inline_schema
from avito_ai.api.sse import sse_response

router = APIRouter(prefix="/api/v1", tags=["native API"])


def _respond(answer: NativeAnswer) -> GenerationResponse | StreamingResponse:
    return answer if isinstance(answer, GenerationResponse) else sse_response(answer)


@router.post(
    "/text/generate",
    summary="Generate text with A-Vibe",
    response_model=GenerationResponse,
    responses={**errors(400, 503, 504), 200: {"content": {"text/event-stream": {}}}},
    description="""The original specification's example:

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
    body: TextGenerateRequest, state: StateDep, call: CallDep
) -> GenerationResponse | StreamingResponse:
    return _respond(await NativeServing(state).text(body, call))


_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "JPEG, PNG, WEBP or GIF"},
        "prompt": {"type": "string", "description": f"question (default: {DEFAULT_IMAGE_PROMPT})"},
        "max_tokens": {"type": "integer"},
        "temperature": {"type": "number"},
        "top_p": {"type": "number"},
        "top_k": {"type": "integer"},
        "stop": {"type": "array", "items": {"type": "string"}},
        "seed": {"type": "integer"},
        "system": {"type": "string"},
        "stream": {"type": "boolean"},
        "json_schema": {"type": "string", "description": "a JSON Schema the answer matches"},
    },
}


@router.post(
    "/image/analyze",
    summary="Analyze an image with A-Vision",
    response_model=GenerationResponse,
    responses={**errors(400, 503, 504), 200: {"content": {"text/event-stream": {}}}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
                "application/json": {"schema": inline_schema(ImageAnalyzeJSON)},
            },
        }
    },
    description="""Multipart upload:

```bash
curl -X POST http://localhost:8085/api/v1/image/analyze \\
  -F "image=@photo.jpg" -F "prompt=Что изображено на фото?"
```

or JSON with the image as base64 or a `data:` URI:
`{"image": "data:image/jpeg;base64,...", "prompt": "..."}`. Same response shape (and
`stream` option) as `/api/v1/text/generate`.""",
)
async def analyze_image(
    request: Request, state: StateDep, call: CallDep
) -> GenerationResponse | StreamingResponse:
    return _respond(await NativeServing(state).image(request, call))
