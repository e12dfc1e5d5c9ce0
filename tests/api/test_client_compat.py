"""What common clients send and read, in process with the fake engine (it writes its calls
as Hermes text in pieces of 4 characters, as a model writes tokens), through the official
SDKs: streamed tool calls as the SDKs assemble them in all three dialects, a call cut by
max_tokens, `models.retrieve` in both SDKs, Anthropic's stop sequences, the error types
Anthropic's SDK reads, and chat fields this server does not implement."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel

from avito_ai.engines.base import Role
from avito_ai.engines.fake import FakeEngine
from tests.conftest import engine_set, isolated_settings

from .conftest import running

try:  # the anthropic SDK's own HTTP client: httpx2 from anthropic 0.80 on, httpx before
    import httpx2 as sdk_httpx
except ImportError:  # pragma: no cover
    sdk_httpx = httpx  # type: ignore[no-redef]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
ASK = [{"role": "user", "content": "Weather in Paris, please"}]
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}


class GetWeather(BaseModel):
    city: str
    days: int


@asynccontextmanager
async def clients(
    engines: dict[Role, Any] | None = None,
) -> AsyncIterator[tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic, httpx.AsyncClient]]:
    settings = isolated_settings(rate_limit_per_minute=100_000, rate_limit_per_hour=100_000)
    async with running(settings, engines) as (app, http):
        transport = sdk_httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with sdk_httpx.AsyncClient(transport=transport) as inner:
            yield (
                openai.AsyncOpenAI(
                    base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0
                ),
                anthropic.AsyncAnthropic(
                    base_url="http://testserver", api_key="x", http_client=inner, max_retries=0
                ),
                http,
            )


def sse(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


# ---------------------------------------------------------------- streamed tool calls


async def test_the_openai_sdks_stream_helper_assembles_exactly_one_valid_call() -> None:
    async with (
        clients() as (client, _, _),
        client.chat.completions.stream(
            model="avibe",
            messages=ASK,  # type: ignore[arg-type]
            tools=[openai.pydantic_function_tool(GetWeather, name="get_weather")],
            tool_choice=NAMED,
        ) as stream,
    ):
        async for _ in stream:
            pass
        done = await stream.get_final_completion()
    message = done.choices[0].message
    assert done.choices[0].finish_reason == "tool_calls" and not message.content
    (call,) = message.tool_calls or []
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "", "days": 0}
    assert call.function.parsed_arguments == GetWeather(city="", days=0)  # type: ignore[union-attr]


async def test_a_chat_stream_has_one_entry_per_call_a_chunk_arguments_as_written() -> None:
    body = {"model": "avibe", "messages": ASK, "tools": [WEATHER], "tool_choice": NAMED}
    async with clients() as (_, _, http):
        r = await http.post("/v1/chat/completions", json={**body, "stream": True})
    entries = [c["choices"][0]["delta"].get("tool_calls") for c in sse(r.text) if c["choices"]]
    entries = [e for e in entries if e]
    assert all(len(e) == 1 for e in entries)  # one entry per call in each chunk
    first, rest = entries[0][0], [e[0] for e in entries[1:]]
    assert first["function"] == {"name": "get_weather", "arguments": ""} and first["id"]
    assert all(set(e) == {"index", "function"} and e["index"] == 0 for e in rest)
    pieces = [e["function"]["arguments"] for e in rest]
    assert len(pieces) > 3 and max(map(len, pieces)) <= 4  # as the model wrote them
    assert json.loads("".join(pieces)) == {"city": "", "days": 0}


async def test_responses_and_messages_stream_the_arguments_after_the_name() -> None:
    async with clients() as (client, claude, _):
        stream = await client.responses.create(
            model="avibe",
            input="Weather in Paris?",
            tools=[{"type": "function", **WEATHER["function"]}],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "get_weather"},
            stream=True,
        )
        kinds, deltas = [], []
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.function_call_arguments.delta":
                deltas.append(event.delta)
        assert kinds.index("response.output_item.added") < kinds.index(
            "response.function_call_arguments.delta"
        )
        assert len(deltas) > 3 and json.loads("".join(deltas)) == {"city": "", "days": 0}
        tool = {
            "name": "get_weather",
            "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
        }
        async with claude.messages.stream(
            model="avibe",
            max_tokens=64,
            messages=ASK,  # type: ignore[arg-type]
            tools=[tool],  # type: ignore[list-item]
            tool_choice={"type": "tool", "name": "get_weather"},
        ) as s:
            partial = [e.delta.partial_json async for e in s if e.type == "content_block_delta"]  # type: ignore[union-attr]
            final = await s.get_final_message()
        assert len(partial) > 3 and json.loads("".join(partial)) == {"city": "", "days": 0}
        assert final.stop_reason == "tool_use"
        assert [(b.type, getattr(b, "input", None)) for b in final.content] == [
            ("tool_use", {"city": "", "days": 0})
        ]


async def test_a_forced_call_cut_by_max_tokens_is_a_partial_call_never_markup() -> None:
    body = {
        "model": "avibe",
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": NAMED,
        "max_tokens": 15,  # 60 characters: the call's arguments are cut mid-way
    }
    async with clients() as (client, claude, http):
        whole = await client.chat.completions.create(**body)  # type: ignore[call-overload]
        choice = whole.choices[0]
        assert choice.finish_reason == "length" and not choice.message.content
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "get_weather"
        assert call.function.arguments == '{"city": ""'  # what the model wrote, no more
        r = await http.post("/v1/chat/completions", json={**body, "stream": True})
        chunks = [c["choices"][0] for c in sse(r.text) if c["choices"]]
        assert not any(c["delta"].get("content") for c in chunks)
        streamed = "".join(
            e["function"].get("arguments", "")
            for c in chunks
            for e in c["delta"].get("tool_calls") or []
        )
        assert streamed == '{"city": ""' and chunks[-1]["finish_reason"] == "length"
        # Cut before its name was whole: still the forced tool's call, no <tool_call> text.
        short = await client.chat.completions.create(**{**body, "max_tokens": 4})
        assert short.choices[0].message.content is None
        assert [c.function.name for c in short.choices[0].message.tool_calls or []] == [
            "get_weather"
        ]
        response = await client.responses.create(
            model="avibe",
            input="Weather?",
            tools=[{"type": "function", **WEATHER["function"]}],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "get_weather"},
            max_output_tokens=15,
        )
        assert response.status == "incomplete"
        assert [item.type for item in response.output] == ["function_call"]
        tool = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}  # type: ignore[index]
        message = await claude.messages.create(
            model="avibe",
            max_tokens=15,
            messages=ASK,  # type: ignore[arg-type]
            tools=[tool],  # type: ignore[list-item]
            tool_choice={"type": "tool", "name": "get_weather"},
        )
        assert message.stop_reason == "max_tokens"
        assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
            ("tool_use", {"city": ""})
        ]


# ---------------------------------------------------------------- models.retrieve


async def test_both_sdks_retrieve_one_model() -> None:
    async with clients() as (client, claude, _):
        card = await client.models.retrieve("avibe")
        assert (card.id, card.object, card.owned_by) == ("avibe", "model", "avito")
        info = await claude.models.retrieve("fake-avibe")
        assert (info.id, info.type, info.display_name) == (
            "fake-avibe",
            "model",
            "A-Vibe (fake-avibe)",
        )
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-nothing")
        with pytest.raises(anthropic.NotFoundError):
            await claude.models.retrieve("claude-nothing")


# ---------------------------------------------------------------- Anthropic stop sequences


async def test_a_stop_sequence_is_reported_with_the_one_that_matched() -> None:
    hello = [{"role": "user", "content": "hello there world"}]
    async with clients() as (_, claude, http):
        whole = await claude.messages.create(
            model="avibe",
            max_tokens=64,
            messages=hello,  # type: ignore[arg-type]
            stop_sequences=["world", "there", "nowhere"],
        )
        assert whole.content[0].text == "Echo: hello "  # type: ignore[union-attr]
        assert (whole.stop_reason, whole.stop_sequence) == ("stop_sequence", "there")
        assert whole.usage.output_tokens == 3
        async with claude.messages.stream(
            model="avibe",
            max_tokens=64,
            messages=hello,  # type: ignore[arg-type]
            stop_sequences=["wor"],
        ) as s:
            text = "".join([t async for t in s.text_stream])
            final = await s.get_final_message()
        assert text == "Echo: hello there "
        assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "wor")
        missed = await claude.messages.create(
            model="avibe",
            max_tokens=64,
            messages=hello,  # type: ignore[arg-type]
            stop_sequences=["nowhere"],
        )
        assert missed.content[0].text == "Echo: hello there world"  # type: ignore[union-attr]
        assert (missed.stop_reason, missed.stop_sequence) == ("end_turn", None)
        body = {"model": "avibe", "max_tokens": 64, "messages": hello, "stream": True}
        r = await http.post("/v1/messages", json={**body, "stop_sequences": ["there"]})
        (delta,) = [e for e in sse(r.text) if e["type"] == "message_delta"]
        assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "there"}


# ---------------------------------------------------------------- errors and refusals


async def test_an_unavailable_model_on_messages_is_not_overloaded() -> None:
    engines = engine_set(FakeEngine("avibe", fail_reason="weights missing"))
    async with clients(engines) as (_, claude, http):
        for model in ("avibe", "avision"):  # failed; not configured
            r = await http.post(
                "/v1/messages",
                json={"model": model, "max_tokens": 8, "messages": ASK},
            )
            assert r.status_code == 503
            assert r.json()["error"]["type"] == "api_error", r.text
        with pytest.raises(anthropic.InternalServerError) as info:
            await claude.messages.create(model="avibe", max_tokens=8, messages=ASK)  # type: ignore[arg-type]
        assert not isinstance(info.value, anthropic.OverloadedError)


@pytest.mark.parametrize(
    "extra",
    [
        {"store": True},
        {"web_search_options": {"search_context_size": "low"}},
        {"prediction": {"type": "content", "content": "Echo: hi"}},
    ],
)
async def test_chat_fields_this_server_does_not_implement_are_refused(
    extra: dict[str, Any],
) -> None:
    body = {"model": "avibe", "messages": ASK, "max_tokens": 4}
    async with clients() as (client, _, http):
        r = await http.post("/v1/chat/completions", json={**body, **extra})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == next(iter(extra)) and "not supported" in error["message"]
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(**body, **extra)  # type: ignore[arg-type]
        # Their "off" values are what a client sends when it means nothing by them.
        off = {"store": False, "web_search_options": None, "prediction": None}
        ok = await http.post("/v1/chat/completions", json={**body, **off})
        assert ok.status_code == 200, ok.text


async def test_null_n_and_stream_mean_their_defaults() -> None:
    """OpenAI types `n` and `stream` as "or null": clients that write every field send
    null for the ones they leave unset, and get one choice, not streamed."""
    body = {"model": "avibe", "messages": ASK, "max_tokens": 4, "n": None, "stream": None}
    async with clients() as (_, _, http):
        r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        assert len(r.json()["choices"]) == 1
        plain = {k: v for k, v in body.items() if k != "messages"}
        r = await http.post("/v1/completions", json={**plain, "prompt": "Hi"})
        assert r.status_code == 200, r.text
        assert len(r.json()["choices"]) == 1
