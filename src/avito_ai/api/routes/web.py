"""The web page: GET / with two forms; POST /avibe and /avision render answers server-side,
so the page works without JavaScript. Jinja2 autoescaping escapes input and model output.

When JavaScript runs, static/app.js turns the same page into a streaming chat and image
analysis over the OpenAI API; the page hands it its limits and wording in a JSON block
(data, not script: the CSP allows no inline script). GET /dashboard: live charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from starlette.datastructures import UploadFile

from avito_ai.api.deps import RequestIdDep, SettingsDep, StateDep, disconnect_waiter
from avito_ai.api.errors import STATUS_BY_CODE, error_headers
from avito_ai.api.openapi import errors
from avito_ai.engines.base import ImagePart, TextPart
from avito_ai.errors import (
    AvitoError,
    Overloaded,
    RateLimited,
    RateLimitUnavailable,
    ValidationFailed,
)
from avito_ai.middleware.request_id import request_id_of
from avito_ai.services import generation as gen
from avito_ai.services.constraints import check_supported, constraint_from
from avito_ai.services.forms import form_values, sampling_from_form
from avito_ai.services.images import FORMATS, decode_image, off_loop
from avito_ai.services.state import ServiceState
from avito_ai.services.streaming import unless_disconnected

TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parents[2] / "web" / "templates")


def pretty_json(text: str) -> str:
    """An answer given under a JSON schema, indented for reading (as it came, if not JSON)."""
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, indent=2)
    except ValueError:
        return text


TEMPLATES.env.filters["pretty_json"] = pretty_json
DEFAULT_QUESTION = "Что изображено на фото?"

router = APIRouter(tags=["web page"])

# What a person reads for each error code, in the forms and in the page's scripts alike.
ERROR_TITLES: dict[str, str] = {
    "rate_limit_exceeded": "Слишком много запросов",
    "payload_too_large": "Слишком большой запрос",
    "request_header_fields_too_large": "Слишком большие заголовки запроса",
    "model_unavailable": "Модель недоступна",
    "overloaded": "Сервер перегружен",
    "rate_limit_unavailable": "Проверка лимитов недоступна",
    "validation_error": "Проверьте запрос",
    "unauthorized": "Нужен API-ключ",
    "timeout": "Время ожидания истекло",
    "request_timeout": "Запрос пришёл не целиком",
    "not_found": "Не найдено",
    "method_not_allowed": "Метод не поддерживается",
    "internal_error": "Внутренняя ошибка",
}
IMAGE_TYPES = [f"image/{name.lower()}" for name in FORMATS]


def _page_config(state: ServiceState) -> Markup:
    """The limits and wording app.js needs, as JSON inside <script type="application/json">
    (`<` escaped so the data cannot close the element)."""
    s = state.settings
    config = {
        "maxImageBytes": int(s.max_image_size_mb * 1024 * 1024),
        "maxImageMb": f"{s.max_image_size_mb:g}",
        "imageTypes": IMAGE_TYPES,
        "maxPromptLength": s.max_prompt_length,
        "maxTokensAvibe": s.max_tokens_avibe,
        "maxTokensAvision": s.max_tokens_avision,
        "defaultQuestion": DEFAULT_QUESTION,
        "errorTitles": ERROR_TITLES,
    }
    return Markup(json.dumps(config, ensure_ascii=False).replace("<", "\\u003c"))


def _page(
    request: Request, state: ServiceState, request_id: str, status: int = 200, **extra: Any
) -> HTMLResponse:
    s = state.settings
    context: dict[str, Any] = {
        "models": state.models(),
        "request_id": request_id,
        "max_prompt_length": s.max_prompt_length,
        "max_tokens_avibe": s.max_tokens_avibe,
        "max_tokens_avision": s.max_tokens_avision,
        "default_temperature": s.temperature,
        "max_image_size_mb": f"{s.max_image_size_mb:g}",
        "image_types": ",".join(IMAGE_TYPES),
        "page_config": _page_config(state),
        "avibe_form": {},
        "avision_form": {},
        "avibe_answer": None,
        "avision_answer": None,
        "error": None,
        **extra,
    }
    return TEMPLATES.TemplateResponse(request, "index.html", context, status_code=status)


def _error_view(exc: AvitoError) -> dict[str, Any]:
    retry = (
        exc.retry_after
        if isinstance(exc, RateLimited | Overloaded | RateLimitUnavailable)
        else None
    )
    return {
        "code": exc.code,
        "title": ERROR_TITLES.get(exc.code, "Ошибка"),
        "message": exc.message,
        "retry_after": retry,
    }


def error_page(request: Request, exc: AvitoError, **extra: Any) -> HTMLResponse:
    """The page with the error where the answer would be: for a form's own refusal (`extra`
    echoes its fields), and for one made before the form was read (429, 413, 401, 408, 503,
    from api/errors.py: nothing to echo)."""
    state: ServiceState = request.app.state.avito
    response = _page(
        request,
        state,
        request_id_of(request.scope),
        STATUS_BY_CODE.get(exc.code, 500),
        error=_error_view(exc),
        **extra,
    )
    response.headers.update(error_headers(exc))
    return response


def _form_body(media_type: str, required: str, properties: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` documenting a form the route reads itself."""
    schema = {"type": "object", "required": [required], "properties": properties}
    return {"requestBody": {"required": True, "content": {media_type: {"schema": schema}}}}


@router.get("/", response_class=HTMLResponse, summary="Web page with the A-Vibe and A-Vision forms")
async def index(request: Request, state: StateDep, request_id: RequestIdDep) -> HTMLResponse:
    return _page(request, state, request_id)


@router.get("/dashboard", response_class=HTMLResponse, summary="Live dashboard (charts)")
async def dashboard(request: Request, state: StateDep) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "dashboard.html", {"models": state.models()})


_SAMPLING_FORM_FIELDS: dict[str, Any] = {
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
}


@router.post(
    "/avibe",
    response_class=HTMLResponse,
    summary="A-Vibe form (form data: prompt)",
    responses=errors(400, 503, 504),
    openapi_extra=_form_body(
        "application/x-www-form-urlencoded",
        "prompt",
        {"prompt": {"type": "string"}, **_SAMPLING_FORM_FIELDS},
    ),
)
async def avibe_form(
    request: Request, state: StateDep, settings: SettingsDep, request_id: RequestIdDep
) -> HTMLResponse:
    form = await request.form()
    values = form_values(form.multi_items())
    prompt = values.get("prompt")
    try:
        fields = sampling_from_form(values, [])
        constraint = await constraint_from(fields.response_format, "json_schema")
        generation = gen.text_request(prompt, fields, settings, request_id, constraint)
        engine = await gen.ready_engine(state, "avibe")
        check_supported(engine, constraint, "json_schema")
        answer = await unless_disconnected(
            gen.complete(engine, generation), disconnect_waiter(request)
        )
    except AvitoError as exc:
        return error_page(request, exc, prompt=prompt, avibe_form=values)
    return _page(request, state, request_id, prompt=prompt, avibe_form=values, avibe_answer=answer)


@router.post(
    "/avision",
    response_class=HTMLResponse,
    summary="A-Vision form (multipart: image, question)",
    responses=errors(400, 503, 504),
    openapi_extra=_form_body(
        "multipart/form-data",
        "image",
        {
            "image": {"type": "string", "format": "binary"},
            "question": {"type": "string"},
            **_SAMPLING_FORM_FIELDS,
        },
    ),
)
async def avision_form(
    request: Request, state: StateDep, settings: SettingsDep, request_id: RequestIdDep
) -> HTMLResponse:
    try:  # 503 before reading a body of up to MAX_IMAGE_SIZE_MB for a model that is absent
        engine = await gen.ready_engine(state, "avision")
    except AvitoError as exc:
        return error_page(request, exc)
    form = await request.form()
    values = form_values(form.multi_items())
    question = gen.question_or_default(
        values.get("question") or values.get("prompt"), DEFAULT_QUESTION
    )
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ValidationFailed("Choose an image file to analyze", param="image")
        image = await off_loop(decode_image, await upload.read(), settings.max_image_size_mb)
        text = gen.validate_prompt(question, settings, field="question")
        fields = sampling_from_form(values, [])
        constraint = await constraint_from(fields.response_format, "json_schema")
        check_supported(engine, constraint, "json_schema")
        generation = gen.chat_request(
            request_id=request_id,
            role="avision",
            user_content=[ImagePart(image), TextPart(text)],
            fields=fields,
            settings=settings,
            constraint=constraint,
        )
        answer = await unless_disconnected(
            gen.complete(engine, generation), disconnect_waiter(request)
        )
    except AvitoError as exc:
        return error_page(request, exc, question=question, avision_form=values)
    return _page(
        request, state, request_id, question=question, avision_form=values, avision_answer=answer
    )
