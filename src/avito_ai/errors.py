"""Domain errors. No HTTP here: `api/errors.py` is the one place that maps them to responses."""

from __future__ import annotations


class AvitoError(Exception):
    """Base of every error the service reports to a client on purpose."""

    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ValidationFailed(AvitoError):
    code = "validation_error"


class RequestTimeout(AvitoError):
    """The client stopped sending its request body (a slow or stalled upload)."""

    code = "request_timeout"


class PayloadTooLarge(AvitoError):
    code = "payload_too_large"


class HeadersTooLarge(AvitoError):
    """The request head is over MAX_HEADER_BYTES or has more than MAX_HEADERS fields."""

    code = "request_header_fields_too_large"


class Unauthorized(AvitoError):
    code = "unauthorized"


class CrossSiteForm(AvitoError):
    """A form posted from another site's page (api/forms/origin.py)."""

    code = "cross_site_form"


class NotFound(AvitoError):
    code = "not_found"


class MethodNotAllowed(AvitoError):
    code = "method_not_allowed"


class RateLimited(AvitoError):
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int = 60) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(AvitoError):
    """The queue is full: the client should retry later."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitUnavailable(AvitoError):
    """The rate-limit storage (Redis) is unreachable and RATE_LIMIT_FAIL_MODE=closed."""

    code = "rate_limit_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelUnavailable(AvitoError):
    """The model for this role is not configured, still loading, failed, or shutting down.
    `retry_after`: when it is expected back (an engine process restarting), if known."""

    code = "model_unavailable"

    def __init__(
        self, message: str, *, param: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


class Timeout(AvitoError):
    code = "timeout"


class Conflict(AvitoError):
    """The object is not in a state that allows this (cancelling a finished batch)."""

    code = "conflict"


class BatchStoreUnavailable(ModelUnavailable):
    """The Batch API's database is unreachable (online generation is unaffected)."""

    code = "batch_store_unavailable"


class ShuttingDown(ModelUnavailable):
    pass


class ClientDisconnected(AvitoError):
    """The client went away before the answer was ready; nobody reads this response."""

    code = "client_closed_request"
