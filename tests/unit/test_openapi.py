"""The OpenAPI document states the service's real answers and its configured limits."""

from __future__ import annotations

import re

from avito_ai.api.openapi import NOT_BLANK
from avito_ai.app import create_app
from tests.conftest import engine_set, isolated_settings


def document(**settings: object) -> dict:
    return create_app(isolated_settings(**settings), engine_set()).openapi()


def test_not_blank_is_exactly_what_strip_keeps() -> None:
    for code in range(0x110000):
        char = chr(code)
        assert (re.fullmatch(NOT_BLANK, char) is None) == char.isspace(), hex(code)


def test_no_422_and_refusals_documented_in_each_family() -> None:
    paths = document()["paths"]
    for item in paths.values():
        for operation in item.values():
            assert "422" not in operation["responses"]
    chat = paths["/v1/chat/completions"]["post"]["responses"]
    for code in ("400", "401", "404", "408", "413", "429", "503", "504"):
        schema = chat[code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/OpenAIErrorResponse"}, code
    native = paths["/api/v1/text/generate"]["post"]["responses"]
    assert native["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    form = paths["/avibe"]["post"]["responses"]
    assert set(form) >= {"200", "400", "413", "429", "503"}
    assert "text/html" in form["503"]["content"]
    # Free reads are not limited, so they document no 429.
    assert "429" not in paths["/"]["get"]["responses"]
    assert "429" in paths["/api/health"]["get"]["responses"]


def test_limits_from_settings_are_schema_bounds() -> None:
    schemas = document(max_prompt_length=123, max_tokens_avibe=77, max_tokens_avision=55)[
        "components"
    ]["schemas"]
    text = schemas["TextGenerateRequest"]
    assert "prompt" in text["required"]
    assert text["properties"]["prompt"]["maxLength"] == 123
    assert text["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 77
    chat = schemas["ChatCompletionRequest"]["properties"]["max_tokens"]
    assert chat["anyOf"][0]["maximum"] == 77
    assert "55 for avision" in chat["description"]
