"""Pydantic's errors become one message that names the field as the client wrote it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from avito_ai.api.openai.protocol import ChatCompletionRequest
from avito_ai.services.validation import validation_failed


def problem(**body: Any) -> tuple[str | None, str]:
    body = {"model": "avibe", "messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    error = validation_failed(info.value.errors())
    return error.param, error.message


def test_the_list_branch_of_a_union_says_what_is_wrong() -> None:
    assert problem(stop=["a", 5]) == ("stop.1", "stop.1: Input should be a valid string")
    param, message = problem(stop=["a", "b", "c", "d", "e"])
    assert param == "stop" and message.startswith("stop: List should have at most 4 items")


def test_a_value_of_neither_type_names_the_field_once_per_branch() -> None:
    param, message = problem(stop=5)
    assert param == "stop"
    assert "valid string" in message and "valid list" in message and "str" not in param


def test_content_parts_are_named_without_pydantic_branch_tags() -> None:
    image = {"type": "image_url", "image_url": {"url": 5}}
    param, _ = problem(messages=[{"role": "user", "content": [image]}])
    assert param == "messages.0.content.0.image_url.url"
    text = {"type": "text", "text": 5}
    param, message = problem(messages=[{"role": "user", "content": [text]}])
    assert param == "messages.0.content.0.text"
    assert message == "messages.0.content.0.text: Input should be a valid string"


def test_malformed_json_and_a_non_object_body() -> None:
    assert validation_failed([{"type": "json_invalid", "loc": ("body", 1), "msg": "x"}]).message
    error = validation_failed([{"type": "dict_type", "loc": ("body",), "msg": "x"}])
    assert error.message == "Request body must be a JSON object" and error.param is None
