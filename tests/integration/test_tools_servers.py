"""Tool calls and thinking against running servers, through the official `openai` SDK:
the embedded model on OpenVINO (a required call is valid because decoding could produce
nothing else), and a tiny random Qwen3 on transformers whose template opens `<think>`
(random weights: the split is proven, not the words)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from tests.servers import ServerProcess, dev_server, openai_client, serving
from tests.tiny_models import QWEN3_CHAT_TEMPLATE, build_tiny_qwen3

pytestmark = pytest.mark.integration

OPEN = {"RATE_LIMIT_PER_MINUTE": "100000", "RATE_LIMIT_PER_HOUR": "100000"}
LISTING = {
    "type": "function",
    "function": {
        "name": "create_listing",
        "description": "Put an item up for sale",
        "parameters": {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 40},
                "price_rub": {"type": "integer", "minimum": 0, "maximum": 1000000},
                "condition": {"type": "string", "enum": ["new", "used"]},
            },
            "required": ["title", "price_rub", "condition"],
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "Sell my used red bicycle for 15000 roubles."}]


@pytest.fixture(scope="module")
def client(embedded_server: ServerProcess) -> openai.OpenAI:
    """The session's embedded server (tests/conftest.py): the limits raised; every request
    here asks for its own max_tokens."""
    return openai_client(embedded_server)


def valid_call(call: Any, tools: list[dict[str, Any]]) -> dict[str, Any]:
    schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == call.name)
    arguments = json.loads(call.arguments)
    jsonschema.validate(arguments, schema)
    return arguments


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_required_call_is_valid_then_the_result_is_answered(
    client: openai.OpenAI, temperature: float
) -> None:
    tools = [LISTING, WEATHER]
    first = client.chat.completions.create(
        model="avibe",
        messages=ASK,
        tools=tools,
        tool_choice="required",
        temperature=temperature,
        # Seeded, with room: unseeded at 1.0 the 135M model once wrote a title in Tamil
        # until max_tokens cut the call (a partial call, finish "length").
        seed=7,
        max_tokens=300,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert choice.message.tool_calls and choice.message.content is None
    for call in choice.message.tool_calls:
        valid_call(call.function, tools)
    call = choice.message.tool_calls[0]
    history: list[Any] = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"listing_id": 42}'},
    ]
    second = client.chat.completions.create(
        model="avibe", messages=history, tools=tools, tool_choice="none", max_tokens=30
    )
    assert second.choices[0].message.content  # the model answers in words
    assert second.choices[0].message.tool_calls is None


def test_a_named_call_streams_its_arguments_in_pieces(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="avibe",
        messages=ASK,
        tools=[LISTING, WEATHER],
        tool_choice={"type": "function", "function": {"name": "create_listing"}},
        stream=True,
        max_tokens=120,
    )
    deltas = [c.choices[0] for c in stream if c.choices]
    calls = [tc for d in deltas for tc in d.delta.tool_calls or []]
    assert calls[0].function is not None and calls[0].function.name == "create_listing"
    pieces = [tc.function.arguments for tc in calls[1:] if tc.function and tc.function.arguments]
    assert len(pieces) > 3  # token by token, not at the end
    arguments = json.loads("".join(pieces))
    jsonschema.validate(arguments, LISTING["function"]["parameters"])
    assert not any(d.delta.content for d in deltas)
    assert deltas[-1].finish_reason == "tool_calls"


def test_under_auto_the_answer_is_text_or_a_parsed_call(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="avibe", messages=ASK, tools=[LISTING], temperature=0, max_tokens=80
    )
    message = r.choices[0].message
    assert "<tool_call>" not in (message.content or "") or r.choices[0].finish_reason == "length"
    for call in message.tool_calls or []:
        assert call.function.name == "create_listing"
        json.loads(call.function.arguments)


# ---------------------------------------------------------------- as clients read calls

LISTING_TOOL = {"type": "function", **LISTING["function"]}  # Responses' flat shape
LISTING_INPUT = {"name": "create_listing", "input_schema": LISTING["function"]["parameters"]}


def spread(times: list[float]) -> float:
    return times[-1] - times[0] if times else 0.0


def test_arguments_stream_as_they_are_generated_in_every_dialect(
    embedded_server: ServerProcess, client: openai.OpenAI
) -> None:
    """Each dialect's argument pieces arrive while the model writes them (not all at once
    at the end of the call): over the time of several tokens, one piece after another."""
    import anthropic

    ask: dict[str, Any] = {"model": "avibe", "temperature": 0}
    named = {"type": "function", "function": {"name": "create_listing"}}
    times: list[float] = []
    with client.chat.completions.stream(
        **ask, messages=ASK, tools=[LISTING], tool_choice=named, max_tokens=120
    ) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.delta" and event.arguments_delta:
                times.append(time.monotonic())
        done = stream.get_final_completion()
    (call,) = done.choices[0].message.tool_calls or []
    valid_call(call.function, [LISTING])
    assert len(times) > 3 and spread(times) > 0.05, times
    times = []
    events = client.responses.create(
        **ask,
        input=ASK,  # type: ignore[arg-type]
        tools=[LISTING_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "create_listing"},
        max_output_tokens=120,
        stream=True,
    )
    for event in events:
        if event.type == "response.function_call_arguments.delta":
            times.append(time.monotonic())
    assert len(times) > 3 and spread(times) > 0.05, times
    times = []
    claude = anthropic.Anthropic(base_url=embedded_server.url, api_key="x", max_retries=0)
    with claude.messages.stream(
        model="avibe",
        max_tokens=120,
        messages=ASK,  # type: ignore[arg-type]
        tools=[LISTING_INPUT],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "create_listing"},
        extra_body={"temperature": 0},
    ) as messages:
        for event in messages:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                times.append(time.monotonic())
        final = messages.get_final_message()
    assert len(times) > 3 and spread(times) > 0.05, times
    assert final.stop_reason == "tool_use" and final.content[-1].type == "tool_use"
    jsonschema.validate(final.content[-1].input, LISTING["function"]["parameters"])


def test_a_named_call_with_a_response_format_is_the_call(client: openai.OpenAI) -> None:
    """instructor's tool modes send both; the call answers (before: a 400)."""
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    r = client.chat.completions.create(
        model="avibe",
        messages=ASK,  # type: ignore[arg-type]
        tools=[LISTING],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "create_listing"}},
        response_format=fmt,  # type: ignore[arg-type]
        max_tokens=120,
    )
    (call,) = r.choices[0].message.tool_calls or []
    valid_call(call.function, [LISTING])
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None


def test_a_forced_call_cut_by_max_tokens_shows_no_markup(
    embedded_server: ServerProcess, client: openai.OpenAI
) -> None:
    import anthropic

    named = {"type": "function", "function": {"name": "create_listing"}}
    for max_tokens in (3, 12):  # cut inside the call's head; inside its arguments
        r = client.chat.completions.create(
            model="avibe",
            messages=ASK,  # type: ignore[arg-type]
            tools=[LISTING],  # type: ignore[list-item]
            tool_choice=named,  # type: ignore[arg-type]
            max_tokens=max_tokens,
        )
        choice = r.choices[0]
        assert choice.finish_reason == "length" and choice.message.content is None, choice
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "create_listing"
        assert "<tool_call>" not in call.function.arguments
        response = client.responses.create(
            model="avibe",
            input=ASK,  # type: ignore[arg-type]
            tools=[LISTING_TOOL],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "create_listing"},
            max_output_tokens=max_tokens,
        )
        assert response.status == "incomplete"
        assert [item.type for item in response.output] == ["function_call"]
        assert response.output_text == ""
    claude = anthropic.Anthropic(base_url=embedded_server.url, api_key="x", max_retries=0)
    message = claude.messages.create(
        model="avibe",
        max_tokens=12,
        messages=ASK,  # type: ignore[arg-type]
        tools=[LISTING_INPUT],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "create_listing"},
    )
    assert message.stop_reason == "max_tokens"
    assert [block.type for block in message.content] == ["tool_use"]


def test_stop_sequences_and_models_as_the_sdks_read_them(
    embedded_server: ServerProcess, client: openai.OpenAI
) -> None:
    import anthropic

    claude = anthropic.Anthropic(base_url=embedded_server.url, api_key="x", max_retries=0)
    stops = ["e", "a", "o"]  # one of them comes within a few words of any English answer
    message = claude.messages.create(
        model="avibe",
        max_tokens=60,
        messages=[{"role": "user", "content": "Tell me about the sea."}],
        stop_sequences=stops,
        extra_body={"temperature": 0},
    )
    text = message.content[0].text  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence in stops) == ("stop_sequence", True)
    assert not any(s in text for s in stops) and message.usage.output_tokens < 60
    with claude.messages.stream(
        model="avibe",
        max_tokens=60,
        messages=[{"role": "user", "content": "Tell me about the sea."}],
        stop_sequences=stops,
        extra_body={"temperature": 0},
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text and final.stop_sequence == message.stop_sequence
    listed = [m.id for m in client.models.list()]
    for name in listed:
        assert client.models.retrieve(name).id == name
        assert claude.models.retrieve(name).display_name.startswith("A-Vibe")


# ---------------------------------------------------------------- thinking, tiny Qwen3

# Qwen3's template as its thinking variants have it: thinking on opens the block in the
# prompt, so the model's output starts inside it.
OPENS_THINKING = QWEN3_CHAT_TEMPLATE.replace(
    "{%- if enable_thinking is defined and enable_thinking is false %}",
    "{%- if enable_thinking is defined and enable_thinking %}{{- '<think>\\n' }}"
    "{%- elif enable_thinking is defined and enable_thinking is false %}",
)


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = build_tiny_qwen3(tmp_path_factory.mktemp("thinking-qwen3") / "model")
    (folder / "chat_template.jinja").write_text(OPENS_THINKING)
    env = {**OPEN, "AVIBE_BACKEND": "transformers", "AVIBE_MODEL": str(folder)}
    with serving(dev_server(env, Path(folder).parent / "server.log"), 180) as srv:
        yield srv


def test_thinking_opened_by_the_template_comes_apart_from_the_answer(
    thinker: ServerProcess,
) -> None:
    client = openai_client(thinker)
    ask = {"model": "avibe", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12}
    ask["temperature"] = 0
    on = client.chat.completions.create(**ask, reasoning_effort="high").choices[0]  # type: ignore[call-overload]
    thought = on.message.model_dump().get("reasoning_content")
    # The random model never closes the block: all it wrote is thinking, nothing leaks.
    assert thought and "<think>" not in thought and not on.message.content
    assert on.finish_reason == "length"
    stream = client.chat.completions.create(**ask, reasoning_effort="high", stream=True)  # type: ignore[call-overload]
    pieces = [c.choices[0].delta.model_dump() for c in stream if c.choices]
    assert "".join(p.get("reasoning_content") or "" for p in pieces) == thought
    assert not "".join(p.get("content") or "" for p in pieces)
    off = client.chat.completions.create(**ask).choices[0]  # type: ignore[call-overload]
    assert off.message.content and "reasoning_content" not in off.message.model_dump(
        exclude_none=True
    )


def test_the_same_split_in_the_responses_and_messages_dialects(thinker: ServerProcess) -> None:
    import anthropic

    ask = [{"role": "user", "content": "Hi"}]
    response = openai_client(thinker).responses.create(
        model="avibe", input=ask, reasoning={"effort": "high"}, max_output_tokens=12, temperature=0
    )  # type: ignore[arg-type]
    kinds = [item.type for item in response.output]
    assert kinds[0] == "reasoning" and "function_call" not in kinds
    thought = response.output[0].content[0].text  # type: ignore[union-attr]
    assert thought and "<think>" not in thought and not response.output_text
    claude = anthropic.Anthropic(base_url=thinker.url, api_key="x", max_retries=0)
    message = claude.messages.create(
        model="avibe",
        max_tokens=12,
        messages=ask,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_body={"temperature": 0},
    )
    assert message.content[0].type == "thinking"
    assert message.content[0].thinking == thought  # greedy: the same thinking
    assert message.stop_reason == "max_tokens"
