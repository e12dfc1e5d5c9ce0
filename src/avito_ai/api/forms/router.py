"""The web page's routes: GET / with two forms; POST /avibe and /avision render answers
server-side, so the page works without JavaScript (a refusal: the page with the error in
it, from api/errors.py); a post from another site's page is refused first (origin.py).
GET /dashboard: live charts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from avito_ai.api.deps import CallDep, StateDep
from avito_ai.api.errors import error_response
from avito_ai.api.form_fields import form_values
from avito_ai.api.forms.origin import check_form_origin
from avito_ai.api.forms.page import TEMPLATES, page
from avito_ai.api.forms.serving import FormServing
from avito_ai.api.openapi import errors
from avito_ai.errors import AvitoError

router = APIRouter(tags=["web page"])


def _form_body(media_type: str, required: str, properties: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` documenting a form the route reads itself."""
    schema = {"type": "object", "required": [required], "properties": properties}
    return {"requestBody": {"required": True, "content": {media_type: {"schema": schema}}}}


@router.get("/", response_class=HTMLResponse, summary="Web page with the A-Vibe and A-Vision forms")
async def index(request: Request, state: StateDep, call: CallDep) -> HTMLResponse:
    return page(request, state, call.request_id)


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
    responses=errors(400, 403, 503, 504),
    openapi_extra=_form_body(
        "application/x-www-form-urlencoded",
        "prompt",
        {"prompt": {"type": "string"}, **_SAMPLING_FORM_FIELDS},
    ),
)
async def avibe_form(request: Request, state: StateDep, call: CallDep) -> Response:
    try:
        check_form_origin(request)
    except AvitoError as exc:
        return error_response(request, exc)
    form = await request.form()
    values = form_values(form.multi_items())
    prompt = values.get("prompt")
    try:
        answer = await FormServing(state).avibe(values, call)
    except AvitoError as exc:
        return error_response(request, exc, prompt=prompt, avibe_form=values)
    return page(
        request, state, call.request_id, prompt=prompt, avibe_form=values, avibe_answer=answer
    )


@router.post(
    "/avision",
    response_class=HTMLResponse,
    summary="A-Vision form (multipart: image, question)",
    responses=errors(400, 403, 503, 504),
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
async def avision_form(request: Request, state: StateDep, call: CallDep) -> Response:
    serving = FormServing(state)
    try:
        check_form_origin(request)
        await serving.vision_engine()  # 503 before the upload is read
    except AvitoError as exc:
        return error_response(request, exc)
    form = await request.form()
    values = form_values(form.multi_items())
    question = serving.question(values)
    try:
        answer = await serving.avision(form, values, call)
    except AvitoError as exc:
        return error_response(request, exc, question=question, avision_form=values)
    return page(
        request,
        state,
        call.request_id,
        question=question,
        avision_form=values,
        avision_answer=answer,
    )
