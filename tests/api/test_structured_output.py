"""Structured output through the API, in process with the fake engine (which answers a
schema's simplest instance): the wire shapes, the official SDK's `parse`, and every bad
input as a 400 naming the field."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from avito_ai.engines.base import Capabilities, GenerationRequest
from avito_ai.engines.fake import FakeEngine
from tests.conftest import engine_set

from .conftest import running

LISTING = {
    "type": "object",
    "properties": {
        "category": {"enum": ["bicycle", "sofa", "phone"]},
        "price_rub": {"type": "integer", "minimum": 100, "maximum": 1_000_000},
        "colours": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "seller": {
            "type": "object",
            "properties": {"name": {"type": "string", "minLength": 2}},
            "required": ["name"],
        },
        "listed": {"type": "string", "format": "date"},
    },
    "required": ["category", "price_rub", "seller", "listed"],
}


def chat(response_format: Any, **extra: Any) -> dict[str, Any]:
    return {
        "model": "avibe",
        "messages": [{"role": "user", "content": "A used red bicycle, 15000 rub."}],
        "response_format": response_format,
        **extra,
    }


def schema_format(schema: Any, **spec: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "listing", "schema": schema, **spec}}


async def test_a_json_schema_answer_is_valid_whole_and_streamed() -> None:
    async with running() as (_, client):
        whole = await client.post("/v1/chat/completions", json=chat(schema_format(LISTING)))
        assert whole.status_code == 200, whole.text
        answer = json.loads(whole.json()["choices"][0]["message"]["content"])
        jsonschema.validate(answer, LISTING)
        r = await client.post(
            "/v1/chat/completions", json=chat(schema_format(LISTING), stream=True)
        )
        deltas = [
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in r.text.splitlines()
            if line.startswith("data: {") and json.loads(line[6:])["choices"]
        ]
        assert json.loads("".join(deltas)) == answer


@pytest.mark.parametrize("path", ["/api/v1/text/generate", "/v1/completions"])
async def test_json_mode_and_schemas_on_the_other_endpoints(path: str) -> None:
    async with running() as (_, client):
        body: dict[str, Any] = {"prompt": "a sofa", "model": "avibe"}
        for response_format in ({"type": "json_object"}, schema_format(LISTING)):
            r = await client.post(path, json={**body, "response_format": response_format})
            assert r.status_code == 200, r.text
            data = r.json()
            text = data["data"]["text"] if "data" in data else data["choices"][0]["text"]
            assert isinstance(json.loads(text), dict)
        text_format = await client.post(path, json={**body, "response_format": {"type": "text"}})
        assert text_format.status_code == 200


class Seller(BaseModel):
    name: str = Field(min_length=2)


class Listing(BaseModel):
    category: Literal["bicycle", "sofa", "phone"]
    price_rub: int = Field(ge=100, le=1_000_000)
    seller: Seller


async def test_the_openai_sdk_parses_into_its_pydantic_model() -> None:
    async with running() as (app, _):
        transport = httpx.ASGITransport(app=app)
        sdk = openai.AsyncOpenAI(
            base_url="http://testserver/v1",
            api_key="x",
            http_client=httpx.AsyncClient(transport=transport),
            max_retries=0,
        )
        done = await sdk.chat.completions.parse(
            model="avibe",
            messages=[{"role": "user", "content": "A sofa"}],
            response_format=Listing,
        )
        parsed = done.choices[0].message.parsed
        assert isinstance(parsed, Listing) and parsed.price_rub >= 100
        async with sdk.chat.completions.stream(
            model="avibe", messages=[{"role": "user", "content": "A sofa"}], response_format=Listing
        ) as stream:
            final = await stream.get_final_completion()
        assert final.choices[0].message.parsed == parsed


@pytest.mark.parametrize(
    ("response_format", "param", "words"),
    [
        (schema_format({"type": "strin"}), "response_format.json_schema.schema", "JSON Schema"),
        (schema_format([1, 2]), "response_format.json_schema.schema", "dictionary"),
        (
            schema_format({"type": "array", "uniqueItems": True}),
            "response_format.json_schema.schema",
            "uniqueItems",
        ),
        (
            schema_format({"not": {"type": "string"}}),
            "response_format.json_schema.schema",
            "'not'",
        ),
        (
            schema_format({"type": "string", "format": "phone"}),
            "response_format.json_schema.schema",
            "format",
        ),
        (schema_format({"type": "object", "properties": {"a": {"type": "string"}}}), None, None),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, None, None),  # any JSON
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}, "name", None),
        ({"type": "xml"}, "response_format", None),
        ({"type": "regex", "regex": "[0-9]+"}, "response_format", None),  # native only
    ],
)
async def test_bad_response_formats_are_400_naming_the_field(
    response_format: Any, param: str | None, words: str | None
) -> None:
    async with running() as (_, client):
        r = await client.post("/v1/chat/completions", json=chat(response_format))
    if param is None:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert param in (error["param"] or "") or param in error["message"], error
    if words:
        assert words in error["message"], error["message"]


async def test_too_large_and_too_deep_schemas_are_refused() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"a": deep}}
    large = {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "description": "x" * 60} for i in range(900)},
    }
    async with running() as (_, client):
        for schema, words in ((deep, "deeper than 32"), (large, "larger than 64 kB")):
            r = await client.post(
                "/api/v1/text/generate",
                json={"prompt": "x", "response_format": schema_format(schema)},
            )
            assert r.status_code == 400 and words in r.json()["message"], r.text
            assert r.json()["request_id"]


async def test_native_regex_and_grammar_reach_an_engine_that_honours_them() -> None:
    seen: list[GenerationRequest] = []

    class Grammatical(FakeEngine):
        def capabilities(self) -> Capabilities:
            return Capabilities(constraints=frozenset({"regex", "grammar"}))

        async def generate(self, request: GenerationRequest):  # type: ignore[no-untyped-def]
            seen.append(request)
            async for chunk in super().generate(request):
                yield chunk

    async with running(engines=engine_set(avibe=Grammatical("avibe"))) as (_, client):
        for response_format in (
            {"type": "regex", "regex": "(yes|no), [0-9]{1,3}"},
            {"type": "grammar", "grammar": 'root ::= "a" | "b"'},
        ):
            r = await client.post(
                "/api/v1/text/generate", json={"prompt": "x", "response_format": response_format}
            )
            assert r.status_code == 200, r.text
        bad = await client.post(
            "/api/v1/text/generate",
            json={"prompt": "x", "response_format": {"type": "regex", "regex": "(a"}},
        )
        assert bad.status_code == 400 and "regex" in bad.json()["message"]
        assert "parenthesis" in bad.json()["message"] and ".cc" not in bad.json()["message"]
        schema = await client.post(
            "/api/v1/text/generate",
            json={"prompt": "x", "response_format": {"type": "json_object"}},
        )
        assert schema.status_code == 400  # this engine cannot do JSON
        assert "cannot constrain" in schema.json()["message"]
    assert [r.constraint.kind for r in seen if r.constraint] == ["regex", "grammar"]
    assert 'root ::= (("a") | ("b"))' in seen[1].constraint.grammar  # type: ignore[union-attr]


async def test_the_fake_refuses_what_it_cannot_do_before_running() -> None:
    async with running() as (_, client):
        r = await client.post(
            "/api/v1/text/generate",
            json={"prompt": "x", "response_format": {"type": "regex", "regex": "[a-z]+"}},
        )
    assert r.status_code == 400
    assert "(fake) cannot constrain its answer to a regex" in r.json()["message"]


# ------------------------------------------------------------------ logprobs and n


async def test_logprobs_one_per_completion_token_streamed_and_whole() -> None:
    async with running() as (_, client):
        body = chat(None, logprobs=True, top_logprobs=2, max_tokens=5)
        whole = (await client.post("/v1/chat/completions", json=body)).json()
        content = whole["choices"][0]["logprobs"]["content"]
        assert len(content) == whole["usage"]["completion_tokens"]
        assert all(t["logprob"] <= 0 and t["top_logprobs"] for t in content)
        assert "".join(t["token"] for t in content) == whole["choices"][0]["message"]["content"]
        r = await client.post("/v1/chat/completions", json={**body, "stream": True})
        streamed = [
            t
            for line in r.text.splitlines()
            if line.startswith("data: {")
            for c in json.loads(line[6:])["choices"]
            for t in (c.get("logprobs") or {}).get("content") or []
        ]
        assert streamed == content
        text = await client.post(
            "/v1/completions", json={"model": "avibe", "prompt": "a b", "logprobs": 1}
        )
        logprobs = text.json()["choices"][0]["logprobs"]
        assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"])
        assert logprobs["text_offset"][0] == 0 and logprobs["top_logprobs"][0]
        native = await client.post(
            "/api/v1/text/generate", json={"prompt": "a b", "logprobs": True}
        )
        assert native.json()["data"]["logprobs"][0]["token"] == "Echo:"
        plain = await client.post("/api/v1/text/generate", json={"prompt": "a b"})
        assert "logprobs" not in plain.json()["data"]  # the original specification's body otherwise


async def test_n_choices_counted_in_usage_and_interleaved_when_streamed() -> None:
    async with running() as (_, client):
        body = chat(None, n=3, temperature=0.8, seed=1, max_tokens=4)
        whole = (await client.post("/v1/chat/completions", json=body)).json()
        assert [c["index"] for c in whole["choices"]] == [0, 1, 2]
        assert whole["usage"]["completion_tokens"] == 3 * 4
        r = await client.post("/v1/chat/completions", json={**body, "stream": True})
        chunks = [
            json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")
        ]
        finishes = [
            c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
        ]
        assert sorted(f["index"] for f in finishes) == [0, 1, 2]
        too_many = await client.post("/v1/chat/completions", json={**body, "n": 9})
        assert too_many.status_code == 400 and "MAX_CHOICES" in too_many.json()["error"]["message"]


async def test_top_logprobs_the_engine_cannot_give_is_a_400_naming_it() -> None:
    class ChosenOnly(FakeEngine):
        def capabilities(self) -> Capabilities:
            return Capabilities(logprobs=True, top_logprobs=0)

    async with running(engines=engine_set(avibe=ChosenOnly("avibe"))) as (_, client):
        r = await client.post(
            "/v1/chat/completions", json=chat(None, logprobs=True, top_logprobs=3)
        )
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "top_logprobs"
        assert "chosen token's log probability only" in r.json()["error"]["message"]
        ok = await client.post("/v1/chat/completions", json=chat(None, logprobs=True))
        assert ok.status_code == 200
