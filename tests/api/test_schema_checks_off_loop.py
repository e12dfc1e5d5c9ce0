"""A schema is walked off the event loop, once: a 60 kB schema took 0.75 s of loop time
per request (twice on Messages), and four clients looping on count_tokens took liveness
from 0.05 to 3.9 s."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from avito_ai.services import constraints

pytestmark = pytest.mark.asyncio

# About 62 kB: 380 properties, each with a description and bounds.
BIG = {
    "type": "object",
    "properties": {
        f"field_{i}": {"type": "integer", "description": "x" * 100, "minimum": 0}
        for i in range(380)
    },
}

SMALL = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}}


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Each schema walk: which check, and whether it ran on the event loop's thread."""
    seen: list[tuple[str, bool]] = []
    loop_thread = threading.current_thread()
    for name in ("_enforceable_problem", "_draft_problem"):
        real = getattr(constraints, name)

        def spy(schema: Any, real: Any = real, name: str = name) -> str | None:
            seen.append((name, threading.current_thread() is loop_thread))
            return real(schema)  # type: ignore[no-any-return]

        spy.__name__ = real.__name__
        monkeypatch.setattr(constraints, name, spy)
    constraints._SCHEMA_VERDICTS.clear()
    return seen


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/messages/count_tokens",
            {
                "model": "avibe",
                "messages": [{"role": "user", "content": "hi"}],
                "output_config": {"format": {"type": "json_schema", "schema": BIG}},
            },
        ),
        (
            "/v1/chat/completions",
            {
                "model": "avibe",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                # (a small one: the tools' text counts against MAX_PROMPT_TOKENS)
                "tools": [{"type": "function", "function": {"name": "f", "parameters": SMALL}}],
                "tool_choice": "required",
            },
        ),
    ],
)
async def test_a_big_schema_is_walked_off_the_loop_once_however_often_it_comes(
    client: httpx.AsyncClient, walks: list[tuple[str, bool]], path: str, body: dict[str, Any]
) -> None:
    for _ in range(3):
        r = await client.post(path, json=body)
        assert r.status_code == 200, r.text
    assert walks, "the schema was never checked"
    assert not any(on_loop for _, on_loop in walks)
    assert len(walks) == len(set(walks))  # each check once, not once a request


async def test_a_bad_schema_is_refused_from_the_cache_too(
    client: httpx.AsyncClient, walks: list[tuple[str, bool]]
) -> None:
    bad = {"type": "object", "properties": {"a": {"type": "nope"}}}
    body = {
        "model": "avibe",
        "messages": [{"role": "user", "content": "hi"}],
        "output_config": {"format": {"type": "json_schema", "schema": bad}},
    }
    for _ in range(2):
        r = await client.post("/v1/messages/count_tokens", json=body)
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert "output_config.format.schema" in r.text or "Not a JSON Schema" in r.text
    assert len(walks) == 1
