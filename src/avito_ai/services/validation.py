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
    """The field as a client wrote it (`messages.0.content.1.image_url.url`): without where
    FastAPI found it (`body`) and without the tags pydantic adds for union branches: type
    names (`str`, `list[str]`, `function-after[...]`), model class names (`ImageURL`) and a
    discriminator value repeated before the field of the same name (`text.text`)."""
    parts: list[str] = []
    for part in loc:
        if part in _SOURCES or _is_branch_tag(part):
            continue
        name = str(part)
        if parts and parts[-1] == name and isinstance(part, str):
            continue  # `content.0.text.text`: the tag, then the field
        parts.append(name)
    return ".".join(parts)


def _is_branch_tag(part: Any) -> bool:
    if not isinstance(part, str):
        return False
    return part in _SCALAR_TAGS or "[" in part or "-" in part or part[:1].isupper()


_SCALAR_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "none", "list", "dict"})


def _relevant(errors: Sequence[Any]) -> list[Any]:
    """Drop the union branches that only say "wrong type" where another branch got as far
    or further into the value: that branch says what is really wrong (`stop: ["a", 5]` is
    a list whose item 1 is not a string, not "a value that should be a string")."""
    names = [field_name(err.get("loc", ())) for err in errors]

    def only_type(i: int) -> bool:
        return str(errors[i].get("type", "")).endswith("_type")

    def superseded(i: int) -> bool:
        if not only_type(i):
            return False
        return any(
            names[j].startswith(names[i] + ".") or (names[j] == names[i] and not only_type(j))
            for j in range(len(errors))
            if j != i
        )

    return [err for i, err in enumerate(errors) if not superseded(i)]


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
        text = str(err.get("msg")).removeprefix("Value error, ")
        messages.append(f"{name}: {text}" if name else text)
    return ValidationFailed("; ".join(messages), param=field_name(first.get("loc", ())) or None)
