"""One server span per request (only added when tracing is on: observability/tracing.py),
tagged with the request id, the client's name (never its key) and the dialect.

FastAPI's own telemetry (0.16x on) makes the server span, continuing the W3C `traceparent`
the request came with: this middleware tags it. Without it (an older FastAPI) this
middleware makes the span itself, named by the route's template, with the status."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avito_ai.middleware.access_log import route_label
from avito_ai.middleware.auth import client_of
from avito_ai.middleware.request_id import request_id_of
from avito_ai.observability.tracing import parent, tracer
from avito_ai.paths import app_path, error_dialect

PROPAGATED = (b"traceparent", b"tracestate", b"baggage")


class TracingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "-"))
        current = trace.get_current_span()
        if current.is_recording():
            # FastAPI's own telemetry (0.16x on) made the server span: it gets our attributes.
            await self._tagged(current, scope, receive, send, own=False)
            return
        incoming = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", ())
            if k in PROPAGATED
        }
        span = tracer().start_span(
            method,
            context=parent(incoming),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": str(scope.get("path", ""))},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self._tagged(span, scope, receive, send, own=True)
        finally:
            span.end()
            otel_context.detach(token)

    async def _tagged(
        self, span: Span, scope: Scope, receive: Receive, send: Send, *, own: bool
    ) -> None:
        method = str(scope.get("method", "-"))
        status = 500  # what the client gets if the app raises before answering

        def tag() -> None:
            client = client_of(scope)
            span.set_attributes(
                {
                    "avito.request_id": request_id_of(scope),
                    "avito.client": client.name if client is not None else "-",
                    "avito.dialect": error_dialect(app_path(scope), method),
                }
            )

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                tag()  # (FastAPI's span ends with the body, before this returns)
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except BaseException as exc:
            if own:
                span.record_exception(exc)
            raise
        finally:
            if own:
                route = route_label(scope)
                span.update_name(f"{method} {route}" if route != "<unmatched>" else method)
                span.set_attributes({"http.route": route, "http.response.status_code": status})
                if status >= 500:
                    span.set_status(StatusCode.ERROR)
