"""One preparation for every dialect (services/pipeline.py): the same request gets the same
error at whichever door it comes in, each naming the field as that dialect wrote it."""

from __future__ import annotations

from typing import Any

import pytest

from avito_ai.engines.base import NotConfiguredEngine
from tests.conftest import engine_set, isolated_settings

from .conftest import running

BAD = {"type": "objekt"}  # not a JSON Schema
MESSAGE = [{"role": "user", "content": "hi"}]
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}

# (path, body, the field a bad schema is named by)
DOORS: list[tuple[str, dict[str, Any], str]] = [
    (
        "/v1/chat/completions",
        {
            "model": "avibe",
            "messages": MESSAGE,
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": BAD}},
        },
        "response_format.json_schema.schema",
    ),
    (
        "/v1/completions",
        {
            "model": "avibe",
            "prompt": "hi",
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": BAD}},
        },
        "response_format.json_schema.schema",
    ),
    (
        "/v1/responses",
        {
            "model": "avibe",
            "input": "hi",
            "text": {"format": {"type": "json_schema", "name": "a", "schema": BAD}},
        },
        "text.format.schema",
    ),
    (
        "/v1/messages",
        {
            "model": "avibe",
            "max_tokens": 8,
            "messages": MESSAGE,
            "output_config": {"format": {"type": "json_schema", "schema": BAD}},
        },
        "output_config.format.schema",
    ),
    (
        "/api/v1/text/generate",
        {
            "prompt": "hi",
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": BAD}},
        },
        "response_format.json_schema.schema",
    ),
]


@pytest.mark.parametrize(("path", "body", "param"), DOORS)
async def test_a_bad_schema_is_refused_naming_the_dialects_own_field(
    path: str, body: dict[str, Any], param: str
) -> None:
    async with running(isolated_settings(rate_limit_per_minute=1000)) as (_, client):
        r = await client.post(path, json=body)
    assert r.status_code == 400, r.text
    body = r.json()
    if path == "/v1/messages":  # Anthropic's shape: the field begins the message
        assert body["error"]["message"].startswith(f"{param}: Not a JSON Schema"), body
    elif path.startswith("/api/"):  # the native shape: no field, the message says why
        assert body["error"] == "validation_error" and "JSON Schema" in body["message"], body
    else:
        assert body["error"]["param"] == param and "JSON Schema" in body["error"]["message"]


@pytest.mark.parametrize(("path", "body", "param"), DOORS)
async def test_a_model_that_is_down_answers_503_before_its_schema_is_looked_at(
    path: str, body: dict[str, Any], param: str
) -> None:
    """Engine readiness comes first at every door: a schema is never compiled (nor an
    image decoded, nor a prompt checked) for a model that cannot answer."""
    engines = engine_set(avibe=NotConfiguredEngine("avibe", "Set AVIBE_MODEL"))
    settings = isolated_settings(rate_limit_per_minute=1000)
    async with running(settings, engines) as (_, client):
        r = await client.post(path, json={**body, "prompt": ""} if "prompt" in body else body)
        form = await client.post(
            "/avibe", data={"prompt": "", "json_schema": '{"type": "objekt"}'}, headers=SAME_ORIGIN
        )
    assert r.status_code == 503, r.text
    assert form.status_code == 503, form.text
