"""The Responses API against a running server on the embedded model (OpenVINO), through
the official `openai` SDK: a two-step tool loop (a required call is certain by
constrained decoding, auto is the model's choice), structured output, and thinking split
into its own item. The 135M model is weak: these prove code paths, not answers.

One server for all: the embedded GGUF with a chat template that opens `<think>` in the
prompt when thinking is on (as reasoning templates do), so whatever the model says then is
reasoning, and with thinking off it is SmolLM2's plain turns.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from tests.ggufs import with_chat_template
from tests.servers import ServerProcess, dev_server, openai_client, serving

pytestmark = pytest.mark.integration

OPENS_WHEN_THINKING = (
    "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor -%}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking %}\n<think>\n{% else %}\n{% endif %}"
    "{%- endif %}"
)
OPEN = {"RATE_LIMIT_PER_MINUTE": "100000", "RATE_LIMIT_PER_HOUR": "100000"}
PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Rome", "Oslo"]},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": PARAMETERS,
    "strict": True,
}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("responses")
    model = with_chat_template(tmp / "thinking.gguf", OPENS_WHEN_THINKING)
    with serving(dev_server({**OPEN, "AVIBE_MODEL": str(model)}, tmp / "server.log"), 120) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai_client(server)


def test_a_required_call_then_its_result_then_auto(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="avibe",
        input=ASK,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_output_tokens=60,
    )
    assert first.status == "completed", first.output
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and all(c.name == "get_weather" for c in calls)
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), PARAMETERS)
    results = [
        {"type": "function_call_output", "call_id": c.call_id, "output": '{"temperature": 21}'}
        for c in calls
    ]
    second = client.responses.create(
        model="avibe",
        input=[*ASK, *first.output, *results],  # type: ignore[list-item]
        tools=[WEATHER],
        tool_choice="auto",
        temperature=0,
        max_output_tokens=40,
    )
    assert second.status in ("completed", "incomplete")
    assert second.output and {i.type for i in second.output} <= {"message", "function_call"}
    assert second.usage is not None and second.usage.input_tokens > first.usage.input_tokens  # type: ignore[union-attr]


def test_a_required_call_streamed(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="avibe",
        input=ASK,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_output_tokens=60,
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-1] == "response.completed"
    [call, *_] = final.output
    assert call.type == "function_call"
    jsonschema.validate(json.loads(call.arguments), PARAMETERS)


def test_auto_streamed_ends_with_the_whole_response(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model="avibe",
            input=ASK,
            tools=[WEATHER],
            temperature=0,
            max_output_tokens=30,
            stream=True,
        )
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == last.response.output_text  # type: ignore[union-attr]


def test_text_format_json_schema_is_valid_json(client: openai.OpenAI) -> None:
    for stream in (False, True):
        asked: dict[str, Any] = {
            "model": "avibe",
            "input": "Weather in Rome, as JSON.",
            "text": {"format": {"type": "json_schema", "name": "w", "schema": PARAMETERS}},
            "temperature": 0,
            "max_output_tokens": 60,
        }
        if stream:
            with client.responses.stream(**asked) as s:
                done = s.get_final_response()
        else:
            done = client.responses.create(**asked)
        assert done.status == "completed"
        jsonschema.validate(json.loads(done.output_text), PARAMETERS)


def test_thinking_is_its_own_item_apart_from_the_message(client: openai.OpenAI) -> None:
    asked: dict[str, Any] = {
        "model": "avibe",
        "input": "What is the capital of France?",
        "temperature": 0,
        "max_output_tokens": 16,
    }
    thought = client.responses.create(**asked, reasoning={"effort": "medium"})
    first = thought.output[0]
    assert first.type == "reasoning" and first.content and first.content[0].text.strip()
    assert "<think>" not in thought.output_text
    assert first.content[0].text not in thought.output_text or not thought.output_text
    with client.responses.stream(**asked, reasoning={"effort": "medium"}) as stream:
        deltas = [e.delta for e in stream if e.type == "response.reasoning_text.delta"]
        streamed = stream.get_final_response()
    reasoning = streamed.output[0]
    assert reasoning.type == "reasoning" and reasoning.content
    assert "".join(deltas) == reasoning.content[0].text == first.content[0].text
    plain = client.responses.create(**asked)  # thinking off: no block opened
    assert [i.type for i in plain.output] == ["message"] and plain.output_text
