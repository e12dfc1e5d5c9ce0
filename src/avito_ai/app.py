"""Assembly only: settings → engines → app. Tests pass their own engines (e.g. the fake)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from avito_ai import __version__
from avito_ai.api.anthropic import router as anthropic
from avito_ai.api.batches import router as batch_api
from avito_ai.api.errors import (
    install_error_handlers,
    scope_error_response,
    scope_unhandled_response,
)
from avito_ai.api.forms import page as form_page
from avito_ai.api.forms import router as forms
from avito_ai.api.native import router as native
from avito_ai.api.openai import router as openai
from avito_ai.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from avito_ai.api.openapi import install_openapi
from avito_ai.api.probes import ProbeFastPath
from avito_ai.api.responses import router as responses
from avito_ai.api.responses.protocol import ResponsesRequest
from avito_ai.api.routes import docs, health, metrics
from avito_ai.batches import lifecycle as batches
from avito_ai.batches.settings import BatchSettings, load_batch_settings
from avito_ai.config import Settings
from avito_ai.engines.base import Engine, Role
from avito_ai.engines.registry import build_engines
from avito_ai.lifespan import lifespan
from avito_ai.middleware.access_log import AccessLogMiddleware
from avito_ai.middleware.auth import AuthRefusalMiddleware, ClientMiddleware
from avito_ai.middleware.body_limit import BodyLimitMiddleware
from avito_ai.middleware.catch_all import CatchAllMiddleware
from avito_ai.middleware.head import HeadAsGetMiddleware
from avito_ai.middleware.header_limit import HeaderLimitMiddleware
from avito_ai.middleware.rate_limit import RateLimitMiddleware
from avito_ai.middleware.request_id import RequestIdMiddleware
from avito_ai.middleware.security_headers import SecurityHeadersMiddleware
from avito_ai.middleware.tracing import traced
from avito_ai.observability import tracing
from avito_ai.paths import policy
from avito_ai.services.state import ServiceState

DESCRIPTION = """
Serves **A-Vibe** (text generation) and **A-Vision** (image understanding).

Every response carries `X-Request-ID` (send your own to trace a call) and `X-Response-Time`.
Errors answer `{"error": code, "message": ..., "request_id": ...}`.
"""


STATIC_DIR = Path(__file__).resolve().parent / "web" / "static"


def body_limits(settings: Settings, file_limit: int = 0) -> Callable[[str], int]:
    """Bytes a request body may have on a path (paths.py says which carry images): JSON
    1 MB (MAX_BODY_SIZE_MB), image routes room for one MAX_IMAGE_SIZE_MB image as base64
    plus the other fields, a Batch API upload BATCH_MAX_FILE_BYTES plus its form."""
    json_limit = int(settings.max_body_size_mb * 1024 * 1024)
    upload_limit = int(settings.max_image_size_mb * 1024 * 1024 * 4 / 3) + json_limit

    def limit_for(path: str) -> int:
        body = policy(path).body
        if body == "file":
            return file_limit + 64 * 1024
        return json_limit if body == "json" else upload_limit

    return limit_for


def text_limits(settings: Settings) -> Callable[[str], int | None]:
    """Where a text-only JSON body is common beside images (OpenAI chat): such a body gets
    the JSON cap (None: the path's own limit only)."""
    json_limit = int(settings.max_body_size_mb * 1024 * 1024)
    return lambda path: json_limit if policy(path).body == "json_or_upload" else None


# Each Batch API endpoint's online request model: a batch's lines are validated with them.
BATCH_MODELS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/responses": ResponsesRequest,
}


def create_app(
    settings: Settings,
    engines: dict[Role, Engine] | None = None,
    batch_settings: BatchSettings | None = None,
) -> FastAPI:
    state = ServiceState(settings=settings, engines=engines or build_engines(settings.engines))
    batch_settings = batch_settings or load_batch_settings()
    app = FastAPI(
        title="Avito AI API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served by api/routes/docs.py from vendored files, not from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.avito = state
    install_error_handlers(app, error_page=form_page.error_page)
    install_openapi(app, settings)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(native.router)
    app.include_router(openai.router)
    app.include_router(responses.router)
    app.include_router(anthropic.router)
    app.include_router(forms.router)
    app.include_router(batch_api.router)
    batches.install(app, batch_settings, models=BATCH_MODELS, policies=settings.api_key_policies())
    app.include_router(docs.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Added last = outermost. Inside out: the probes' shortcut (api/probes.py), body limit,
    # the 401 for a refused key, rate limit, who the client is (and its API key), CORS, security
    # headers, access log + HTTP metrics, request id — so every response (401, 413 and 429
    # included) has the id, CORS and security headers, an access line and a metric; a
    # request with a wrong key counts against its address's limit before it is refused.
    app.add_middleware(ProbeFastPath, state=state, routes=health.router.routes)
    app.add_middleware(CatchAllMiddleware, on_error=scope_unhandled_response)
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=body_limits(settings, batch_settings.max_file_bytes),
        text_limit_for=text_limits(settings),
        read_timeout=settings.body_read_timeout,
    )
    app.add_middleware(AuthRefusalMiddleware, error_responder=scope_error_response)
    app.add_middleware(
        RateLimitMiddleware,
        per_minute=settings.rate_limit_per_minute,
        per_hour=settings.rate_limit_per_hour,
        storage_uri=settings.rate_limit_storage_uri,
        fail_mode=settings.rate_limit_fail_mode,
        error_responder=scope_error_response,
    )
    app.add_middleware(
        ClientMiddleware,
        policies=settings.api_key_policies(),
        ipv6_prefix=settings.rate_limit_ipv6_prefix,
    )
    # A head the server flagged too large (http_limits.py): 431, before keys and limits.
    app.add_middleware(HeaderLimitMiddleware, error_responder=scope_error_response)
    origins = settings.cors_origins
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_credentials="*" not in origins,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["X-Request-ID", "X-Response-Time", "Retry-After"],
    )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(AccessLogMiddleware)
    if tracing.configured():  # (off: not even a no-op span per request)
        app.add_middleware(traced)
    app.add_middleware(RequestIdMiddleware)
    return app
