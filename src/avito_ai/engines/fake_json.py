"""The fake engine's answers under a JSON constraint: the simplest instance of the schema,
the same every time, written as the compact grammars write JSON (`", "` and `": "`)."""

from __future__ import annotations

import json
from typing import Any

FORMAT_EXAMPLES = {
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "date-time": "2026-01-01T00:00:00Z",
    "duration": "P1D",
    "email": "user@example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/",
    "uri-reference": "/",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "hostname": "example.com",
}


def example_json(schema: dict[str, Any]) -> str:
    return json.dumps(_example(schema, schema, 0), ensure_ascii=False, separators=(", ", ": "))


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part] if part else node
    return dict(node)


def _example(schema: Any, root: dict[str, Any], depth: int) -> Any:
    if not isinstance(schema, dict) or depth > 64:
        return None
    if "$ref" in schema:
        return _example(_resolve(schema["$ref"], root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _example(schema[key][0], root, depth + 1)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {
            name: _example(properties.get(name, {}), root, depth + 1)
            for name in schema.get("required", [])
        }
    if kind == "array":
        items = list(schema.get("prefixItems", []))
        while len(items) < schema.get("minItems", 0):
            items.append(schema.get("items", {}))
        return [_example(item, root, depth + 1) for item in items]
    if kind == "string":
        text = FORMAT_EXAMPLES.get(schema.get("format", ""), "")
        return text or "x" * schema.get("minLength", 0)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        if "maximum" in schema and low > schema["maximum"]:
            low = schema["maximum"]
        step = schema.get("multipleOf", 1)
        value = -(-low // step) * step if step else low
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    return None
