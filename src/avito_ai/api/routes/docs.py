"""/docs (Swagger UI) and /redoc from files the service serves itself: they work on a host
without Internet access, under a CSP that allows scripts from the service only (FastAPI's
own pages load their scripts from a CDN and start them with an inline script)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from avito_ai.api.forms.page import TEMPLATES, root_path

router = APIRouter(include_in_schema=False)


def _page(request: Request, template: str) -> HTMLResponse:
    # Behind a proxy that mounts the service under a prefix (root_path), links carry it
    # (the templates' `root` comes from TEMPLATES' context processor).
    context = {
        "title": request.app.title,
        "openapi_url": root_path(request) + str(request.app.openapi_url),
    }
    return TEMPLATES.TemplateResponse(request, template, context)


@router.get("/docs", response_class=HTMLResponse)
async def swagger_ui(request: Request) -> HTMLResponse:
    return _page(request, "docs.html")


@router.get("/redoc", response_class=HTMLResponse)
async def redoc(request: Request) -> HTMLResponse:
    return _page(request, "redoc.html")
