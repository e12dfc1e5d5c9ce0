"""Pydantic's list of problems → one `ValidationFailed` whose message names the field.

The one translation for every front door: JSON bodies FastAPI validated, JSON bodies a
route validates itself (image analysis), and form fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from avito_ai.errors import ValidationFailed

# Where FastAPI says a value came from; not part of the field's name for a client.
_SOURCES = ("body", "query", "path", "form", "header")


def field_name(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc if p not in _SOURCES)


def validation_failed(errors: Sequence[Any]) -> ValidationFailed:
    """The first three problems, `field: message` each; `param` names the first field."""
    if not errors:
        return ValidationFailed("Invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = str(first.get("ctx", {}).get("error", "")).strip()
        return ValidationFailed("Malformed JSON body" + (f": {detail}" if detail else ""))
    if first.get("type") == "model_attributes_type" or (
        first.get("type") == "dict_type" and field_name(first.get("loc", ())) == ""
    ):
        return ValidationFailed("Request body must be a JSON object")
    messages = []
    for err in errors[:3]:
        name = field_name(err.get("loc", ()))
        messages.append(f"{name}: {err.get('msg')}" if name else str(err.get("msg")))
    return ValidationFailed("; ".join(messages), param=field_name(first.get("loc", ())) or None)
