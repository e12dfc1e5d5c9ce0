"""Form and multipart fields (always strings) → the same typed fields the JSON API uses."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from pydantic import ValidationError

from avito_ai.errors import ValidationFailed
from avito_ai.schemas.sampling import SamplingFields
from avito_ai.services.validation import validation_failed

# field -> (parser, what the value must be)
_NUMBER_FIELDS: dict[str, tuple[type[int] | type[float], str]] = {
    "max_tokens": (int, "an integer"),
    "top_k": (int, "an integer"),
    "seed": (int, "an integer"),
    "temperature": (float, "a number"),
    "top_p": (float, "a number"),
    "repetition_penalty": (float, "a number"),
}
_BOOL_FIELDS = ("stream", "enable_thinking", "ignore_eos")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# Form fields that hold one value; `stop` may repeat (one stop string per field).
_SCALARS = frozenset(
    {
        "prompt", "question", "system", "image", "json_schema", "response_format",
        *_NUMBER_FIELDS, *_BOOL_FIELDS,
    }
)  # fmt: skip


def form_values(items: Iterable[tuple[str, object]]) -> dict[str, str]:
    """The text fields of a form, refusing a one-value field sent twice (which value would
    be meant?). Files and unknown fields pass through untouched."""
    values: dict[str, str] = {}
    seen: set[str] = set()
    for key, value in items:
        if key in seen and key in _SCALARS:
            raise ValidationFailed(f"{key}: send it once", param=key)
        seen.add(key)
        if isinstance(value, str):
            values.setdefault(key, value)
    return values


def _json_field(values: Mapping[str, str], name: str) -> object:
    raw = values.get(name, "").strip()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"{name}: not valid JSON ({exc.msg})", param=name) from None


def _response_format(values: Mapping[str, str]) -> object:
    """`json_schema` (the form's box: a schema) or `response_format` (as in JSON bodies)."""
    schema = _json_field(values, "json_schema")
    if schema is not None:
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    return _json_field(values, "response_format")


def sampling_from_form(values: Mapping[str, str], stops: Sequence[str]) -> SamplingFields:
    data: dict[str, object] = {}
    for name, (parse, kind) in _NUMBER_FIELDS.items():
        raw = values.get(name, "").strip()
        if raw:
            try:
                data[name] = parse(raw)
            except ValueError:
                raise ValidationFailed(f"{name}: must be {kind}", param=name) from None
    for name in _BOOL_FIELDS:
        raw = values.get(name, "").strip().lower()
        if raw not in _TRUE | _FALSE:
            raise ValidationFailed(f"{name}: must be true or false", param=name)
        data[name] = raw in _TRUE
    if values.get("system"):
        data["system"] = values["system"]
    if stops:
        data["stop"] = list(stops)
    response_format = _response_format(values)
    if response_format is not None:
        data["response_format"] = response_format
    try:
        return SamplingFields.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc.errors()) from None
