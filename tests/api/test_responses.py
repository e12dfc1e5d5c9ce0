"""The Responses API (/v1/responses) in process with the fake engine, through the official
SDK (`responses.create`, `responses.stream`, `create(stream=True)`, `responses.parse`):
text, reasoning, function calls and a tool loop, structured output, every event's order
and number, the SDK's own types validating each body, and every refusal a 400 in
OpenAI's shape naming the field."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import Response as SDKResponse
from openai.types.responses import ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from avito_ai.api.responses.events import ResponseEvents, response_events
from avito_ai.api.responses.output import ResponseFrame
from avito_ai.api.responses.protocol import ResponsesRequest
from avito_ai.engines.base import (
    ALL_CONSTRAINTS,
    Capabilities,
    Chunk,
    GenerationRequest,
    SamplingParams,
)
from avito_ai.engines.fake import FakeEngine
from avito_ai.errors import Timeout
from avito_ai.services.answers import Answer
from tests.conftest import engine_set
from tests.images import encoded

from .conftest import running

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": True,
}
LISTING = {
    "type": "object",
    "properties": {
        "category": {"enum": ["bicycle", "sofa"]},
        "price_rub": {"type": "integer", "minimum": 100},
    },
    "required": ["category", "price_rub"],
}


class Client(openai.AsyncOpenAI):
    """The SDK on the app in process, and `raw` for the wire's exact shape."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        super().__init__(
            base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0
        )
        self.http = http


@asynccontextmanager
async def sdk(engine: FakeEngine | None = None) -> AsyncIterator[Client]:
    async with running(engines=engine_set(engine)) as (_, http):
        yield Client(http)


async def raw(client: Client, **body: Any) -> httpx.Response:
    """The answer as sent; a whole response is checked against the SDK's own type (every
    required field, of its type: the SDK itself parses leniently)."""
    r = await client.http.post("/v1/responses", json=body)
    if r.status_code == 200 and not body.get("stream"):
        SDKResponse.model_validate(r.json())
    return r


def events(text: str) -> list[dict[str, Any]]:
    """A stream's events; each named by its type and valid as the SDK's event type."""
    out = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        body = json.loads(data.removeprefix("data: "))
        assert name == f"event: {body['type']}"
        EVENTS.validate_python(body)
        out.append(body)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


# ------------------------------------------------------------------ text


async def test_create_answers_text_with_usage_and_echoes_the_request() -> None:
    async with sdk() as client:
        r = await client.responses.create(
            model="avibe",
            input="Hello there",
            instructions="Be brief.",
            max_output_tokens=50,
            metadata={"ticket": "42"},
            temperature=0,
        )
        assert r.output_text == "Echo: Hello there"
        assert (r.object, r.status, r.model) == ("response", "completed", "avibe")
        assert r.id.startswith("resp_") and r.completed_at is not None
        [message] = r.output
        assert message.type == "message" and message.id.startswith("msg_")
        assert (message.role, message.status) == ("assistant", "completed")
        assert message.content[0].annotations == [] and message.content[0].logprobs == []
        usage = r.usage
        assert usage is not None and usage.output_tokens == 3
        assert usage.total_tokens == usage.input_tokens + 3 and usage.input_tokens > 0
        assert usage.input_tokens_details.cached_tokens == 0
        assert usage.output_tokens_details.reasoning_tokens == 0
        assert (r.instructions, r.max_output_tokens, r.metadata) == (
            "Be brief.",
            50,
            {"ticket": "42"},
        )
        assert (r.store, r.previous_response_id, r.tools, r.tool_choice) == (
            False,
            None,
            [],
            "auto",
        )
        assert r.parallel_tool_calls is True and r.temperature == 0
        assert r.text is not None and r.text.format is not None and r.text.format.type == "text"
        shapes: list[dict[str, Any]] = [
            {"instructions": "x", "metadata": {"a": "b"}, "max_output_tokens": 9},
            {"reasoning": {"effort": "high", "summary": "auto"}},
            {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"}},
            {"text": {"format": {"type": "json_schema", "name": "l", "schema": LISTING}}},
            {"include": ["message.output_text.logprobs"], "top_logprobs": 2},
            {"max_output_tokens": 1},
        ]
        for shape in shapes:
            assert (
                await raw(client, model="avibe", input="Hello there", **shape)
            ).status_code == 200


async def test_a_message_list_with_history_and_developer_instructions() -> None:
    async with sdk() as client:
        r = await client.responses.create(
            model="avibe",
            input=[
                {"role": "developer", "content": "Answer in English."},
                {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_1",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Echo: first", "annotations": []}],
                },
                {"type": "reasoning", "id": "rs_1", "summary": []},  # ignored
                {"role": "user", "content": "second question"},
            ],
        )
        assert r.output_text == "Echo: second question"


async def test_max_output_tokens_makes_it_incomplete() -> None:
    async with sdk() as client:
        r = await client.responses.create(model="avibe", input="a b c d e f", max_output_tokens=2)
        assert (r.status, r.output_text) == ("incomplete", "Echo: a")
        assert r.incomplete_details is not None
        assert r.incomplete_details.reason == "max_output_tokens"
        assert r.output[0].status == "incomplete"
        stream = await raw(client, model="avibe", input="a b c d", max_output_tokens=2, stream=True)
        assert events(stream.text)[-1]["type"] == "response.incomplete"


async def test_text_streams_in_order_and_the_helper_gets_the_same_answer() -> None:
    async with sdk() as client:
        r = await raw(client, model="avibe", input="one two three", stream=True)
        assert r.headers["content-type"].startswith("text/event-stream")
        got = events(r.text)
        kinds = [e["type"] for e in got]
        assert kinds == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            *["response.output_text.delta"] * 4,
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        assert got[0]["response"]["status"] == "in_progress" and got[0]["response"]["output"] == []
        item_id = got[2]["item"]["id"]
        deltas = [e for e in got if e["type"] == "response.output_text.delta"]
        assert all(
            (e["item_id"], e["output_index"], e["content_index"]) == (item_id, 0, 0) for e in deltas
        )
        assert "".join(e["delta"] for e in deltas) == "Echo: one two three"
        final = got[-1]["response"]
        assert final["output"][0]["id"] == item_id and final["usage"]["output_tokens"] == 4

        async with client.responses.stream(model="avibe", input="one two three") as stream:
            texts = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            done = await stream.get_final_response()
        assert "".join(texts) == done.output_text == "Echo: one two three"
        created = await client.responses.create(model="avibe", input="one two three", stream=True)
        kinds_sdk = [e.type async for e in created]
        assert kinds_sdk == kinds


async def test_logprobs_when_included_or_alternatives_asked_for() -> None:
    async with sdk() as client:
        r = await client.responses.create(
            model="avibe", input="one two", include=["message.output_text.logprobs"]
        )
        tokens = r.output[0].content[0].logprobs  # type: ignore[union-attr]
        assert tokens is not None and "".join(t.token for t in tokens) == "Echo: one two"
        assert tokens[0].logprob == 0 and tokens[0].top_logprobs == []
        top = await client.responses.create(model="avibe", input="one", top_logprobs=1)
        alternatives = top.output[0].content[0].logprobs  # type: ignore[union-attr]
        assert alternatives is not None and alternatives[0].top_logprobs[0].token == "Echo:"
        s = await raw(client, model="avibe", input="one", top_logprobs=1, stream=True)
        deltas = [e for e in events(s.text) if e["type"] == "response.output_text.delta"]
        assert deltas[0]["logprobs"][0]["top_logprobs"] == [{"token": "Echo:", "logprob": 0.0}]


# ------------------------------------------------------------------ reasoning


async def test_reasoning_comes_as_its_own_item_before_the_message() -> None:
    async with sdk() as client:
        r = await client.responses.create(
            model="avibe", input="think about it", reasoning={"effort": "medium"}
        )
        thought, message = r.output
        assert message.type == "message"
        assert thought.type == "reasoning" and thought.id.startswith("rs_")
        assert thought.content is not None and thought.summary == []
        assert thought.content[0].type == "reasoning_text"
        assert thought.content[0].text == "The user wrote 3 words."
        assert r.output_text == "Echo: think about it"
        assert r.reasoning is not None and r.reasoning.effort == "medium"
        off = await client.responses.create(model="avibe", input="x", reasoning={"effort": "none"})
        assert [i.type for i in off.output] == ["message"]

        s = await raw(client, model="avibe", input="hm", reasoning={"effort": "low"}, stream=True)
        got = events(s.text)
        kinds = [e["type"] for e in got]
        assert kinds[2:9] == [
            "response.output_item.added",
            "response.content_part.added",
            "response.reasoning_text.delta",
            "response.reasoning_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
        ]
        assert got[3]["part"] == {"type": "reasoning_text", "text": ""}
        assert got[5]["text"] == "The user wrote 1 words." and got[8]["output_index"] == 1
        assert [i["type"] for i in got[-1]["response"]["output"]] == ["reasoning", "message"]


# ------------------------------------------------------------------ tools


async def test_a_two_step_tool_loop_whole_and_streamed() -> None:
    async with sdk() as client:
        ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
        r = await client.responses.create(
            model="avibe",
            input=ask,
            tools=[WEATHER],
            tool_choice="required",  # type: ignore[list-item]
        )
        [call] = r.output
        assert call.type == "function_call" and call.status == "completed"
        assert call.name == "get_weather" and call.call_id.startswith("call_")
        assert call.id is not None and call.id.startswith("fc_")
        jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
        assert r.output_text == "" and r.tool_choice == "required"
        assert r.tools[0].type == "function" and r.tools[0].name == "get_weather"

        async with client.responses.stream(
            model="avibe",
            input=ask,
            tools=[WEATHER],
            tool_choice="required",  # type: ignore[list-item]
        ) as stream:
            pieces = [
                e.delta async for e in stream if e.type == "response.function_call_arguments.delta"
            ]
            streamed = await stream.get_final_response()
        [streamed_call] = streamed.output
        assert streamed_call.type == "function_call"
        assert len(pieces) > 1 and "".join(pieces) == streamed_call.arguments == call.arguments

        # Step two: the call and its output back, the answer reads the result.
        result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"t": 21}'}
        second = await client.responses.create(
            model="avibe",
            input=[*ask, *r.output, result],
            tools=[WEATHER],  # type: ignore[list-item]
        )
        assert second.output_text == 'Echo: {"t": 21}'
        listed = {
            "type": "function_call_output",
            "call_id": call.call_id,
            "output": [{"type": "input_text", "text": "sunny"}],
        }
        third = await client.responses.create(
            model="avibe",
            input=[*ask, *r.output, listed],
            tools=[WEATHER],  # type: ignore[list-item]
        )
        assert third.output_text == "Echo: sunny"


async def test_function_call_events_in_order() -> None:
    async with sdk() as client:
        r = await raw(
            client,
            model="avibe",
            input="call get_weather please",  # the fake calls a tool its user names
            tools=[WEATHER],
            stream=True,
        )
        got = events(r.text)
        kinds = [e["type"] for e in got]
        n = kinds.count("response.function_call_arguments.delta")
        assert n > 1
        assert kinds == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            *["response.function_call_arguments.delta"] * n,
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
        added, done = got[2]["item"], got[-2]["item"]
        assert (added["type"], added["status"], added["arguments"]) == (
            "function_call",
            "in_progress",
            "",
        )
        assert added["call_id"] == done["call_id"] and done["status"] == "completed"
        args = "".join(e["delta"] for e in got if e["type"].endswith("arguments.delta"))
        assert args == got[-3]["arguments"] == done["arguments"]
        assert got[-1]["response"]["output"] == [done]


async def test_a_named_tool_choice_and_tool_choice_none() -> None:
    async with sdk() as client:
        named = await client.responses.create(
            model="avibe",
            input="hi",
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "get_weather"},
        )
        assert named.output[0].type == "function_call"
        none = await client.responses.create(
            model="avibe",
            input="get_weather",
            tools=[WEATHER],
            tool_choice="none",  # type: ignore[list-item]
        )
        assert none.output_text == "Echo: get_weather"


# ------------------------------------------------------------------ structured output


class Listing(BaseModel):
    category: str
    price_rub: int


async def test_text_format_json_schema_and_the_sdk_parse() -> None:
    async with sdk() as client:
        r = await client.responses.create(
            model="avibe",
            input="a bicycle",
            text={
                "format": {
                    "type": "json_schema",
                    "name": "listing",
                    "schema": LISTING,
                    "strict": True,
                }
            },
        )
        jsonschema.validate(json.loads(r.output_text), LISTING)
        assert r.text is not None and r.text.format is not None
        assert r.text.format.type == "json_schema"
        parsed = await client.responses.parse(model="avibe", input="a sofa", text_format=Listing)
        assert isinstance(parsed.output_parsed, Listing)
        obj = await client.responses.create(
            model="avibe", input="x", text={"format": {"type": "json_object"}}
        )
        assert isinstance(json.loads(obj.output_text), dict)


# ------------------------------------------------------------------ images


async def test_images_only_for_avision_and_only_as_data_uris() -> None:
    async with sdk() as client:
        png = "data:image/png;base64," + base64.b64encode(encoded()).decode()
        part = {"type": "input_image", "image_url": png, "detail": "auto"}
        ask = [{"role": "user", "content": [{"type": "input_text", "text": "what?"}, part]}]
        r = await raw(client, model="avibe", input=ask)
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
        remote = {**part, "image_url": "https://example.com/a.png"}
        r = await raw(client, model="avibe", input=[{"role": "user", "content": [remote]}])
        assert r.json()["error"]["param"] == "input.0.content.0.image_url"
        assert "does not fetch" in r.json()["error"]["message"]


# ------------------------------------------------------------------ errors


class FailsMidStream(FakeEngine):
    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        yield Chunk("Начало")
        raise Timeout("Request timed out")


async def test_an_error_mid_stream_is_an_error_event_then_response_failed() -> None:
    async with sdk(FailsMidStream("avibe")) as client:
        r = await raw(client, model="avibe", input="hi", stream=True)
        got = events(r.text)
        error, failed = got[-2], got[-1]
        assert (error["type"], error["code"], error["message"]) == (
            "error",
            "timeout",
            "Request timed out",
        )
        assert failed["type"] == "response.failed"
        response = failed["response"]
        assert (
            response["status"] == "failed" and response["error"]["message"] == "Request timed out"
        )
        assert response["output"][0]["content"][0]["text"] == "Начало"
        assert response["output"][0]["status"] == "incomplete"
        seen = [
            e.type
            async for e in await client.responses.create(model="avibe", input="hi", stream=True)
        ]
        assert seen[-2:] == ["error", "response.failed"]  # the SDK hands both over


async def test_a_client_that_leaves_closes_the_generation() -> None:
    """Closing the event stream (Starlette does when the client goes) closes the
    generation's iterator, which cancels the engine's work."""
    closed = asyncio.Event()

    async def items() -> AsyncGenerator[Chunk | Answer, None]:
        try:
            yield Chunk("a")
            await asyncio.sleep(30)  # the behaviour under test: a generation still going
            yield Chunk("never")
        finally:
            closed.set()

    body = ResponsesRequest(model="avibe", input="x")
    generation = GenerationRequest("rid", SamplingParams(max_tokens=5))
    stream = response_events(items(), ResponseEvents(ResponseFrame("rid", body, generation)))
    kinds = [json.loads((await anext(stream)).split("data: ")[1])["type"] for _ in range(5)]
    assert kinds[-1] == "response.output_text.delta"
    await stream.aclose()
    assert closed.is_set()


def _tools(n: int) -> list[dict[str, Any]]:
    return [{**WEATHER, "name": f"tool_{i}"} for i in range(n)]


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"store": True}, "store", "not stored"),
        ({"previous_response_id": "resp_1"}, "previous_response_id", "not stored"),
        ({"conversation": "conv_1"}, "conversation", "not stored"),
        ({"background": True}, "background", "background"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "prompt"),
        ({"max_tokens": 5}, "max_tokens", "max_output_tokens"),
        ({"truncation": "auto"}, "truncation", "disabled"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type", "not supported"),
        (
            {"tools": [WEATHER, {"type": "file_search", "vector_store_ids": []}]},
            "tools.1.type",
            "hosted",
        ),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools.0.type", "MCP"),
        ({"input": [*USER, {"type": "item_reference", "id": "msg_1"}]}, "input.1.type", "stored"),
        (
            {"input": [*USER, {"type": "web_search_call", "id": "ws_1"}]},
            "input.1.type",
            "not supported",
        ),
        (
            {
                "input": [
                    *USER,
                    {"type": "function_call_output", "call_id": "call_x", "output": "1"},
                ]
            },
            "input.1.call_id",
            "call_x",
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
            "tool_choice",
            "nope",
        ),
        ({"tool_choice": "required"}, "tool_choice", "no tools"),
        ({"tools": _tools(129)}, "tools", "128"),
        ({"tools": [{**WEATHER, "parameters": {"type": "strin"}}]}, "tools.0", "JSON Schema"),
        ({"max_output_tokens": 10**6}, "max_output_tokens", "between 1"),
        ({"max_output_tokens": 0}, "max_output_tokens", None),
        ({"temperature": 3}, "temperature", None),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "strin"}}}},
            "text.format.schema",
            "JSON Schema",
        ),
        ({"text": {"format": {"type": "xml"}}}, "text.format", None),
        ({"input": [{"role": "system", "content": "only instructions"}]}, "input", "user message"),
        ({"input": []}, "input", None),
        ({"input": [{"role": "robot", "content": "x"}]}, "input.0.role", None),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input.0.content.0",
            "input_text",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input.0.content.0.file_id",
            "not stored",
        ),
        ({"input": "x" * 5000}, "input", "too long"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort", None),
    ],
)
async def test_refusals_are_400s_naming_the_field(
    extra: dict[str, Any], param: str, words: str | None
) -> None:
    async with sdk() as client:
        r = await raw(client, **{"model": "avibe", "input": USER, **extra})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            "validation_error",
            param,
        ), error
        if words:
            assert words in error["message"], error


class NoToolChoice(FakeEngine):
    """An engine that leaves a required call to a grammar (as OpenVINO does)."""

    def capabilities(self) -> Capabilities:
        return Capabilities(constraints=ALL_CONSTRAINTS)


async def test_a_schema_the_call_grammar_cannot_hold_names_the_flat_tool_field() -> None:
    async with sdk(NoToolChoice("avibe")) as client:
        tool = {**WEATHER, "parameters": {"type": "object", "not": {"required": ["x"]}}}
        r = await raw(client, model="avibe", input="hi", tools=[tool], tool_choice="required")
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools.0.parameters"


async def test_the_sdk_raises_bad_request_with_the_param_and_404_for_a_model() -> None:
    async with sdk() as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(model="avibe", input="hi", store=True)
        assert refused.value.body["param"] == "store"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError) as missing:
            await client.responses.create(model="gpt-9", input="hi")
        assert missing.value.body["param"] == "model"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError):
            async with client.responses.stream(
                model="avibe", input="hi", previous_response_id="resp_1"
            ) as stream:
                await stream.get_final_response()
