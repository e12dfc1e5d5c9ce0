"""Structured output against a running server on the embedded model (OpenVINO), through
the official `openai` SDK and the native API. The 135M model is weak: every answer here is
valid because decoding could produce nothing else, at a high temperature too."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.servers import ServerProcess, metric, openai_client
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

ASK = "A used red bicycle for sale in Moscow, 15000 roubles. Describe it as JSON."


class Seller(BaseModel):
    name: str = Field(max_length=24)
    rating: int = Field(ge=1, le=5)


class Listing(BaseModel):
    category: Literal["bicycle", "sofa", "phone"]
    condition: Literal["new", "used"]
    price_rub: int = Field(ge=0, le=10_000_000)
    colours: list[Literal["red", "blue", "black"]] = Field(max_length=3)
    seller: Seller


@pytest.fixture(scope="module")
def server(embedded_server: ServerProcess) -> ServerProcess:
    """The session's embedded server (tests/conftest.py). Every answer generated here asks
    for its own max_tokens (the requests without one are refused or abandoned), so its
    raised MAX_TOKENS_AVIBE changes none."""
    return embedded_server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai_client(server)


@pytest.mark.parametrize("temperature", [0.0, 1.2])
def test_the_sdk_parses_a_pydantic_model_whole_and_streamed(
    client: openai.OpenAI, temperature: float
) -> None:
    asked = {
        "model": "avibe",
        "messages": [{"role": "user", "content": ASK}],
        "response_format": Listing,
        "temperature": temperature,
        "seed": 7,
        "max_tokens": 300,
    }
    done = client.chat.completions.parse(**asked)  # type: ignore[arg-type]
    choice = done.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(choice.message.parsed, Listing)
    text = choice.message.content or ""
    assert "  " not in text and "\n" not in text  # compact: no whitespace to stall in
    with client.chat.completions.stream(**asked) as stream:  # type: ignore[arg-type]
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 3  # it did stream
    assert final.choices[0].message.parsed == choice.message.parsed  # same seed, same answer


def test_json_mode_answers_an_object(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="avibe",
        messages=[{"role": "user", "content": ASK}],
        response_format={"type": "json_object"},
        temperature=1.2,
        seed=3,
        max_tokens=300,
    )
    if done.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(done.choices[0].message.content or ""), dict)
    else:  # cut by max_tokens inside the object: said so, never passed off as JSON
        assert done.choices[0].finish_reason == "length"


def test_a_schema_on_completions_and_the_native_api(server: ServerProcess) -> None:
    schema = Listing.model_json_schema()
    response_format = {"type": "json_schema", "json_schema": {"name": "l", "schema": schema}}
    completion = httpx.post(
        server.url + "/v1/completions",
        json={
            "model": "avibe",
            "prompt": ASK,
            "max_tokens": 300,
            "response_format": response_format,
        },
        timeout=120,
    ).json()
    jsonschema.validate(json.loads(completion["choices"][0]["text"]), schema)
    native = httpx.post(
        server.url + "/api/v1/text/generate",
        json={"prompt": ASK, "max_tokens": 300, "response_format": response_format},
        timeout=120,
    ).json()
    # the original specification's body
    assert set(native) == {"success", "data", "metrics", "request_id"}
    jsonschema.validate(json.loads(native["data"]["text"]), schema)


@pytest.mark.parametrize(
    ("response_format", "check"),
    [
        ({"type": "regex", "regex": "(yes|no), [0-9]{1,3} km"}, r"^(yes|no), [0-9]{1,3} km$"),
        (
            {"type": "grammar", "grammar": 'root ::= "Price: " [1-9] [0-9]{2,5} " rub"'},
            r"^Price: [1-9][0-9]{2,5} rub$",
        ),
    ],
)
def test_native_regex_and_grammar(server: ServerProcess, response_format: dict, check: str) -> None:
    import re

    for seed in (1, 2):
        data = httpx.post(
            server.url + "/api/v1/text/generate",
            json={
                "prompt": ASK,
                "max_tokens": 40,
                "temperature": 1.0,
                "seed": seed,
                "response_format": response_format,
            },
            timeout=120,
        ).json()["data"]
        assert re.match(check, data["text"]), data


def test_an_answer_cut_inside_the_schema_says_length(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="avibe",
        messages=[{"role": "user", "content": ASK}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "l", "schema": Listing.model_json_schema()},
        },
        max_tokens=5,
    )
    assert done.choices[0].finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(done.choices[0].message.content or "")


def test_a_client_gone_while_its_schema_compiles_costs_nothing(server: ServerProcess) -> None:
    big = {
        "type": "object",
        "properties": {f"field_{i}": {"type": "string"} for i in range(600)},
    }
    body = json.dumps(
        {
            "prompt": ASK,
            "response_format": {"type": "json_schema", "json_schema": {"name": "b", "schema": big}},
        }
    ).encode()
    wait_until(
        lambda: (
            metric(server, "avito_requests_running") + metric(server, "avito_requests_waiting") == 0
        ),
        30,
        "no generation left from earlier tests",
    )
    route = {"method": "POST", "route": "/api/v1/text/generate"}
    gone_before = metric(server, "avito_http_requests_total", status="499", **route)
    tokens_before = metric(server, "avito_generation_tokens_total", model="avibe")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /api/v1/text/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
    # The server is done with it once it counts it as the client's leaving (499): the
    # schema compiled first (seconds; its first compile imports the compiler too).
    wait_until(
        lambda: (
            metric(server, "avito_http_requests_total", status="499", **route) == gone_before + 1
        ),
        120,
        "the gone client's request counted as 499",
    )
    assert httpx.get(server.url + "/api/health/ready").status_code == 200
    assert metric(server, "avito_requests_running", model="avibe") == 0
    assert metric(server, "avito_requests_waiting", model="avibe") == 0
    # Nothing generated for it: the engine let it go before its first token.
    assert metric(server, "avito_generation_tokens_total", model="avibe") == tokens_before
    assert "Traceback" not in server.output()


def test_too_many_bounded_strings_for_openvino_are_a_400_not_a_stalled_engine(
    server: ServerProcess,
) -> None:
    """OpenVINO compiles a grammar inside its step (0.2-0.7 s per bounded string, every
    request waiting): a schema with many of them is refused at once."""
    bounded = {
        "type": "object",
        "properties": {f"f{i}": {"type": "string", "maxLength": 30} for i in range(600)},
    }
    started = time.monotonic()
    r = httpx.post(
        server.url + "/api/v1/text/generate",
        json={
            "prompt": ASK,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "b", "schema": bounded},
            },
        },
        timeout=60,
    )
    assert r.status_code == 400 and "600 strings" in r.json()["message"]
    assert time.monotonic() - started < 5


def test_with_a_thinking_block_the_constraint_holds_after_it(
    thinking_server: ServerProcess,
) -> None:
    """This template (the session's thinking server, tests/conftest.py) opens `<think>` in
    the prompt: the grammar lets the model think, then holds the answer to the schema. The
    135M model never closes its block, so the answer is empty and says `length`: no
    thinking and no free text passes for the answer."""
    data = httpx.post(
        thinking_server.url + "/api/v1/text/generate",
        json={"prompt": ASK, "max_tokens": 60, "response_format": {"type": "json_object"}},
        timeout=120,
    ).json()["data"]
    assert (data["text"], data["finish_reason"], data["generated_tokens"]) == ("", "length", 60)


def test_an_image_question_gets_a_400_when_a_vision_is_absent(server: ServerProcess) -> None:
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={
            "model": "avision",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"},
        },
        timeout=30,
    )
    assert r.status_code == 503 and "AVISION_MODEL" in r.json()["error"]["message"]


def test_the_page_has_a_json_schema_box_and_shows_the_answer_pretty(
    server: ServerProcess, tmp_path: Path
) -> None:
    schema = json.dumps(Listing.model_json_schema())
    page = httpx.post(
        server.url + "/avibe",
        data={"prompt": ASK, "max_tokens": "300", "json_schema": schema},
        timeout=120,
    )
    assert page.status_code == 200
    assert 'name="json_schema"' in page.text
    assert '"category": ' in page.text and "\n  " in page.text  # indented JSON


# ------------------------------------------------------------------ logprobs and n


def test_logprobs_one_per_token_the_same_streamed_and_whole(client: openai.OpenAI) -> None:
    asked = {
        "model": "avibe",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 12,
        "logprobs": True,
    }
    whole = client.chat.completions.create(**asked)  # type: ignore[call-overload]
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    assert all(t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content).startswith(whole.choices[0].message.content[:5])
    streamed = [
        t
        for chunk in client.chat.completions.create(**asked, stream=True)  # type: ignore[call-overload]
        for c in chunk.choices
        for t in (c.logprobs.content if c.logprobs and c.logprobs.content else [])
    ]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [
        (t.token, round(t.logprob, 4)) for t in content
    ]


def test_openvino_gives_no_alternatives_and_says_so(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="avibe",
            messages=[{"role": "user", "content": "Hi"}],
            logprobs=True,
            top_logprobs=2,
        )
    assert "(openvino)" in str(refused.value) and refused.value.body["param"] == "top_logprobs"  # type: ignore[index]


def test_n_choices_sampled_independently_and_counted(client: openai.OpenAI) -> None:
    asked = {
        "model": "avibe",
        "messages": [{"role": "user", "content": "Write a sentence about the sea."}],
        "max_tokens": 16,
        "n": 3,
    }
    sampled = client.chat.completions.create(**asked, temperature=1.0, seed=5)  # type: ignore[call-overload]
    texts = [c.message.content for c in sampled.choices]
    assert [c.index for c in sampled.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert sampled.usage.completion_tokens > 16  # all three
    greedy = client.chat.completions.create(**asked, temperature=0)  # type: ignore[call-overload]
    assert len({c.message.content for c in greedy.choices}) == 1
    stream = client.chat.completions.create(**asked, temperature=1.0, seed=5, stream=True)  # type: ignore[call-overload]
    parts: dict[int, str] = {}
    for chunk in stream:
        for c in chunk.choices:
            parts[c.index] = parts.get(c.index, "") + (c.delta.content or "")
    # Interleaved by index, each choice its own sample. (Not equal to the whole answers of the
    # same seed: OpenVINO samples each generation in whatever batch the step has, and on a
    # busy machine the batch differs, which can part a choice at a near-tie.)
    assert sorted(parts) == [0, 1, 2] and all(parts.values()) and len(set(parts.values())) > 1
