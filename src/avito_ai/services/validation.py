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
    """The field as a client wrote it: `messages.0.content`, without where FastAPI found it
    (`body`) and without pydantic's union branch tags (`stop.str`, `stop.list[str]`)."""
    return ".".join(str(p) for p in loc if p not in _SOURCES and not _is_branch_tag(p))


def _is_branch_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in _SCALAR_TAGS or "[" in part or "-" in part)


_SCALAR_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "none", "list", "dict"})


def _relevant(errors: Sequence[Any]) -> list[Any]:
    """For a union field (several errors, one per branch), drop the branches whose only
    complaint is the value's type: the branch that matched the type says what is wrong."""
    by_field: dict[str, list[Any]] = {}
    for err in errors:
        by_field.setdefault(field_name(err.get("loc", ())), []).append(err)
    kept: list[Any] = []
    for group in by_field.values():
        specific = [e for e in group if not str(e.get("type", "")).endswith("_type")]
        kept += specific if len(group) > 1 and specific else group
    return kept


def validation_failed(errors: Sequence[Any]) -> ValidationFailed:
    """The first three problems, `field: message` each; `param` names the first field."""
    errors = _relevant(errors)
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
