"""What each path of the service is: the one table every middleware, the error handlers
and the OpenAPI builder read.

A path's policy says whether it needs an API key (when keys are on), whether requests to
it count against the rate limits, which dialect its errors speak (native JSON, OpenAI
JSON, Anthropic JSON, or the web page for a form post) and what its body may carry. Exact paths are
looked up first, then prefixes (the longest that matches), then the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# "writes": only methods that are not GET or HEAD (a form's POST; reading the page is free).
When = Literal["always", "writes", "never"]
Dialect = Literal["native", "openai", "anthropic", "page"]
# json: MAX_BODY_SIZE_MB; upload: room for one MAX_IMAGE_SIZE_MB image as base64 besides;
# json_or_upload: the upload cap for a body that carries an image, the JSON cap for text.
# file: a Batch API upload (BATCH_MAX_FILE_BYTES).
Body = Literal["json", "upload", "json_or_upload", "file"]
READS = ("GET", "HEAD")


@dataclass(frozen=True)
class PathPolicy:
    key: When = "never"  # an API key is needed (when API_KEYS / API_KEYS_FILE are set)
    limited: When = "always"  # counted in RATE_LIMIT_PER_MINUTE / _PER_HOUR
    dialect: Dialect = "native"  # the shape of its errors ("page": on a form's POST only)
    body: Body = "json"


DEFAULT = PathPolicy()
FREE = PathPolicy(limited="never")  # probes, scrapes, docs and static files
FREE_READS = PathPolicy(limited="writes")  # pages and metrics views: reading costs no model
FORM = PathPolicy(key="writes", dialect="page")
NATIVE_API = PathPolicy(key="always")
OPENAI_API = PathPolicy(key="always", dialect="openai")
ANTHROPIC_API = PathPolicy(key="always", dialect="anthropic", body="json_or_upload")
# The Batch API: uploads and creating or cancelling a batch count; polling is free.
BATCH_API = PathPolicy(key="always", limited="writes", dialect="openai")

EXACT: dict[str, PathPolicy] = {
    # Probes must never fail because of a limit. (GET /api/health is a status page too,
    # and counted, as it always was.)
    "/api/health/live": FREE,
    "/api/health/ready": FREE,
    "/api/health/models": FREE,
    "/metrics": FREE,
    "/docs": FREE,
    "/redoc": FREE,
    "/openapi.json": FREE,
    "/": FREE_READS,
    "/dashboard": FREE_READS,
    "/api/metrics": FREE_READS,
    "/api/metrics/dashboard": FREE_READS,
    "/favicon.ico": FREE_READS,
    "/api/metrics/reset": NATIVE_API,
    "/avibe": FORM,
    "/avision": PathPolicy(key="writes", dialect="page", body="upload"),
    "/api/v1/image/analyze": PathPolicy(key="always", body="upload"),
    "/v1": OPENAI_API,
    "/v1/chat/completions": PathPolicy(key="always", dialect="openai", body="json_or_upload"),
    "/v1/responses": PathPolicy(key="always", dialect="openai", body="json_or_upload"),
    "/v1/messages": ANTHROPIC_API,
    "/v1/messages/count_tokens": ANTHROPIC_API,
    "/v1/files": PathPolicy(key="always", limited="writes", dialect="openai", body="file"),
    "/v1/batches": BATCH_API,
}
PREFIXES: dict[str, PathPolicy] = {
    "/static/": FREE,
    "/docs/": FREE,
    "/api/v1/": NATIVE_API,
    "/v1/": OPENAI_API,
    "/v1/files/": BATCH_API,
    "/v1/batches/": BATCH_API,
}
_BY_LENGTH = sorted(PREFIXES.items(), key=lambda item: -len(item[0]))


def app_path(scope: Mapping[str, Any]) -> str:
    """The path as this table knows it: without the prefix a proxy mounts the service
    under (scope["root_path"]; scope["path"] carries it, as in ASGI 3)."""
    path = str(scope["path"])
    root = str(scope.get("root_path", "")).rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :] or "/"
    return path


def policy(path: str) -> PathPolicy:
    found = EXACT.get(path)
    if found is not None:
        return found
    for prefix, value in _BY_LENGTH:
        if path.startswith(prefix):
            return value
    return DEFAULT


def _applies(when: When, method: str) -> bool:
    return when == "always" or (when == "writes" and method not in READS)


def needs_key(path: str, method: str) -> bool:
    """A request that must present a valid key (when keys are configured). A CORS
    preflight never does: browsers send it without credentials."""
    return method != "OPTIONS" and _applies(policy(path).key, method)


def is_limited(path: str, method: str) -> bool:
    """A request counted against its client's rate limits."""
    return method != "OPTIONS" and _applies(policy(path).limited, method)


def error_dialect(path: str, method: str) -> Dialect:
    """The shape of an error answer: the page (a form's POST: a browser sent it), the
    OpenAI JSON or the native JSON."""
    dialect = policy(path).dialect
    if dialect == "page":
        return "page" if method == "POST" else "native"
    return dialect
