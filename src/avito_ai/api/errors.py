"""The error vocabulary, and the ONE place domain errors become responses.

`KINDS` is the table: one row per error code, one column per thing derived from it (the
status, each dialect's error type, the reason counted in `avito_rejections_total`, the
title the page shows, the OpenAPI description). A new error is a row; a new dialect, a
column and a body builder below.

Native routes answer `{"error", "message", "request_id"}`; `/v1/*` answers the OpenAI shape
`{"error": {"message", "type", "param", "code"}}`, `/v1/messages*` Anthropic's
`{"type": "error", "error": {"type", "message"}, "request_id"}`; a form's POST answers the
page with the error in it (rendered by the function the app registers:
`install_error_handlers`). A 500 never shows a stack trace: the log line with the same
request id does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
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
from avito_ai.paths import Dialect, app_path, error_dialect
from avito_ai.services.validation import validation_failed

logger = logging.getLogger("avito_ai.errors")


@dataclass(frozen=True)
class ErrorKind:
    code: str
    status: int
    openai_type: str  # OpenAI's error.type (chat, completions, responses)
    anthropic_type: str  # Anthropic's error.type (messages)
    rejection: str | None  # the reason label in avito_rejections_total; None: not counted
    title: str  # what a person reads on the page (and the console's scripts)
    description: str  # the OpenAPI document's words for it


KINDS: dict[str, ErrorKind] = {
    kind.code: kind
    for kind in (
        # code, status; OpenAI type, Anthropic type, rejection reason; page title; OpenAPI
        ErrorKind(
            "validation_error", 400,
            "invalid_request_error", "invalid_request_error", "validation",
            "Проверьте запрос",
            "the request is invalid; the message names the field",
        ),
        ErrorKind(
            "unauthorized", 401,
            "authentication_error", "authentication_error", "unauthorized",
            "Нужен API-ключ",
            "API keys are on and none valid was sent",
        ),
        ErrorKind(
            "cross_site_form", 403,
            "permission_error", "permission_error", "cross_site_form",
            "Форма отправлена с другого сайта",
            "a form posted from another site's page (Origin or Referer not the service's)",
        ),
        ErrorKind(
            "not_found", 404,
            "not_found_error", "not_found_error", None,
            "Не найдено",
            "no such model, file or batch (another key's included)",
        ),
        ErrorKind(
            "method_not_allowed", 405,
            "invalid_request_error", "invalid_request_error", None,
            "Метод не поддерживается",
            "the path does not take this method",
        ),
        ErrorKind(
            "conflict", 409,
            "invalid_request_error", "invalid_request_error", None,
            "Действие недоступно",
            "the object's state does not allow it (cancelling a finished batch)",
        ),
        ErrorKind(
            "request_timeout", 408,
            "invalid_request_error", "invalid_request_error", None,
            "Запрос пришёл не целиком",
            "the body did not arrive within BODY_READ_TIMEOUT",
        ),
        ErrorKind(
            "payload_too_large", 413,
            "invalid_request_error", "request_too_large", "payload_too_large",
            "Слишком большой запрос",
            "the body is over its size limit",
        ),
        ErrorKind(
            "request_header_fields_too_large", 431,
            "invalid_request_error", "invalid_request_error", "headers_too_large",
            "Слишком большие заголовки запроса",
            "over MAX_HEADER_BYTES or MAX_HEADERS",
        ),
        ErrorKind(
            "rate_limit_exceeded", 429,
            "rate_limit_error", "rate_limit_error", "rate_limit",
            "Слишком много запросов",
            "a rate limit or token budget, with Retry-After",
        ),
        ErrorKind(
            "client_closed_request", 499,
            "invalid_request_error", "invalid_request_error", None,
            "Запрос отменён",
            "the client left (nginx's convention; only the access log sees it)",
        ),
        ErrorKind(
            "internal_error", 500,
            "server_error", "api_error", None,
            "Внутренняя ошибка",
            "a fault of the service; the log line with the request id has the trace",
        ),
        ErrorKind(
            "model_unavailable", 503,
            "service_unavailable_error", "api_error", "model_unavailable",
            "Модель недоступна",
            "not configured, loading or failed",
        ),
        ErrorKind(
            "overloaded", 503,
            "service_unavailable_error", "overloaded_error", "overload",
            "Сервер перегружен",
            "the queue is full, with Retry-After",
        ),
        ErrorKind(
            "batch_store_unavailable", 503,
            "service_unavailable_error", "api_error", None,
            "Пакетная обработка недоступна",
            "the batches' database is unreachable (BATCH_DATABASE_URL); generation is not",
        ),
        ErrorKind(
            "rate_limit_unavailable", 503,
            "service_unavailable_error", "api_error", "rate_limit_unavailable",
            "Проверка лимитов недоступна",
            "the limits' storage is down and RATE_LIMIT_FAIL_MODE=closed",
        ),
        ErrorKind(
            "timeout", 504,
            "timeout_error", "timeout_error", "timeout",
            "Время ожидания истекло",
            "no answer within REQUEST_TIMEOUT",
        ),
    )
}  # fmt: skip
INTERNAL = KINDS["internal_error"]


def kind_of(code: str) -> ErrorKind:
    return KINDS.get(code, INTERNAL)


def status_description(status: int) -> str:
    """The OpenAPI description of a status: each kind that answers it, code: words."""
    return "; ".join(f"{k.code}: {k.description}" for k in KINDS.values() if k.status == status)


def page_titles() -> dict[str, str]:
    return {kind.code: kind.title for kind in KINDS.values()}


def refused(error: AvitoError) -> ErrorKind:
    """Count a refusal (once, wherever it is answered: a response, a page, a stream's
    error event) and return its kind."""
    kind = kind_of(error.code)
    if kind.rejection is not None:
        REJECTIONS.labels(kind.rejection).inc()
    return kind


class ErrorResponse(BaseModel):
    """The native error body (the OpenAI one: api/openapi.py's OPENAI_ERROR_SCHEMA)."""

    error: str
    message: str
    request_id: str


def error_body(
    code: str, message: str, request_id: str, *, dialect: Dialect, param: str | None = None
) -> dict[str, Any]:
    if dialect == "openai":
        return {
            "error": {
                "message": message,
                "type": kind_of(code).openai_type,
                "param": param,
                "code": code,
            }
        }
    if dialect == "anthropic":
        text = f"{param}: {message}" if param and not message.startswith(param) else message
        error = {"type": kind_of(code).anthropic_type, "message": text}
        return {"type": "error", "error": error, "request_id": request_id}
    return {"error": code, "message": message, "request_id": request_id}


def stream_failure(exc: BaseException, request_id: str, dialect: Dialect) -> dict[str, Any]:
    """The error body of a failure after a stream began (its 200 is already sent)."""
    if not isinstance(exc, AvitoError):
        logger.error("Stream failed", exc_info=exc, extra={"request_id": request_id})
        exc = AvitoError("Internal server error")
    refused(exc)
    return error_body(exc.code, exc.message, request_id, dialect=dialect)


def retry_after(error: AvitoError) -> int | None:
    if isinstance(error, RateLimited | Overloaded | RateLimitUnavailable | ModelUnavailable):
        return error.retry_after
    return None


def error_headers(error: AvitoError) -> dict[str, str]:
    after = retry_after(error)
    if after is not None:
        return {"Retry-After": str(after)}
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(error, Timeout):
        # The request already ran for REQUEST_TIMEOUT: the OpenAI SDKs would send it twice
        # more and generate three times. They honour this header.
        return {"x-should-retry": "false"}
    return {}


# Renders the page with the error in it: (request, error, status, form fields to echo).
PageRenderer = Callable[..., Response]


def error_response(request: Request, error: AvitoError, **page_fields: Any) -> Response:
    """The answer to a refusal in the request's dialect. `page_fields`: what a form's own
    refusal echoes back into the page (its fields as sent)."""
    rid = request_id_of(request.scope)
    kind = refused(error)
    dialect = error_dialect(app_path(request.scope), request.method)
    render: PageRenderer | None = getattr(request.app.state, "error_page", None)
    if dialect == "page" and kind.status != 500 and render is not None:
        page = render(request, error, kind, **page_fields)
        page.headers.update(error_headers(error))
        return page
    headers = {"X-Request-ID": rid, **error_headers(error)}
    if dialect == "anthropic":
        headers["request-id"] = rid  # where Anthropic's SDK reads it (error.request_id)
    body = error_body(error.code, error.message, rid, dialect=dialect, param=error.param)
    return JSONResponse(body, status_code=kind.status, headers=headers)


def scope_error_response(scope: Scope, error: AvitoError) -> Response:
    """The same mapping for middlewares, which see an ASGI scope instead of a Request."""
    return error_response(Request(scope), error)


async def _avito_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AvitoError)
    return error_response(request, exc)


async def _request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(request, validation_failed(exc.errors()))


_BY_STATUS: dict[int, Callable[[str], AvitoError]] = {
    408: RequestTimeout,
    413: PayloadTooLarge,
    401: Unauthorized,
}


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error: AvitoError
    if exc.status_code == 404:
        error = NotFound(f"Not found: {request.method} {request.url.path}")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"Method {request.method} not allowed for {request.url.path}")
    elif exc.status_code in _BY_STATUS:
        error = _BY_STATUS[exc.status_code](str(exc.detail))
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


def install_error_handlers(app: FastAPI, *, error_page: PageRenderer | None = None) -> None:
    """Every error through `error_response`; `error_page` renders a form's refusal."""
    app.state.error_page = error_page
    app.add_exception_handler(AvitoError, _avito_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(Exception, _unhandled)
