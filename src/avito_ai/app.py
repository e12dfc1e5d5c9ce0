"""Assembly only: settings → engines → app. Tests pass their own engines (e.g. the fake)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from avito_ai import __version__
from avito_ai.api.errors import install_error_handlers
from avito_ai.api.routes import health, text
from avito_ai.config import Settings
from avito_ai.engines.base import Engine, Role
from avito_ai.engines.registry import build_engines
from avito_ai.lifespan import ServiceState, lifespan
from avito_ai.middleware.access_log import AccessLogMiddleware
from avito_ai.middleware.request_id import RequestIdMiddleware

DESCRIPTION = """
Serves **A-Vibe** (text generation) and **A-Vision** (image understanding).

Every response carries `X-Request-ID` (send your own to trace a call) and `X-Response-Time`.
Errors answer `{"error": code, "message": ..., "request_id": ...}`.
"""


def create_app(settings: Settings, engines: dict[Role, Engine] | None = None) -> FastAPI:
    state = ServiceState(settings=settings, engines=engines or build_engines(settings))
    app = FastAPI(
        title="Avito AI API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.avito = state
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(text.router)

    # Added last = outermost. Order inside out: CORS, access log, request id.
    origins = settings.cors_origins
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_credentials="*" not in origins,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["X-Request-ID", "X-Response-Time", "Retry-After"],
    )
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app
