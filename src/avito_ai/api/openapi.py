"""The OpenAPI document, made to say what the service really answers.

FastAPI's generated document promises a 422 the service never sends (validation errors are
400), knows nothing of the middlewares' refusals (401, 408, 413, 429, 503) and cannot see
limits that come from settings. This fills all three in, once per app: the error statuses
each operation can answer, in the shape of its family (native JSON, OpenAI JSON, or the
page for the forms), and the configured prompt and max_tokens bounds as schema bounds.
`make test` runs schemathesis (all checks) against a live server to hold it to that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from avito_ai.api.errors import ErrorResponse, status_description
from avito_ai.config import Settings
from avito_ai.paths import error_dialect, is_limited, needs_key


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON Schema with its `$defs` written in place, for an operation's
    `openapi_extra`: a `#/$defs/...` reference there would point at the document's root,
    where nothing is (schemathesis: "unresolvable reference")."""
    schema = model.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


OPENAI_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "OpenAIErrorResponse",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "string"},
            },
        }
    },
}
ANTHROPIC_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "AnthropicErrorResponse",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
        "request_id": {"type": "string"},
    },
}
# "Not only whitespace" for a JSON Schema pattern: one character that str.strip() keeps.
# Spelled out, since `\S` means three different sets in Python, JavaScript and Rust regex.
NOT_BLANK = (
    "[^\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000]"
)
NATIVE_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
OPENAI_ERROR_REF = {"$ref": "#/components/schemas/OpenAIErrorResponse"}
ANTHROPIC_ERROR_REF = {"$ref": "#/components/schemas/AnthropicErrorResponse"}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the error statuses its own handler can answer."""
    return {code: {"description": status_description(code)} for code in codes}


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = true_document(document, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def true_document(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["OpenAIErrorResponse"] = OPENAI_ERROR_SCHEMA
    schemas["AnthropicErrorResponse"] = ANTHROPIC_ERROR_SCHEMA
    schemas["ErrorResponse"] = ErrorResponse.model_json_schema()
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            _document_refusals(path, method.upper(), operation)
    _settings_bounds(schemas, document.get("paths", {}), settings)
    return document


def _document_refusals(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)
    codes: set[int] = {int(code) for code in responses if code.isdigit() and int(code) >= 400}
    if is_limited(path, method):
        codes |= {429, 503}
    if needs_key(path, method):
        codes.add(401)
    if "requestBody" in operation or operation.get("parameters"):
        codes.add(400)
    if "requestBody" in operation:
        codes |= {408, 413}
    for code in sorted(codes):
        description = status_description(code)
        entry = responses.setdefault(str(code), {"description": description})
        if entry.get("description") != description:
            continue  # a route's own documented answer (readiness's 503 body)
        entry["content"] = _error_content(path, method)


def _error_content(path: str, method: str) -> dict[str, Any]:
    dialect = error_dialect(path, method)
    if dialect == "page":
        return {"text/html": {"schema": {"type": "string"}}}
    ref = {"openai": OPENAI_ERROR_REF, "anthropic": ANTHROPIC_ERROR_REF}.get(
        dialect, NATIVE_ERROR_REF
    )
    return {"application/json": {"schema": ref}}


def _settings_bounds(schemas: dict[str, Any], paths: dict[str, Any], settings: Settings) -> None:
    """The limits from settings, where the request schemas can state them."""
    prompt = {
        "type": "string",
        "minLength": 1,
        "maxLength": settings.max_prompt_length,
        "pattern": NOT_BLANK,
    }
    text_cap = settings.max_tokens_avibe
    any_cap = max(settings.max_tokens_avibe, settings.max_tokens_avision)
    _edit(schemas, "TextGenerateRequest", "prompt", lambda _: dict(prompt), required=True)
    _edit(schemas, "TextGenerateRequest", "max_tokens", _maximum(text_cap))
    _edit(schemas, "TextGenerateRequest", "system", _max_length(settings.max_prompt_length))
    _edit(schemas, "CompletionRequest", "max_tokens", _maximum(text_cap))
    _edit(schemas, "CompletionRequest", "max_completion_tokens", _maximum(text_cap))
    _edit(
        schemas,
        "CompletionRequest",
        "prompt",
        lambda _: {
            "anyOf": [
                dict(prompt),
                {"type": "array", "items": dict(prompt), "minItems": 1, "maxItems": 1},
            ]
        },
    )
    for name in ("max_tokens", "max_completion_tokens"):
        _edit(schemas, "ChatCompletionRequest", name, _maximum(any_cap), note=_caps(settings))
    _edit(schemas, "ResponsesRequest", "max_output_tokens", _maximum(any_cap), note=_caps(settings))
    _edit(schemas, "MessagesRequest", "max_tokens", _maximum(any_cap), note=_caps(settings))
    # Bodies documented inline (multipart and forms).
    inline_caps = {
        "/api/v1/image/analyze": settings.max_tokens_avision,
        "/avibe": text_cap,
        "/avision": settings.max_tokens_avision,
    }
    for path, cap in inline_caps.items():
        operation = paths.get(path, {}).get("post", {})
        for media in operation.get("requestBody", {}).get("content", {}).values():
            properties = media.get("schema", {}).get("properties", {})
            if "max_tokens" in properties:
                _maximum(cap)(properties["max_tokens"])
            for name in ("prompt", "question", "system"):
                if name in properties:
                    _max_length(settings.max_prompt_length)(properties[name])
            if path == "/avibe":
                properties["prompt"] = dict(prompt)


def _caps(settings: Settings) -> str:
    return (
        f"at most {settings.max_tokens_avibe} for avibe (MAX_TOKENS_AVIBE) and "
        f"{settings.max_tokens_avision} for avision (MAX_TOKENS_AVISION)"
    )


def _maximum(value: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda field: _on_value(field, "maximum", value)


def _max_length(value: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda field: _on_value(field, "maxLength", value)


def _on_value(field: dict[str, Any], key: str, value: int) -> dict[str, Any]:
    """Set `key` on the non-null branch of an optional field (`anyOf: [X, null]`)."""
    branches = field.get("anyOf", [field])
    for branch in branches:
        if branch.get("type") != "null":
            branch[key] = value
    return field


def _edit(
    schemas: dict[str, Any],
    model: str,
    name: str,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    required: bool = False,
    note: str | None = None,
) -> None:
    schema = schemas.get(model)
    if schema is None or name not in schema.get("properties", {}):
        return
    field = change(schema["properties"][name])
    if note:
        field["description"] = note
    schema["properties"][name] = field
    if required and name not in schema.setdefault("required", []):
        schema["required"].append(name)
