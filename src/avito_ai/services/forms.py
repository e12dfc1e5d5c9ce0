"""Form and multipart fields (always strings) → the same typed fields the JSON API uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import ValidationError

from avito_ai.errors import ValidationFailed
from avito_ai.schemas.native import SamplingFields

_INT_FIELDS = ("max_tokens", "top_k", "seed")
_FLOAT_FIELDS = ("temperature", "top_p", "repetition_penalty")
_BOOL_FIELDS = ("stream", "enable_thinking")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def sampling_from_form(values: Mapping[str, str], stops: Sequence[str]) -> SamplingFields:
    data: dict[str, object] = {}
    for name in _INT_FIELDS:
        raw = values.get(name, "").strip()
        if raw:
            try:
                data[name] = int(raw)
            except ValueError:
                raise ValidationFailed(f"{name}: must be an integer", param=name) from None
    for name in _FLOAT_FIELDS:
        raw = values.get(name, "").strip()
        if raw:
            try:
                data[name] = float(raw)
            except ValueError:
                raise ValidationFailed(f"{name}: must be a number", param=name) from None
    for name in _BOOL_FIELDS:
        raw = values.get(name, "").strip().lower()
        if raw not in _TRUE | _FALSE:
            raise ValidationFailed(f"{name}: must be true or false", param=name)
        data[name] = raw in _TRUE
    if values.get("system"):
        data["system"] = values["system"]
    if stops:
        data["stop"] = list(stops)
    try:
        return SamplingFields.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ValidationFailed(f"{field}: {err['msg']}", param=field) from None
