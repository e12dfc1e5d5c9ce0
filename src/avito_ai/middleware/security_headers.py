"""Security headers: nosniff everywhere; frame and content-security policy on HTML pages."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avito_ai.paths import app_path

# The page uses no inline script or style, so a strict policy holds (blob: images are the
# preview of an image chosen for A-Vision, shown before it is uploaded). /docs and /redoc run
# vendored Swagger UI and ReDoc from the service too (no CDN, no inline script); both set
# inline styles at run time, and ReDoc starts a web worker from a blob: URL.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; worker-src 'self' blob:; connect-src 'self'; font-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = app_path(scope)
        docs = path in ("/docs", "/redoc") or path.startswith("/docs/")

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("X-Frame-Options", "DENY")
                    # same-origin: nothing leaves for other sites, and the page's own form
                    # posts carry its Origin (no-referrer made it "null": api/forms/origin.py)
                    headers.setdefault("Referrer-Policy", "same-origin")
                    headers.setdefault("Content-Security-Policy", DOCS_CSP if docs else PAGE_CSP)
            await send(message)

        await self.app(scope, receive, add_headers)
