"""One server span per request (only added when tracing is on: observability/tracing.py,
so with tracing off a request pays nothing for it).

opentelemetry-instrumentation-asgi's middleware makes the span, continuing the W3C
`traceparent` the request came with, in OpenTelemetry's stable HTTP conventions
(`http.request.method`, `url.path`, `http.response.status_code`, error status on 5xx and
on exceptions). With it in the stack FastAPI's own telemetry stands aside, so there is one
server span whatever FastAPI's version. Its request hook and our response hook add what
only this service knows: the request id, the client's name (never its key), the dialect,
and the route's template (`http.route`, and the span's name `POST /v1/chat/completions`:
bounded, unlike the raw path).
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.trace import Span
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avito_ai.middleware.access_log import route_label
from avito_ai.middleware.auth import client_of
from avito_ai.middleware.request_id import request_id_of
from avito_ai.paths import app_path, error_dialect


def _span_details(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The span's first name: the method alone (the route's template replaces it once the
    router has matched; the raw path would name a span per resource)."""
    return str(scope.get("method", "HTTP")), {}


def _on_request(span: Span, scope: dict[str, Any]) -> None:
    """Known before the app runs: the id (request_id.py is outside) and the dialect."""
    if span.is_recording():
        method = str(scope.get("method", "-"))
        span.set_attributes(
            {
                "avito.request_id": request_id_of(scope),
                "avito.dialect": error_dialect(app_path(scope), method),
            }
        )


class _ResponseTags:
    """Tags the server span when the response starts: by then the client is identified
    (middleware/auth.py, further in) and the route matched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        span = trace.get_current_span()  # the server span the instrumentation made current
        if scope["type"] != "http" or not span.is_recording():
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                client = client_of(scope)
                route = route_label(scope)
                attributes: dict[str, str] = {"avito.client": client.name if client else "-"}
                if route != "<unmatched>":
                    attributes["http.route"] = route
                    span.update_name(f"{scope['method']} {route}")
                span.set_attributes(attributes)
            await send(message)

        await self.app(scope, receive, tagged)


def traced(app: ASGIApp) -> ASGIApp:
    """The instrumentation around `app`, with our hooks (for `app.add_middleware`)."""
    # The stable HTTP conventions, as FastAPI's own spans use; an operator's choice
    # (`http/dup` for both) is kept. Read once, when the first instrumentation is built.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    return OpenTelemetryMiddleware(
        _ResponseTags(app),
        default_span_details=_span_details,
        server_request_hook=_on_request,
        # No span per ASGI message: a streamed answer would get one per chunk.
        exclude_spans=["receive", "send"],
    )
