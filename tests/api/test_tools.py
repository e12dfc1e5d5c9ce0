"""Tool calls and thinking on /v1/chat/completions (and thinking on the native API), in
process through the official `openai` SDK, with the fake engine: it calls a tool when the
choice requires one or the user names it, echoes a tool's result, and thinks aloud when
thinking is on."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import running
from tests.conftest import isolated_settings

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "Weather in Paris, please"}]


def sdk(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0
    )


async def test_a_two_step_tool_loop_through_the_sdk() -> None:
    async with running(isolated_settings(rate_limit_per_minute=1000)) as (_, http):
        client = sdk(http)
        first = await client.chat.completions.create(
            model="avibe", messages=ASK, tools=[WEATHER], tool_choice="required"
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        (call,) = choice.message.tool_calls or []
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": ""}
        history: list[Any] = [
            *ASK,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ]
        second = await client.chat.completions.create(
            model="avibe", messages=history, tools=[WEATHER]
        )
        assert second.choices[0].finish_reason == "stop"
        assert second.choices[0].message.content == "Echo: sunny, 21 C"
        assert second.choices[0].message.tool_calls is None


async def test_a_streamed_call_names_itself_then_sends_its_arguments_in_pieces() -> None:
    async with running() as (_, http):
        stream = await sdk(http).chat.completions.create(
            model="avibe",
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
        )
        deltas = [c.choices[0] async for c in stream if c.choices]
    calls = [tc for d in deltas for tc in d.delta.tool_calls or []]
    assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
    pieces = [tc.function.arguments for tc in calls[1:] if tc.function]
    assert len(pieces) > 1 and json.loads("".join(pieces)) == {"city": ""}
    assert all(tc.index == 0 for tc in calls)
    assert not any(d.delta.content for d in deltas)  # no <tool_call> text leaks
    assert deltas[-1].finish_reason == "tool_calls"


async def test_auto_calls_when_the_model_does_and_none_never_does() -> None:
    named = [{"role": "user", "content": "use get_weather for Rome"}]
    async with running() as (_, http):
        client = sdk(http)
        auto = await client.chat.completions.create(model="avibe", messages=named, tools=[WEATHER])
        assert auto.choices[0].message.tool_calls
        plain = await client.chat.completions.create(model="avibe", messages=ASK, tools=[WEATHER])
        assert plain.choices[0].message.tool_calls is None
        assert plain.choices[0].message.content == "Echo: Weather in Paris, please"
        none = await client.chat.completions.create(
            model="avibe", messages=named, tools=[WEATHER], tool_choice="none"
        )
        assert none.choices[0].message.tool_calls is None
        assert none.choices[0].finish_reason == "stop"


async def test_thinking_comes_apart_from_the_answer_however_it_is_asked_for() -> None:
    async with running() as (_, http):
        client = sdk(http)
        asks: list[dict[str, Any]] = [
            {"reasoning_effort": "high"},
            {"extra_body": {"enable_thinking": True}},
            {"extra_body": {"chat_template_kwargs": {"enable_thinking": True}}},
        ]
        for ask in asks:
            r = await client.chat.completions.create(model="avibe", messages=ASK, **ask)
            message = r.choices[0].message.model_dump()
            assert message["content"] == "Echo: Weather in Paris, please"
            assert message["reasoning_content"] == message["reasoning"] == "The user wrote 4 words."
        off = await client.chat.completions.create(
            model="avibe", messages=ASK, reasoning_effort="none"
        )
        assert "reasoning_content" not in off.choices[0].message.model_dump(exclude_none=True)
        stream = await client.chat.completions.create(
            model="avibe", messages=ASK, stream=True, reasoning_effort="low"
        )
        deltas = [c.choices[0].delta.model_dump() async for c in stream if c.choices]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "The user wrote 4 words."
    assert "".join(d.get("content") or "" for d in deltas) == "Echo: Weather in Paris, please"


async def test_the_native_api_gives_the_thinking_as_its_own_field() -> None:
    body = {"prompt": "hi there", "enable_thinking": True}
    async with running() as (_, http):
        whole = (await http.post("/api/v1/text/generate", json=body)).json()["data"]
        assert (whole["text"], whole["reasoning"]) == ("Echo: hi there", "The user wrote 2 words.")
        plain = (await http.post("/api/v1/text/generate", json={"prompt": "hi"})).json()
        assert "reasoning" not in plain["data"]  # the original body, unchanged
        stream = await http.post("/api/v1/text/generate", json={**body, "stream": True})
    assert 'event: reasoning\ndata: {"reasoning": "The user wrote 2 words."}' in stream.text


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}]},
            "tools.0",
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER] * 129}, "tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools.1"),
        ({"functions": [{"name": "f"}]}, "functions"),
        (
            {
                "tools": [WEATHER],
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "tool", "tool_call_id": "call_nowhere", "content": "r"},
                ],
            },
            "messages.1.tool_call_id",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "r"}]},
            "messages.1",
        ),
        ({"messages": [{"role": "user", "content": None}]}, "messages.0.content"),
    ],
)
async def test_bad_tools_and_history_are_400_naming_the_field(
    extra: dict[str, Any], param: str
) -> None:
    body = {"model": "avibe", "messages": ASK, **extra}
    async with running() as (_, http):
        r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"].startswith(param), error
    assert r.headers["x-request-id"]


async def test_tools_past_max_prompt_tokens_are_refused() -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": f"tool_{i}", "description": "d" * 300, "parameters": {}},
        }
        for i in range(20)
    ]
    async with running(isolated_settings(max_prompt_tokens=500)) as (_, http):
        r = await http.post(
            "/v1/chat/completions", json={"model": "avibe", "messages": ASK, "tools": tools}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
        assert "MAX_PROMPT_TOKENS" in r.json()["error"]["message"]
        few = await http.post(
            "/v1/chat/completions", json={"model": "avibe", "messages": ASK, "tools": tools[:1]}
        )
        assert few.status_code == 200, few.text


async def test_both_sdks_list_the_names_every_dialect_takes() -> None:
    import anthropic
    import httpx2  # the Anthropic SDK's own HTTP client

    async with running() as (app, http):
        listed = [m.id async for m in sdk(http).models.list()]
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport) as inner:
            claude = anthropic.AsyncAnthropic(
                base_url="http://testserver", api_key="x", http_client=inner, max_retries=0
            )
            page = await claude.models.list()
    assert listed == ["avibe", "fake-avibe"]  # (A-Vision is not configured here)
    assert [m.id for m in page.data] == listed
    assert page.data[0].display_name == "A-Vibe" and page.data[0].type == "model"
    assert page.data[0].created_at.year >= 2026 and not page.has_more
