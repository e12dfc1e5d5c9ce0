"""The remote engine's decisions with scripted upstreams (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable

import httpx
import pytest
from PIL import Image

from avito_ai.engines.base import (
    ChatMessage,
    GenerationRequest,
    ImagePart,
    SamplingParams,
    TextPart,
)
from avito_ai.engines.remote.engine import RemoteEngine
from avito_ai.engines.remote.wire import upstream_payload
from avito_ai.errors import ModelUnavailable, Overloaded, ValidationFailed
from tests.conftest import isolated_settings, remote_config

A, B = "http://a.test", "http://b.test"
SSE = {"content-type": "text/event-stream"}


def sse(*texts: str, usage: tuple[int, int] = (7, 2)) -> bytes:
    events = [
        {"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]} for t in texts
    ]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    events.append(
        {"choices": [], "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}
    )
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n"


def engine(
    handler: Callable[[httpx.Request], httpx.Response], urls: str = f"{A},{B}"
) -> RemoteEngine:
    settings = isolated_settings(avibe_backend="remote", avibe_upstream_urls=urls)
    return RemoteEngine(remote_config(settings), transport=httpx.MockTransport(handler))


def request() -> GenerationRequest:
    return GenerationRequest(
        request_id="r-1",
        sampling=SamplingParams(max_tokens=2, temperature=0),
        messages=[ChatMessage.text("user", "Привет")],
        deadline=time.monotonic() + 30,
    )


async def collect(e: RemoteEngine) -> tuple[str, list]:
    chunks = [c async for c in e.generate(request())]
    return "".join(c.text for c in chunks), chunks


def models_or(handler: Callable[[httpx.Request], httpx.Response]):
    def route(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "avibe-upstream"}]})
        return handler(req)

    return route


async def test_a_refused_connection_before_the_first_token_is_retried_elsewhere() -> None:
    seen: list[str] = []

    def chat(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.host)
        if req.url.host == "a.test":
            raise httpx.ConnectError("connection refused", request=req)
        body = json.loads(req.content)
        assert body["model"] == "avibe-upstream" and body["stream"] is True
        assert req.headers["X-Request-ID"] == "r-1"
        return httpx.Response(200, headers=SSE, content=sse("Пар", "иж"))

    e = engine(models_or(chat))
    await e.start()
    e.upstreams[1].outstanding = 5  # make A the first choice
    text, chunks = await collect(e)
    await e.stop()
    assert seen == ["a.test", "b.test"]
    assert text == "Париж"
    final = chunks[-1]
    assert (final.finish_reason, final.input_tokens, final.generated_tokens) == ("length", 7, 2)
    assert e.upstreams[0].failures == 1


async def test_events_split_anywhere_by_the_network_arrive_whole() -> None:
    """An upstream's bytes arrive in arbitrary pieces: mid-line, mid-UTF-8 character, with
    CRLF line ends, and the last line without its newline. The text is still exact."""
    body = sse("Пар", "иж", " — столица").replace(b"\n", b"\r\n").rstrip(b"\r\n")
    pieces = [body[i : i + 3] for i in range(0, len(body), 3)]  # splits "П" (2 bytes) etc.

    class Trickle(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            for piece in pieces:
                yield piece

    e = engine(models_or(lambda req: httpx.Response(200, headers=SSE, stream=Trickle())), urls=A)
    await e.start()
    text, chunks = await collect(e)
    await e.stop()
    assert text == "Париж — столица"
    assert (chunks[-1].finish_reason, chunks[-1].generated_tokens) == ("length", 2)


async def test_5xx_before_the_first_token_is_retried_and_all_busy_means_overloaded() -> None:
    e = engine(models_or(lambda req: httpx.Response(503, json={"error": {"message": "busy"}})))
    await e.start()
    with pytest.raises(Overloaded):
        await collect(e)
    await e.stop()


async def test_a_client_error_is_not_retried() -> None:
    calls = []

    def bad(req: httpx.Request) -> httpx.Response:
        calls.append(req.url.host)
        return httpx.Response(400, json={"error": {"message": "context too long"}})

    e = engine(models_or(bad))
    await e.start()
    with pytest.raises(ValidationFailed, match="context too long"):
        await collect(e)
    await e.stop()
    assert len(calls) == 1


async def test_a_broken_stream_after_the_first_token_is_not_retried() -> None:
    calls = []

    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
            raise httpx.ReadError("connection reset")

    def chat(req: httpx.Request) -> httpx.Response:
        calls.append(req.url.host)
        return httpx.Response(200, headers=SSE, stream=Broken())

    e = engine(models_or(chat))
    await e.start()
    got = []
    with pytest.raises(ModelUnavailable):
        async for chunk in e.generate(request()):
            got.append(chunk.text)
    await e.stop()
    assert got == ["Hi"] and len(calls) == 1


async def test_readiness_follows_probes_and_ejected_upstreams_come_back() -> None:
    up = {"a.test": False, "b.test": False}

    def route(req: httpx.Request) -> httpx.Response:
        if not up[req.url.host]:
            raise httpx.ConnectError("down", request=req)
        return httpx.Response(200, json={"data": [{"id": "m"}]})

    e = engine(route)
    await e.start()
    status = e.status()
    assert status.state.value == "failed" and "no upstream answers" in (status.reason or "")
    up["b.test"] = True
    await e.check_health()
    assert e.status().state.value == "ready"
    assert e.status().device == "remote (1/2 upstreams healthy)"
    await e.stop()


def test_payload_carries_images_and_the_thinking_switch() -> None:
    image = Image.new("RGB", (4, 4), "red")
    req = GenerationRequest(
        request_id="x",
        sampling=SamplingParams(max_tokens=5, temperature=0.5, top_k=3, stop=("\n",), seed=1),
        messages=[ChatMessage("user", (ImagePart(image), TextPart("что это?")))],
    )
    path, body = upstream_payload(req, "avision")
    assert path == "/chat/completions"
    parts = body["messages"][0]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert parts[1] == {"type": "text", "text": "что это?"}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert (body["top_k"], body["stop"], body["seed"]) == (3, ["\n"], 1)
    assert body["stream_options"] == {"include_usage": True}
    assert "presence_penalty" not in body and "frequency_penalty" not in body  # 0: off


def test_payload_passes_the_openai_penalties_to_vllm() -> None:
    sampling = SamplingParams(max_tokens=5, presence_penalty=0.5, frequency_penalty=-0.25)
    req = GenerationRequest("x", sampling, messages=[ChatMessage.text("user", "hi")])
    _, body = upstream_payload(req, "avibe")
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.5, -0.25)


def test_big_images_go_upstream_scaled_to_avision_max_pixels_as_jpeg() -> None:
    import base64
    import io

    photo = Image.effect_noise((4000, 3000), 60).convert("RGB")  # 12 MP, incompressible
    req = GenerationRequest(
        request_id="big",
        sampling=SamplingParams(max_tokens=5),
        messages=[ChatMessage("user", (ImagePart(photo), TextPart("что это?")))],
    )
    _, body = upstream_payload(req, "avision", max_pixels=1003520)
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size[0] * sent.size[1] <= 1003520
    assert abs(sent.size[0] / sent.size[1] - 4 / 3) < 0.01
    assert len(url) < 2_000_000  # a full-size PNG of it was ~39 MB


async def test_a_malformed_upstream_event_is_retried_not_a_500() -> None:
    def chat(req: httpx.Request) -> httpx.Response:
        if req.url.host == "a.test":
            return httpx.Response(200, headers=SSE, content=b"data: {not json\n\n")
        return httpx.Response(200, headers=SSE, content=sse("ok"))

    e = engine(models_or(chat))
    await e.start()
    e.upstreams[1].outstanding = 5  # make A the first choice
    text, _ = await collect(e)
    await e.stop()
    assert text == "ok"
    assert e.upstreams[0].failures == 1


async def test_closing_the_answer_closes_the_upstream_stream() -> None:
    closed: list[bool] = []

    class Stream(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[override]
            yield sse("a").split(b"\n\n")[0] + b"\n\n"  # one whole event, then silence
            await asyncio.sleep(30)  # the behaviour under test: an upstream gone silent
            yield b""

        async def aclose(self) -> None:
            closed.append(True)

    e = engine(models_or(lambda req: httpx.Response(200, headers=SSE, stream=Stream())))
    await e.start()
    answer = e.generate(request())
    await anext(answer)
    await answer.aclose()  # the client went away
    await e.stop()
    assert closed == [True]


def constrained(kind: str, **fields: object) -> GenerationRequest:
    from avito_ai.engines.base import OutputConstraint

    return GenerationRequest(
        "x",
        SamplingParams(max_tokens=5),
        messages=[ChatMessage.text("user", "hi")],
        constraint=OutputConstraint(kind, "root ::= ...", **fields),  # type: ignore[arg-type]
    )


def test_constraints_travel_in_each_upstreams_own_fields() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    json_schema = constrained("json_schema", schema=schema, name="listing", strict=True)
    for flavour in ("openai", "vllm", "sglang"):
        _, body = upstream_payload(json_schema, "m", flavour=flavour)  # type: ignore[arg-type]
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "listing", "schema": schema, "strict": True},
        }
        _, body = upstream_payload(constrained("json_object"), "m", flavour=flavour)  # type: ignore[arg-type]
        assert body["response_format"] == {"type": "json_object"}
    regex, grammar = constrained("regex", pattern="[0-9]+"), constrained("grammar", pattern="g")
    assert upstream_payload(regex, "m", flavour="vllm")[1]["structured_outputs"] == {
        "regex": "[0-9]+"
    }
    assert upstream_payload(grammar, "m", flavour="vllm")[1]["structured_outputs"] == {
        "grammar": "g"
    }
    assert upstream_payload(regex, "m", flavour="sglang")[1]["regex"] == "[0-9]+"
    assert upstream_payload(grammar, "m", flavour="sglang")[1]["ebnf"] == "g"


def test_a_plain_openai_upstream_declares_json_only() -> None:
    settings = isolated_settings(avibe_backend="remote", avibe_upstream_urls=A)
    plain = RemoteEngine(remote_config(settings)).capabilities().constraints
    assert plain == {"json_schema", "json_object"}
    assert RemoteEngine(remote_config(settings), flavour="vllm").capabilities().constraints == {
        "json_schema",
        "json_object",
        "regex",
        "grammar",
    }


def scripted(events: list[dict], sent: list[dict]) -> RemoteEngine:
    """One upstream answering every request with `events` (then [DONE]), recording bodies."""
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"

    def chat(req: httpx.Request) -> httpx.Response:
        sent.append(json.loads(req.content))
        return httpx.Response(200, headers=SSE, content=body.encode())

    return engine(models_or(chat), urls=A)


async def test_upstream_logprobs_are_asked_for_checked_and_passed_on() -> None:
    sent: list[dict] = []
    entry = {"token": "ok", "logprob": -0.5, "bytes": [111, 107],
             "top_logprobs": [{"token": "ok", "logprob": -0.5, "bytes": [111, 107]}]}  # fmt: skip
    events = [
        {"choices": [{"index": 0, "delta": {"content": "ok"}, "logprobs": {"content": [entry]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
    ]
    e = scripted(events, sent)
    await e.start()
    asked = dataclasses.replace(
        request(), sampling=SamplingParams(max_tokens=2, logprobs=True, top_logprobs=1)
    )
    chunks = [c async for c in e.generate(asked)]
    await e.stop()
    assert (sent[0]["logprobs"], sent[0]["top_logprobs"]) == (True, 1)
    tokens = [t for c in chunks for t in c.logprobs or ()]
    assert [(t.token, t.logprob, t.bytes) for t in tokens] == [("ok", -0.5, (111, 107))]
    assert tokens[0].top == (("ok", -0.5, (111, 107)),)


async def test_n_travels_to_the_upstream_and_choices_come_back_by_index() -> None:
    sent: list[dict] = []
    events = [
        {"choices": [{"index": i, "delta": {"content": f"c{i}"}} for i in (2, 0, 1)]},
        {"choices": [{"index": i, "delta": {}, "finish_reason": "stop"} for i in range(3)]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}},
    ]
    e = scripted(events, sent)
    await e.start()
    sampled = SamplingParams(max_tokens=2, n=3, temperature=1.0)  # sampled: n is sent
    asked = dataclasses.replace(request(), sampling=sampled)
    chunks = [c async for c in e.generate(asked)]
    await e.stop()
    assert sent[0]["n"] == 3
    assert [(c.index, c.text) for c in chunks[:-1]] == [(2, "c2"), (0, "c0"), (1, "c1")]
    assert [end.index for end in chunks[-1].choices or ()] == [0, 1, 2]
    from avito_ai.engines.remote.events import InvalidAnswer, UsageBounds, parse_event

    past = json.dumps({"choices": [{"index": 3, "delta": {"content": "x"}}]}).encode()
    with pytest.raises(InvalidAnswer, match="index 3"):
        parse_event(past, UsageBounds(100, 6), 3)
