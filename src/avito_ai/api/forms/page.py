"""The web page, rendered on the server: the two forms with their answers or errors.
Jinja2 autoescaping escapes input and model output.

When JavaScript runs, static/app.js turns the same page into a streaming chat and image
analysis over the OpenAI API; the page hands it its limits and wording in a JSON block
(data, not script: the CSP allows no inline script).

Behind a proxy that mounts the service under a prefix (root_path), every link, asset, form
action and script request of the pages carries it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from avito_ai.api.errors import ErrorKind, page_titles, retry_after
from avito_ai.engines.registry import serves_checkpoints
from avito_ai.errors import AvitoError
from avito_ai.middleware.request_id import request_id_of
from avito_ai.services.images import FORMATS
from avito_ai.services.state import ServiceState


def root_path(request: Request) -> str:
    """The prefix a proxy mounts the service under (ASGI root_path: uvicorn --root-path),
    without its trailing slash; "" at the root. Every URL a page names into the service
    starts with it: the templates' `root`, and <html data-root> for the scripts."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _root(request: Request) -> dict[str, Any]:
    return {"root": root_path(request)}


# Every page gets `root` (a context processor: no route can forget it).
TEMPLATES = Jinja2Templates(
    directory=Path(__file__).resolve().parents[2] / "web" / "templates",
    context_processors=[_root],
)


def pretty_json(text: str) -> str:
    """An answer given under a JSON schema, indented for reading (as it came, if not JSON)."""
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, indent=2)
    except ValueError:
        return text


TEMPLATES.env.filters["pretty_json"] = pretty_json
DEFAULT_QUESTION = "Что изображено на фото?"

IMAGE_TYPES = [f"image/{name.lower()}" for name in FORMATS]


def avision_notice() -> str:
    """The page's notice when A-Vision is not configured, in the page's language (the
    health API's reason says the same in English), for what this install can serve: the
    light install serves an OpenVINO IR only, so a hub id would not help there."""
    if serves_checkpoints():
        where = "папку модели или её идентификатор в локальном кэше Hugging Face"
    else:
        where = "папку модели в формате OpenVINO IR (её готовит make export-avision)"
    return f"A-Vision не настроена: укажите в AVISION_MODEL {where}."


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
        "errorTitles": page_titles(),
    }
    return Markup(json.dumps(config, ensure_ascii=False).replace("<", "\\u003c"))


def page(
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
        "avision_notice": avision_notice(),
        "avibe_answer": None,
        "avision_answer": None,
        "error": None,
        **extra,
    }
    return TEMPLATES.TemplateResponse(request, "index.html", context, status_code=status)


def error_page(request: Request, exc: AvitoError, kind: ErrorKind, **extra: Any) -> HTMLResponse:
    """The page with the error where the answer would be (api/errors.py calls this for a
    form's POST): for a form's own refusal (`extra` echoes its fields), and for one made
    before the form was read (429, 413, 401, 408, 503: nothing to echo)."""
    state: ServiceState = request.app.state.avito
    view = {
        "code": exc.code,
        "title": kind.title,
        "message": exc.message,
        "retry_after": retry_after(exc),
    }
    return page(request, state, request_id_of(request.scope), kind.status, error=view, **extra)
