"""Anthropic's Messages API in process with the fake engine, through the official
`anthropic` SDK where it can go (create, stream, count_tokens) and raw HTTP for the wire
details: event order, error shapes, headers. Every bad input is a 400 in Anthropic's error
shape naming the field."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from avito_ai.api.anthropic.protocol import MessagesRequest
from avito_ai.api.anthropic.requests import messages_output, messages_request
from avito_ai.config import Settings
from avito_ai.engines.base import Chunk, Engine, GenerationRequest, Role
from avito_ai.engines.fake import FakeEngine
from avito_ai.errors import Timeout, ValidationFailed
from avito_ai.services.pipeline import with_output
from tests.conftest import engine_set, isolated_settings
from tests.images import encoded

from .conftest import running

try:  # the SDK's own HTTP client: httpx2 from anthropic 0.80 on, httpx before
    import httpx2 as sdk_httpx
except ImportError:  # pragma: no cover
    sdk_httpx = httpx  # type: ignore[no-redef]

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}
HELLO = [{"role": "user", "content": "hello there world"}]


def open_settings(**values: Any) -> Settings:
    """Test settings without the request rate limits in the way."""
    return isolated_settings(rate_limit_per_minute=100_000, rate_limit_per_hour=100_000, **values)


def blocks(message: Any) -> list[dict[str, Any]]:
    """A message's content as data (a streamed one's blocks are the SDK's Parsed* kind)."""
    return [b.model_dump(exclude={"parsed_output"}, exclude_none=True) for b in message.content]


@asynccontextmanager
async def sdk(
    settings: Settings | None = None, engines: dict[Role, Engine] | None = None
) -> AsyncIterator[tuple[anthropic.AsyncAnthropic, httpx.AsyncClient]]:
    """The SDK on the app in process, and a plain client for raw requests."""
    async with running(settings or open_settings(), engines) as (app, http):
        transport = sdk_httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with sdk_httpx.AsyncClient(transport=transport) as inner:
            client = anthropic.AsyncAnthropic(
                base_url="http://testserver", api_key="x", http_client=inner, max_retries=0
            )
            yield client, http


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """A stream's (event name, data) pairs; the name always matches the data's type."""
    out = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        pair = (name.removeprefix("event: "), json.loads(data.removeprefix("data: ")))
        assert pair[0] == pair[1]["type"]
        out.append(pair)
    return out


def refused(r: httpx.Response, field: str, status: int = 400) -> str:
    """The message of an Anthropic-shaped refusal, which names `field`."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and body["request_id"] == r.headers["X-Request-ID"]
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
    assert body["error"]["type"] == kind[status]
    message: str = body["error"]["message"]
    assert field in message, message
    return message


# ------------------------------------------------------------------ answers


async def test_create_answers_a_message_with_usage_and_ids() -> None:
    async with sdk() as (client, http):
        done = await client.messages.create(model="avibe", max_tokens=64, messages=HELLO)
        assert done.type == "message" and done.role == "assistant" and done.model == "avibe"
        assert [(b.type, getattr(b, "text", None)) for b in done.content] == [
            ("text", "Echo: hello there world")
        ]
        assert (done.stop_reason, done.stop_sequence) == ("end_turn", None)
        assert done.usage.output_tokens == 4 and done.usage.input_tokens > 0
        assert done.id.startswith("msg_") and done._request_id
        r = await http.post(
            "/v1/messages",
            json={"model": "fake-avibe", "max_tokens": 8, "messages": HELLO, "metadata": {}},
            headers={"anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024-04-04"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["request-id"] == r.headers["X-Request-ID"]
        assert r.json()["id"] == "msg_" + r.headers["X-Request-ID"].replace("-", "")[:32]
        assert r.json()["model"] == "fake-avibe"  # a model id as /v1/models lists it


async def test_system_prompts_stops_and_max_tokens() -> None:
    async with sdk() as (client, _):
        cut = await client.messages.create(
            model="avibe",
            max_tokens=2,
            system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            messages=HELLO,
        )
        assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
        stopped = await client.messages.create(
            model="avibe",
            max_tokens=64,
            system="Be brief.",
            stop_sequences=["world"],
            # (sampling fields: gone from the SDK's signature in 2.x, still in the API)
            extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 20},
            messages=HELLO,
        )
        assert stopped.content[0].text == "Echo: hello there "  # type: ignore[union-attr]
        assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "world")


async def test_a_stream_is_the_sdks_and_joins_to_the_whole_message() -> None:
    async with sdk() as (client, http):
        whole = await client.messages.create(model="avibe", max_tokens=64, messages=HELLO)
        async with client.messages.stream(model="avibe", max_tokens=64, messages=HELLO) as s:
            texts = [text async for text in s.text_stream]
            final = await s.get_final_message()
        assert len(texts) == 4 and "".join(texts) == whole.content[0].text  # type: ignore[union-attr]
        assert blocks(final) == blocks(whole) and final.stop_reason == "end_turn"
        assert final.usage.input_tokens == whole.usage.input_tokens
        assert final.usage.output_tokens == whole.usage.output_tokens
        r = await http.post(
            "/v1/messages",
            json={"model": "avibe", "max_tokens": 64, "messages": HELLO, "stream": True},
        )
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["request-id"] == r.headers["X-Request-ID"]
        names = [name for name, _ in events(r.text)]
        assert names == [
            "message_start",
            "content_block_start",
            *["content_block_delta"] * 4,
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        start = events(r.text)[0][1]["message"]
        assert start["content"] == [] and start["stop_reason"] is None
        assert start["usage"]["input_tokens"] == whole.usage.input_tokens


async def test_thinking_comes_first_in_its_own_block() -> None:
    asked: dict[str, Any] = {
        "model": "avibe",
        "max_tokens": 64,
        "messages": HELLO,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    async with sdk() as (client, http):
        done = await client.messages.create(**asked)
        assert [b.type for b in done.content] == ["thinking", "text"]
        assert done.content[0].thinking == "The user wrote 3 words."  # type: ignore[union-attr]
        assert done.content[1].text == "Echo: hello there world"  # type: ignore[union-attr]
        async with client.messages.stream(**asked) as s:
            kinds = [e.type for e in [e async for e in s]]
            final = await s.get_final_message()
        assert "thinking" in kinds and blocks(final) == blocks(done)
        r = await http.post("/v1/messages", json={**asked, "stream": True})
        deltas = [d["delta"]["type"] for n, d in events(r.text) if n == "content_block_delta"]
        assert deltas == ["thinking_delta"] + ["text_delta"] * 4
        starts = [d for n, d in events(r.text) if n == "content_block_start"]
        assert [(d["index"], d["content_block"]["type"]) for d in starts] == [
            (0, "thinking"),
            (1, "text"),
        ]
        off = await client.messages.create(**{**asked, "thinking": {"type": "disabled"}})
        assert [b.type for b in off.content] == ["text"]


# ------------------------------------------------------------------ tools


async def test_a_required_tool_call_whole_and_streamed() -> None:
    asked: dict[str, Any] = {
        "model": "avibe",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER],
        "tool_choice": {"type": "any"},
    }
    async with sdk() as (client, http):
        done = await client.messages.create(**asked)
        assert done.stop_reason == "tool_use"
        (call,) = done.content
        assert call.type == "tool_use" and call.name == "get_weather"
        assert call.id.startswith("toolu_")
        jsonschema.validate(call.input, WEATHER["input_schema"])
        async with client.messages.stream(**asked) as s:
            final = await s.get_final_message()
        assert final.stop_reason == "tool_use"
        assert [(b.type, b.name, b.input) for b in final.content] == [  # type: ignore[union-attr]
            ("tool_use", "get_weather", call.input)
        ]
        r = await http.post("/v1/messages", json={**asked, "stream": True})
        found = events(r.text)
        start = next(d for n, d in found if n == "content_block_start")["content_block"]
        assert start["type"] == "tool_use" and start["input"] == {}
        partial = [
            d["delta"]["partial_json"]
            for n, d in found
            if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
        ]
        assert json.loads("".join(partial)) == call.input
        delta = next(d for n, d in found if n == "message_delta")
        assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


async def test_a_two_step_tool_loop_with_a_result() -> None:
    asked: dict[str, Any] = {"model": "avibe", "max_tokens": 200, "tools": [WEATHER]}
    question = {"role": "user", "content": "What does get_weather say for Paris?"}
    async with sdk() as (client, _):
        first = await client.messages.create(**asked, messages=[question])  # names the tool
        assert first.stop_reason == "tool_use"
        call = first.content[-1]
        assert call.type == "tool_use"
        history = [
            question,
            {
                "role": "assistant",
                "content": [b.model_dump(exclude_none=True) for b in first.content],
            },
        ]
        for is_error, expected in (
            (False, "Echo: 18 C, sunny"),
            (True, "Echo: Error: 18 C, sunny"),
        ):
            result = {
                "type": "tool_result",
                "tool_use_id": call.id,
                "content": [{"type": "text", "text": "18 C, sunny"}],
                "is_error": is_error,
            }
            second = await client.messages.create(
                **asked, messages=[*history, {"role": "user", "content": [result]}]
            )
            assert second.stop_reason == "end_turn"
            assert second.content[-1].text == expected  # type: ignore[union-attr]
        # The same history counts as it answers.
        messages = [*history, {"role": "user", "content": [{**result, "content": "18 C"}]}]
        counted = await client.messages.count_tokens(
            model="avibe",
            tools=[WEATHER],
            messages=messages,  # type: ignore[arg-type]
        )
        answered = await client.messages.create(**asked, messages=messages)
        assert counted.input_tokens == answered.usage.input_tokens


def mapped(**body: Any) -> GenerationRequest:
    """The conversation and sampling, with the tools and tool_choice the pipeline adds."""
    request = MessagesRequest.model_validate({"model": "avibe", "max_tokens": 16, **body})
    built = messages_request(request, "avibe", isolated_settings(), "rid")
    return with_output(built, messages_output(request))


def test_the_request_as_the_engines_see_it() -> None:
    """tool_result blocks become tool messages before the user's text; tool_choice and
    thinking map onto ours."""
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "X"}}
    request = mapped(
        system="Be brief.",
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "Let me look."},
                    use,
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        thinking={"type": "adaptive"},
    )
    roles = [(m.role, [getattr(p, "text", None) for p in m.content]) for m in request.messages]
    assert roles == [
        ("system", ["Be brief."]),
        ("user", ["Weather?"]),
        ("assistant", ["Let me look."]),
        ("tool", ["Sunny"]),
        ("user", ["And tomorrow?"]),
    ]
    assert request.messages[2].tool_calls[0].arguments == '{"city": "X"}'
    assert request.messages[3].tool_call_id == "toolu_1"
    assert (request.tool_choice, request.forced_tool, request.parallel_tool_calls) == (
        "required",
        "get_weather",
        False,
    )
    assert request.enable_thinking and request.tools[0].parameters == WEATHER["input_schema"]
    hello = [{"role": "user", "content": "hi"}]
    for choice, ours in (
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (None, "auto"),
    ):
        body = {"tools": [WEATHER], "messages": hello}
        got = mapped(**body, **({"tool_choice": choice} if choice else {}))
        assert (got.tool_choice, got.forced_tool, got.parallel_tool_calls) == (ours, None, True)
    assert mapped(messages=hello).tool_choice == "none"  # no tools


# ------------------------------------------------------------------ count_tokens, images


async def test_count_tokens_is_the_answers_input_tokens() -> None:
    asked: dict[str, Any] = {
        "model": "avibe",
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "one two three four"}],
        "tools": [WEATHER],
    }
    async with sdk() as (client, http):
        counted = await client.messages.count_tokens(**asked)
        done = await client.messages.create(**asked, max_tokens=32)
        assert counted.input_tokens == done.usage.input_tokens > 0
        r = await http.post("/v1/messages/count_tokens", json=asked)
        assert r.json() == {"input_tokens": counted.input_tokens}
        assert r.headers["request-id"] == r.headers["X-Request-ID"]
        bad = await http.post(
            "/v1/messages/count_tokens",
            json={**asked, "tool_choice": {"type": "tool", "name": "nope"}},
        )
        refused(bad, "tool_choice")


def image_block(data: bytes) -> dict[str, Any]:
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(data).decode()}
    return {"type": "image", "source": source}


async def test_an_image_block_goes_to_avision() -> None:
    content = [image_block(encoded()), {"type": "text", "text": "What is it?"}]
    messages = [{"role": "user", "content": content}]
    async with sdk(engines=engine_set(avision=FakeEngine("avision"))) as (client, http):
        done = await client.messages.create(
            model="avision",
            max_tokens=32,
            messages=messages,  # type: ignore[arg-type]
        )
        assert done.content[0].text == "Echo: What is it? [1 image(s)]"  # type: ignore[union-attr]
        counted = await client.messages.count_tokens(model="avision", messages=messages)  # type: ignore[arg-type]
        assert counted.input_tokens == done.usage.input_tokens
        text_model = await http.post(
            "/v1/messages", json={"model": "avibe", "max_tokens": 8, "messages": messages}
        )
        refused(text_model, "messages.0.content.0")
        assert "avision" in text_model.json()["error"]["message"]
        broken = [{"role": "user", "content": [image_block(b"not an image")]}]
        r = await http.post(
            "/v1/messages", json={"model": "avision", "max_tokens": 8, "messages": broken}
        )
        refused(r, "messages.0.content.0.source.data")


# ------------------------------------------------------------------ refusals

USE = {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "X"}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_9", "content": "Sunny"}
ASKED_TOOL = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": [USE]}]
TEXT = {"type": "text", "text": "a"}
URL = {"type": "url", "url": "https://example.com/a.png"}


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0.type"),
        ({"tools": [{"name": "x"}]}, "tools.0.input_schema"),
        ({"tools": [{**WEATHER, "input_schema": {"type": "objekt"}}]}, "tools.0"),
        ({"tools": [{**WEATHER, "name": f"t{i}"} for i in range(129)]}, "tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools.1"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"messages": [user(RESULT)]}, "messages.0.content.0.tool_use_id"),
        ({"messages": [*ASKED_TOOL, user(TEXT, RESULT)]}, "messages.2.content.1"),
        ({"messages": [user(USE)]}, "messages.0.content.0.type"),
        ({"messages": ASKED_TOOL}, "messages.1.role"),  # a prefilled assistant turn
        ({"messages": [*HELLO, {"role": "system", "content": "late"}, *HELLO]}, "messages.1.role"),
        ({"messages": [user({"type": "image", "source": URL})]}, "messages.0.content.0.source"),
        ({"messages": [user({"type": "document", "source": URL})]}, "messages.0.content.0"),
        (
            {
                "messages": [
                    *ASKED_TOOL,
                    user({**RESULT, "content": [{"type": "image", "source": URL}]}),
                ]
            },
            "messages.2.content.0.content.0",
        ),
        ({"messages": [{"role": "user", "content": []}]}, "messages.0.content"),
        ({"messages": []}, "messages"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": None}, "max_tokens"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({"temperature": 3}, "temperature"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "sometimes"}}, "thinking"),
        ({"messages": [{"role": "user", "content": "x" * 2001}]}, "messages"),
        (
            {"output_config": {"format": {"type": "json_schema", "schema": {"type": 5}}}},
            "output_config.format.schema",
        ),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(change: dict[str, Any], field: str) -> None:
    body = {"model": "avibe", "max_tokens": 16, "messages": HELLO, **change}
    body = {k: v for k, v in body.items() if v is not None}
    async with running(open_settings()) as (_, http):
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            if path.endswith("count_tokens") and field == "max_tokens":
                continue  # not part of count_tokens
            refused(await http.post(path, json=body), field)


async def test_the_sdk_raises_its_own_errors() -> None:
    async with sdk() as (client, _):
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(
                model="avibe",
                max_tokens=16,
                messages=HELLO,
                tools=[{"type": "web_search_20250305", "name": "web_search"}],  # type: ignore[list-item]
            )
        assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        assert "tools.0.type" in bad.value.message
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.create(model="claude-opus-4", max_tokens=16, messages=HELLO)


async def test_a_key_is_needed_when_keys_are_on() -> None:
    settings = open_settings(api_keys="key-one")
    body = {"model": "avibe", "max_tokens": 8, "messages": HELLO}
    async with running(settings) as (_, http):
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            refused(await http.post(path, json=body), "", status=401)
            wrong = await http.post(path, json=body, headers={"x-api-key": "nope"})
            refused(wrong, "", status=401)
            for header in ({"x-api-key": "key-one"}, {"Authorization": "Bearer key-one"}):
                assert (await http.post(path, json=body, headers=header)).status_code == 200
    async with sdk(settings) as (client, _):
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(**body)  # type: ignore[arg-type]


class FailsMidStream(FakeEngine):
    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        yield Chunk("Начало", generated_tokens=1)
        raise Timeout("Request timed out")


async def test_a_failure_mid_stream_is_an_error_event_and_the_end() -> None:
    body = {"model": "avibe", "max_tokens": 8, "messages": HELLO, "stream": True}
    async with sdk(engines=engine_set(FailsMidStream("avibe"))) as (client, http):
        r = await http.post("/v1/messages", json=body)
        assert r.status_code == 200
        found = events(r.text)
        assert [n for n, _ in found][:3] == [
            "message_start",
            "content_block_start",
            "content_block_delta",
        ]
        name, error = found[-1]
        assert name == "error" and error == {
            "type": "error",
            "error": {"type": "timeout_error", "message": "Request timed out"},
            "request_id": r.headers["X-Request-ID"],
        }
        with pytest.raises(anthropic.APIStatusError, match="Request timed out"):
            asked = {k: v for k, v in body.items() if k != "stream"}
            async with client.messages.stream(**asked) as s:  # type: ignore[arg-type]
                await s.get_final_message()


async def test_an_output_format_holds_the_answer_to_its_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    }
    async with sdk() as (client, _):
        done = await client.messages.create(
            model="avibe",
            max_tokens=64,
            messages=HELLO,
            extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
        )
        jsonschema.validate(json.loads(done.content[0].text), schema)  # type: ignore[union-attr]


def test_the_validation_of_requests_outside_http() -> None:
    with pytest.raises(ValidationFailed) as raised:
        mapped(messages=[{"role": "user", "content": "   "}, {"role": "assistant", "content": "x"}])
    assert raised.value.param == "messages.1.role"
