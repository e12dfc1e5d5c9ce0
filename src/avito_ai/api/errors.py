"""The ONE place domain errors become HTTP status codes and bodies.

Native routes and forms answer `{"error", "message", "request_id"}`; `/v1/*` answers the
OpenAI shape `{"error": {"message", "type", "param", "code"}}`. A 500 never shows a stack
trace: the log line with the same request id does.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from avito_ai.errors import (
    AvitoError,
    MethodNotAllowed,
    ModelUnavailable,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    RateLimitUnavailable,
    RequestTimeout,
    Timeout,
    Unauthorized,
    ValidationFailed,
)
from avito_ai.middleware.request_id import request_id_of
from avito_ai.observability.metrics import REJECTIONS
from avito_ai.services.validation import validation_failed

logger = logging.getLogger("avito_ai.errors")

STATUS_BY_CODE: dict[str, int] = {
    "validation_error": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "request_header_fields_too_large": 431,
    "request_timeout": 408,
    "rate_limit_exceeded": 429,
    "internal_error": 500,
    "model_unavailable": 503,
    "overloaded": 503,
    "rate_limit_unavailable": 503,
    "timeout": 504,
    "client_closed_request": 499,  # nginx's convention; only the access log sees it
}

OPENAI_TYPE_BY_CODE: dict[str, str] = {
    "validation_error": "invalid_request_error",
    "unauthorized": "authentication_error",
    "not_found": "not_found_error",
    "method_not_allowed": "invalid_request_error",
    "payload_too_large": "invalid_request_error",
    "request_header_fields_too_large": "invalid_request_error",
    "request_timeout": "invalid_request_error",
    "rate_limit_exceeded": "rate_limit_error",
    "model_unavailable": "service_unavailable_error",
    "overloaded": "service_unavailable_error",
    "rate_limit_unavailable": "service_unavailable_error",
    "timeout": "timeout_error",
    "internal_error": "server_error",
}


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def error_body(
    code: str, message: str, request_id: str, *, openai: bool, param: str | None = None
) -> dict[str, Any]:
    if openai:
        return {
            "error": {
                "message": message,
                "type": OPENAI_TYPE_BY_CODE.get(code, "server_error"),
                "param": param,
                "code": code,
            }
        }
    return {"error": code, "message": message, "request_id": request_id}


def error_headers(error: AvitoError) -> dict[str, str]:
    if isinstance(error, RateLimited | Overloaded | RateLimitUnavailable):
        return {"Retry-After": str(error.retry_after)}
    if isinstance(error, ModelUnavailable) and error.retry_after is not None:
        return {"Retry-After": str(error.retry_after)}
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(error, Timeout):
        # The request already ran for REQUEST_TIMEOUT: the OpenAI SDKs would send it twice
        # more and generate three times. They honour this header.
        return {"x-should-retry": "false"}
    return {}


# Refusals counted in avito_rejections_total (by this reason label).
REJECTION_REASONS: dict[str, str] = {
    "rate_limit_exceeded": "rate_limit",
    "overloaded": "overload",
    "rate_limit_unavailable": "rate_limit_unavailable",
    "validation_error": "validation",
    "payload_too_large": "payload_too_large",
    "request_header_fields_too_large": "headers_too_large",
    "unauthorized": "unauthorized",
    "timeout": "timeout",
    "model_unavailable": "model_unavailable",
}


# The web page's forms: a browser posted them, so their refusals (429, 413, 503, 400...)
# come back as the page with the error in it, not as JSON.
FORM_PATHS = frozenset({"/avibe", "/avision"})

ErrorFamily = Literal["page", "openai", "native"]


def error_family(path: str, method: str) -> ErrorFamily:
    """The shape of an error answer: the page (form posts), OpenAI JSON or native JSON.
    The OpenAPI document (api/openapi.py) documents the same choice."""
    if method == "POST" and path in FORM_PATHS:
        return "page"
    return "openai" if is_openai_path(path) else "native"


def error_response(request: Request, error: AvitoError) -> Response:
    rid = request_id_of(request.scope)
    reason = REJECTION_REASONS.get(error.code)
    if reason is not None:
        REJECTIONS.labels(reason).inc()
    status = STATUS_BY_CODE.get(error.code, 500)
    family = error_family(request.url.path, request.method)
    if family == "page" and status != 500:
        from avito_ai.api.routes.web import error_page  # the page imports this module

        return error_page(request, error)
    headers = {"X-Request-ID": rid, **error_headers(error)}
    body = error_body(error.code, error.message, rid, openai=family == "openai", param=error.param)
    return JSONResponse(body, status_code=status, headers=headers)


def scope_error_response(scope: Scope, error: AvitoError) -> Response:
    """The same mapping for middlewares, which see an ASGI scope instead of a Request."""
    return error_response(Request(scope), error)


async def _avito_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AvitoError)
    return error_response(request, exc)


async def _request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(request, validation_failed(exc.errors()))


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error: AvitoError
    if exc.status_code == 404:
        error = NotFound(f"Not found: {request.method} {request.url.path}")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"Method {request.method} not allowed for {request.url.path}")
    elif exc.status_code == 413:
        error = PayloadTooLarge(str(exc.detail))
    elif exc.status_code == 408:
        error = RequestTimeout(str(exc.detail))
    elif exc.status_code == 401:
        error = Unauthorized(str(exc.detail))
    elif exc.status_code < 500:
        error = ValidationFailed(str(exc.detail))
    else:
        error = AvitoError(str(exc.detail))
    response = error_response(request, error)
    if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


async def _unhandled(request: Request, exc: Exception) -> Response:
    return scope_unhandled_response(request.scope, exc)


def scope_unhandled_response(scope: Scope, exc: Exception) -> Response:
    """A 500 with no trace in the body; the trace goes to the log under the request id."""
    request = Request(scope)
    logger.error(
        "Unhandled error on %s %s",
        request.method,
        request.url.path,
        exc_info=exc,
        extra={"request_id": request_id_of(scope)},
    )
    return error_response(request, AvitoError("Internal server error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AvitoError, _avito_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(Exception, _unhandled)
