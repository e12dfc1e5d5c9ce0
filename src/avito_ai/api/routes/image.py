"""Native API for A-Vision: POST /api/v1/image/analyze (multipart or JSON with base64)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from avito_ai.api.deps import RequestIdDep, SettingsDep, StateDep
from avito_ai.api.native import generate_native
from avito_ai.api.openapi import errors
from avito_ai.engines.base import ImagePart, TextPart
from avito_ai.errors import ValidationFailed
from avito_ai.schemas.native import GenerationResponse, ImageAnalyzeJSON
from avito_ai.services.constraints import check_supported, constraint_from
from avito_ai.services.forms import form_values, sampling_from_form
from avito_ai.services.generation import (
    chat_request,
    question_or_default,
    ready_engine,
    validate_prompt,
)
from avito_ai.services.images import decode_base64_image, decode_image, off_loop
from avito_ai.services.validation import validation_failed

router = APIRouter(prefix="/api/v1", tags=["native API"])

DEFAULT_IMAGE_PROMPT = "Describe this image."

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
                "application/json": {"schema": ImageAnalyzeJSON.model_json_schema()},
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
    request: Request, state: StateDep, settings: SettingsDep, request_id: RequestIdDep
) -> GenerationResponse | StreamingResponse:
    engine = await ready_engine(state, "avision")  # 503 before any decoding work
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ValidationFailed(
                "image file is required (multipart field 'image')", param="image"
            )
        values = form_values(form.multi_items())
        fields = sampling_from_form(values, [s for s in form.getlist("stop") if isinstance(s, str)])
        prompt: str | None = values.get("prompt")
        image = await off_loop(decode_image, await upload.read(), settings.max_image_size_mb)
    elif "json" in content_type:
        try:
            body = ImageAnalyzeJSON.model_validate_json(await request.body())
        except ValidationError as exc:
            raise validation_failed(exc.errors()) from None
        fields, prompt = body, body.prompt
        image = await off_loop(decode_base64_image, body.image, settings.max_image_size_mb)
    else:
        raise ValidationFailed("Send multipart/form-data with an 'image' file, or JSON")
    text = validate_prompt(question_or_default(prompt, DEFAULT_IMAGE_PROMPT), settings)
    constraint = await constraint_from(fields.response_format)
    check_supported(engine, constraint, "response_format")
    generation = chat_request(
        request_id=request_id,
        role="avision",
        user_content=[ImagePart(image), TextPart(text)],
        fields=fields,
        settings=settings,
        constraint=constraint,
    )
    return await generate_native(request, engine, generation, fields.stream)
