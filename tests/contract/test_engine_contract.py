"""vLLM 0.33.0 and SGLang 0.5.23 themselves as the contract of the engine-process and
remote backends: every command line the service builds goes through the engine's own
parser; every request body it sends through the engine's own request models and their
conversion to sampling parameters; streams written with the engine's own response classes
and its own reasoning and tool parsers come out right through the service in every dialect;
the engine's own tracer reaches an OTLP/HTTP receiver as the service configures it.

The engines run in their own environments (`make engine-envs`), in subprocesses; nothing of
them is imported here. Without the environments these tests skip, naming the target; with
CI=true they fail instead (`.ci/run` builds the environments first).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from PIL import Image

from avito_ai.config import ENGINE_VERSIONS, Role, Settings
from avito_ai.engines.base import (
    ChatMessage,
    GenerationRequest,
    ImagePart,
    OutputConstraint,
    SamplingParams,
    TextPart,
    ToolCall,
    ToolSpec,
)
from avito_ai.engines.process.check import engine_arguments
from avito_ai.engines.process.commands import EngineSpec, engine_spec
from avito_ai.engines.remote.engine import RemoteEngine
from avito_ai.engines.remote.wire import upstream_payload
from tests.api.conftest import running
from tests.conftest import engine_set, isolated_settings, process_engine, remote_config
from tests.contract.engines import ENGINES, Worker, command_for, qwen3_tokenizer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=ENGINES)
def worker(request: pytest.FixtureRequest) -> Iterator[Worker]:
    engine = Worker(request.param)
    assert engine.version == ENGINE_VERSIONS[request.param]
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return qwen3_tokenizer(tmp_path_factory.mktemp("qwen3-tokenizer"))


# --- command lines ---------------------------------------------------------------------

EAGLE = {"avibe_model": "AvitoTech/avibe", "avibe_draft_model": "AvitoTech/avibe-eagle"}
VISION = {"avision_model": "AvitoTech/avision", "avision_max_images": 3}


def configurations(engine: str) -> dict[str, tuple[Role, dict[str, Any]]]:
    """Every kind of command line the service builds: (role, settings)."""
    extra = "--enforce-eager" if engine == "vllm" else "--disable-cuda-graph"
    return {
        "A-Vibe alone": ("avibe", {"avibe_model": "AvitoTech/avibe"}),
        "A-Vibe with its EAGLE-3 draft": ("avibe", {**EAGLE, "dtype": "float16"}),
        "A-Vibe, 8 draft tokens, 32k context, TP 2, extra args": (
            "avibe",
            {
                **EAGLE,
                "avibe_speculative_tokens": 8,
                "avibe_max_model_len": 32768,
                "avibe_tensor_parallel_size": 2,
                "avibe_gpu_memory": 0.7,
                "avibe_engine_args": extra,
                "dtype": "bfloat16",
            },
        ),
        "A-Vision with its image limit, sharing the GPU": (
            "avision",
            {**VISION, "avision_max_model_len": 16384, "avision_tensor_parallel_size": 2},
        ),
        "A-Vibe with a served name": ("avibe", {**EAGLE, "avibe_upstream_model": "avibe"}),
    }


def spec_of(engine: str, role: Role, values: dict[str, Any], port: int = 8101) -> EngineSpec:
    both = {"avibe_backend": engine}
    if role == "avision":  # both models, sharing the GPU
        both["avision_backend"] = engine
        values = {"avibe_model": "AvitoTech/avibe", **values}
    settings = isolated_settings(**both, **values, **{f"{engine}_command": command_for(engine)})
    return engine_spec(role, settings.engines, port)


def test_every_command_line_passes_the_engines_own_parser(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM: its `serve` parser, validate_parsed_serve_args, validate_api_server_args and
    the AsyncEngineArgs they make (the CPU platform forced for the parser: without a GPU
    vLLM cannot infer a device and builds no parser at all). SGLang: prepare_server_args."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    engine = worker.engine
    specs = {name: spec_of(engine, *case) for name, case in configurations(engine).items()}
    results = worker.ask(
        "command_lines", command_lines=[engine_arguments(s) for s in specs.values()]
    )
    for (name, spec), got in zip(specs.items(), results, strict=True):
        assert got["accepted"], f"{name}: {got.get('error')}"
        argv = spec.argv

        def value(flag: str, argv: list[str] = argv) -> str:
            return argv[argv.index(flag) + 1]

        if engine == "vllm":
            assert got["model"] == argv[argv.index("serve") + 1]
            assert got["served_model_name"] == [value("--served-model-name")]
            assert got["dtype"] == value("--dtype")
            assert got["gpu_memory_utilization"] == float(value("--gpu-memory-utilization"))
            assert got["tensor_parallel_size"] == int(value("--tensor-parallel-size"))
            assert got["scheduling_policy"] == "priority"
            assert got["structured_outputs"] == {
                "backend": "xgrammar",
                "disable_any_whitespace": True,
            }
            assert (got["tool_call_parser"], got["enable_auto_tool_choice"]) == ("hermes", True)
            assert (got["reasoning_parser"] or None) == ("qwen3" if spec.role == "avibe" else None)
            assert got["otlp_traces_endpoint"] == "http://collector:4318/v1/traces"
            if "--speculative-config" in argv:
                assert got["speculative"] == json.loads(value("--speculative-config"))
                assert got["speculative"]["method"] == "eagle3"
            if spec.role == "avision":
                assert got["limit_mm_per_prompt"] == {"image": 3}
            if "--max-model-len" in argv:
                assert got["max_model_len"] == int(value("--max-model-len"))
            assert got["enforce_eager"] == ("--enforce-eager" in argv)
        else:
            assert got["model_path"] == value("--model-path")
            assert got["served_model_name"] == value("--served-model-name")
            assert got["mem_fraction_static"] == float(value("--mem-fraction-static"))
            assert got["tp_size"] == int(value("--tp-size"))
            assert got["enable_metrics"] and got["constrained_json_disable_any_whitespace"]
            assert got["tool_call_parser"] == "qwen25"
            assert (got["reasoning_parser"] or None) == ("qwen3" if spec.role == "avibe" else None)
            assert got["enable_priority_scheduling"] and got["schedule_low_priority_values_first"]
            assert (got["default_priority_value"], got["schedule_policy"]) == (0, "fcfs")
            assert got["enable_trace"] and got["otlp_traces_endpoint"] == (
                "http://collector:4318/v1/traces"
            )
            if "--speculative-algorithm" in argv:
                steps = int(value("--speculative-num-steps"))
                assert got["speculative_algorithm"] == "EAGLE3"
                assert got["speculative_draft_model_path"] == "AvitoTech/avibe-eagle"
                assert (got["speculative_num_steps"], got["speculative_eagle_topk"]) == (steps, 1)
                assert got["speculative_num_draft_tokens"] == steps + 1
            if "--context-length" in argv:
                assert got["context_length"] == int(value("--context-length"))
            assert got["disable_cuda_graph"] == ("--disable-cuda-graph" in argv)


def test_the_check_is_real_the_issues_refused_lines_are_refused(worker: Worker) -> None:
    """What the engines said of the lines before the fix (and of a bad extra argument)."""
    spec = spec_of(worker.engine, "avibe", {**EAGLE, "avibe_engine_args": "--no-such-flag"})
    bad = engine_arguments(spec)
    lines = [bad]
    if worker.engine == "vllm":
        old = engine_arguments(spec_of("vllm", "avibe", EAGLE))
        old[old.index("--structured-outputs-config") + 1] = '{"disable_any_whitespace":true}'
        lines.append(old)
    results = worker.ask("command_lines", command_lines=lines)
    assert not results[0]["accepted"] and "--no-such-flag" in results[0]["error"]
    if worker.engine == "vllm":
        assert not results[1]["accepted"]
        assert "disable_any_whitespace is only supported for xgrammar" in results[1]["error"]


# --- request bodies ----------------------------------------------------------------------

WEATHER = ToolSpec(
    "get_weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "The weather in a city",
)
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def _image() -> ImagePart:
    return ImagePart(Image.new("RGB", (64, 48), (200, 30, 30)))


def requests_sent() -> dict[str, tuple[GenerationRequest, dict[str, Any]]]:
    """Every kind of request the remote backend sends, and what it must become there."""

    def ask(messages: list[ChatMessage] | None = None, **fields: Any) -> GenerationRequest:
        sampling = fields.pop("sampling", SamplingParams(max_tokens=16))
        return GenerationRequest(
            request_id="r",
            sampling=sampling,
            messages=messages if messages is not None else [ChatMessage.text("user", "Hi")],
            **fields,
        )

    history = [
        ChatMessage.text("system", "Be brief."),
        ChatMessage.text("user", "Weather in Paris?"),
        ChatMessage("assistant", (), (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
        ChatMessage("tool", (TextPart('{"temp": 21}'),), tool_call_id="call_1"),
    ]
    sampled = SamplingParams(
        max_tokens=32, temperature=0.7, top_p=0.9, top_k=20, repetition_penalty=1.1,
        presence_penalty=0.5, frequency_penalty=0.25, stop=("END",), seed=7, n=3,
    )  # fmt: skip
    return {
        "plain chat, greedy": (ask(), {"temperature": 0.0, "n": 1, "max_tokens": 16}),
        "every sampling option, n=3": (
            ask(sampling=sampled, priority=1),
            {
                "temperature": 0.7,
                "top_p": 0.9,
                "top_k": 20,
                "repetition_penalty": 1.1,
                "presence_penalty": 0.5,
                "frequency_penalty": 0.25,
                "stop": ["END"],
                "seed": 7,
                "n": 3,
                "priority": 1,
            },
        ),
        "completions with logprobs": (
            ask(
                [],
                prompt="The capital of France is",
                sampling=SamplingParams(max_tokens=8, logprobs=True, top_logprobs=3),
            ),
            {"logprobs": 3, "max_tokens": 8},
        ),
        "chat with top logprobs": (
            ask(sampling=SamplingParams(max_tokens=8, logprobs=True, top_logprobs=5)),
            {"logprobs": 5},
        ),
        "tools, auto": (ask(tools=(WEATHER,)), {"tools": ["get_weather"], "tool_choice": "auto"}),
        "tools, none": (ask(tools=(WEATHER,), tool_choice="none"), {"tool_choice": "none"}),
        "tools, required": (
            ask(tools=(WEATHER,), tool_choice="required", parallel_tool_calls=False),
            {"tool_choice": "required", "parallel_tool_calls": False},
        ),
        "tools, one named": (
            ask(tools=(WEATHER,), forced_tool="get_weather"),
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        "history with a call and its result": (
            ask(history, tools=(WEATHER,)),
            {
                "messages": [
                    {"role": "system", "parts": [], "tool_calls": 0},
                    {"role": "user", "parts": [], "tool_calls": 0},
                    {"role": "assistant", "parts": [], "tool_calls": 1},
                    {"role": "tool", "parts": [], "tool_calls": 0},
                ]
            },
        ),
        "an image": (
            ask([ChatMessage("user", (TextPart("What is it?"), _image()))]),
            {"messages": [{"role": "user", "parts": ["text", "image_url"], "tool_calls": 0}]},
        ),
        "thinking on": (
            ask(enable_thinking=True),
            {"chat_template_kwargs": {"enable_thinking": True}},
        ),
        "a JSON schema": (
            ask(constraint=OutputConstraint("json_schema", "", schema=SCHEMA, strict=True)),
            {"structured": "json_schema"},
        ),
        "a JSON object": (
            ask(constraint=OutputConstraint("json_object", "")),
            {"structured": "json_object"},
        ),
        "a regex": (
            ask(constraint=OutputConstraint("regex", "", pattern=r"\d{3}")),
            {"structured": ("regex", r"\d{3}")},
        ),
        "a grammar": (
            ask(constraint=OutputConstraint("grammar", "", pattern='root ::= "yes" | "no"')),
            {"structured": ("grammar", 'root ::= "yes" | "no"')},
        ),
        "n=3 at temperature 0": (
            ask(sampling=SamplingParams(max_tokens=8, n=3)),
            {"n": 1, "temperature": 0.0},  # one greedy answer given three times
        ),
    }


def _structured(engine: str, got: dict[str, Any] | None, expected: Any) -> None:
    assert got is not None, "the constraint was dropped"
    if engine == "vllm":
        if expected == "json_schema":
            assert got["json"] == SCHEMA
        elif expected == "json_object":
            assert got.get("json_object") is True or got.get("json") == {"type": "object"}
        else:
            kind, pattern = expected
            assert got[kind] == pattern
    else:
        if expected == "json_schema":
            assert json.loads(got["json_schema"]) == SCHEMA
        elif expected == "json_object":
            assert json.loads(got["json_schema"]) == {"type": "object"}
        else:
            kind, pattern = expected
            assert got["ebnf" if kind == "grammar" else kind] == pattern


def test_every_request_body_becomes_the_intended_sampling(worker: Worker) -> None:
    """The bodies as the engine-process backend sends them (with priority, in the engine's
    own constraint fields), through the engine's request model and its conversion to the
    sampling parameters it generates with: accepted, nothing unknown (silently dropped),
    and each option where it was meant to go."""
    cases = requests_sent()
    sent = []
    for request, _ in cases.values():
        copies = request.sampling.n > 1 and request.sampling.temperature <= 0
        if copies:  # what RemoteEngine.generate sends for greedy choices
            sampling = SamplingParams(max_tokens=request.sampling.max_tokens)
            request = dataclasses.replace(request, sampling=sampling)
        path, body = upstream_payload(request, "AvitoTech/avibe", 1003520, True, worker.engine)
        sent.append({"path": path, "body": body})
    results = worker.ask("requests", items=sent)
    for (name, (_, expected)), got, item in zip(cases.items(), results, sent, strict=True):
        assert got["accepted"], f"{name}: {got.get('error')}"
        assert got["unknown_fields"] == [], f"{name}: {got['unknown_fields']} silently dropped"
        assert got["priority"] == item["body"]["priority"], name
        assert got["include_usage"] is True, name
        for key, want in expected.items():
            if key == "structured":
                _structured(worker.engine, got["structured"], want)
            else:
                assert (
                    got[key] == pytest.approx(want) if isinstance(want, float) else got[key] == want
                ), f"{name}: {key} is {got[key]!r}, not {want!r}"
        if "structured" not in expected:
            assert not got["structured"], f"{name}: a constraint nobody asked for"


def test_greedy_n_as_the_engine_takes_it(worker: Worker) -> None:
    """vLLM refuses n > 1 at temperature 0, which the service therefore never sends (it
    asks once and gives the one greedy answer n times); SGLang would take it."""
    body = upstream_payload(
        GenerationRequest("r", SamplingParams(max_tokens=8, n=3), [ChatMessage.text("user", "Hi")]),
        "m",
    )[1] | {"n": 3}
    (got,) = worker.ask("requests", items=[{"path": "/chat/completions", "body": body}])
    if worker.engine == "vllm":
        assert not got["accepted"] and "n must be 1 when using greedy sampling" in got["error"]
    else:
        assert got["accepted"] and (got["n"], got["temperature"]) == (3, 0.0)


# --- streams through the service -----------------------------------------------------------

QWEN3_CALL = (
    "<think>\nLet me check the weather first.\n</think>\n\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    },
}


def _served(events: list[str]) -> RemoteEngine:
    """A remote engine whose upstream answers every request with `events`, as an engine
    server writes them (`data: <json>` lines, then `data: [DONE]`)."""
    body = "".join(f"data: {e}\n\n" for e in events) + "data: [DONE]\n\n"

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "AvitoTech/avibe"}]})
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    settings = isolated_settings(avibe_backend="remote", avibe_upstream_urls="http://engine")
    return RemoteEngine(remote_config(settings), transport=httpx.MockTransport(answer))


def _settings() -> Settings:
    return isolated_settings(rate_limit_per_minute=100000, rate_limit_per_hour=100000)


def test_a_qwen3_tool_call_with_thinking_comes_out_right_in_every_dialect(
    worker: Worker, tokenizer: Path
) -> None:
    """Real Qwen3-style model text (a <think> block, then a Hermes <tool_call>) through the
    engine's own qwen3 reasoning parser and its hermes (vLLM) / qwen25 (SGLang) tool parser,
    token by token, written with its own response classes."""
    chat = {"model": "m", "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [WEATHER_TOOL], "stream": True}  # fmt: skip
    spec = {"kind": "chat", "tokenizer": str(tokenizer), "model_text": QWEN3_CALL,
            "thinking": True, "request": chat}  # fmt: skip
    events = worker.ask("stream", spec=spec)
    assert any('"tool_calls"' in e for e in events) and any("reasoning" in e for e in events)

    async def dialects() -> dict[str, Any]:
        async with running(_settings(), engine_set(_served(events))) as (_, http):
            user = [{"role": "user", "content": "Weather in Paris?"}]
            openai = await http.post(
                "/v1/chat/completions",
                json={"model": "avibe", "messages": user, "tools": [WEATHER_TOOL],
                      "reasoning_effort": "high"},
            )  # fmt: skip
            responses = await http.post(
                "/v1/responses",
                json={"model": "avibe", "input": "Weather in Paris?",
                      "tools": [{"type": "function", **WEATHER_TOOL["function"]}],
                      "reasoning": {"effort": "high"}},
            )  # fmt: skip
            messages = await http.post(
                "/v1/messages",
                json={"model": "avibe", "max_tokens": 256, "messages": user,
                      "tools": [{"name": "get_weather",
                                 "input_schema": WEATHER_TOOL["function"]["parameters"]}],
                      "thinking": {"type": "enabled", "budget_tokens": 1024}},
            )  # fmt: skip
            streamed = await http.post(
                "/v1/chat/completions",
                json={"model": "avibe", "messages": user, "tools": [WEATHER_TOOL], "stream": True,
                      "reasoning_effort": "high"},
            )  # fmt: skip
            return {
                "openai": openai.json(),
                "responses": responses.json(),
                "messages": messages.json(),
                "stream": streamed.text,
            }

    out = asyncio.run(dialects())
    thought = "\nLet me check the weather first.\n"
    message = out["openai"]["choices"][0]["message"]
    assert out["openai"]["choices"][0]["finish_reason"] == "tool_calls"
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 2}
    assert message["reasoning_content"].strip() == thought.strip()
    items = {item["type"]: item for item in out["responses"]["output"]}
    assert items["function_call"]["name"] == "get_weather"
    assert json.loads(items["function_call"]["arguments"]) == {"city": "Paris", "days": 2}
    assert "reasoning" in items
    blocks = {block["type"]: block for block in out["messages"]["content"]}
    assert blocks["tool_use"]["name"] == "get_weather"
    assert blocks["tool_use"]["input"] == {"city": "Paris", "days": 2}
    assert blocks["thinking"]["thinking"].strip() == thought.strip()
    assert out["messages"]["stop_reason"] == "tool_use"
    chunks = [
        json.loads(line[6:]) for line in out["stream"].splitlines() if line.startswith("data: {")
    ]
    arguments = "".join(
        c["choices"][0]["delta"].get("tool_calls", [{}])[0].get("function", {}).get("arguments")
        or ""
        for c in chunks
        if c.get("choices")
    )
    assert json.loads(arguments) == {"city": "Paris", "days": 2}


def test_logprobs_with_minus_infinity_and_the_floor_are_carried(
    worker: Worker, tokenizer: Path
) -> None:
    """A token of probability zero: SGLang writes its log probability as null (pydantic's
    JSON has no infinity), vLLM floors it at -9999.0. Neither refuses the answer."""
    text = "The capital of France is Paris."
    spec = {"kind": "completions", "tokenizer": str(tokenizer), "model_text": text,
            "logprobs": {"1": "-inf"}}  # fmt: skip
    events = worker.ask("stream", spec=spec)
    assert any(("null" if worker.engine == "sglang" else "-9999.0") in e for e in events)
    usage_only = [e for e in events if json.loads(e)["choices"] == []]
    assert len(usage_only) == 1 and json.loads(usage_only[0])["usage"]["completion_tokens"] > 1

    async def ask() -> tuple[dict[str, Any], dict[str, Any]]:
        async with running(_settings(), engine_set(_served(events))) as (_, http):
            body = {"model": "avibe", "prompt": "Q", "max_tokens": 64, "logprobs": 1}
            completions = (await http.post("/v1/completions", json=body)).json()
            native = await http.post(
                "/api/v1/text/generate",
                json={"prompt": "Q", "max_tokens": 64, "logprobs": True},
            )
            return completions, native.json()

    completions, native = asyncio.run(ask())
    choice = completions["choices"][0]
    assert choice["text"] == text
    scores = choice["logprobs"]["token_logprobs"]
    assert scores[0] == -0.25 and len(scores) == text_tokens(events)
    floor = scores[1]
    # -inf as the service writes it (JSON has no infinity), or vLLM's floor
    assert floor is None or floor == -9999.0 or floor == float("-inf")
    assert native["data"]["text"] == text


def text_tokens(events: list[str]) -> int:
    """The events that carry a token (text), one each."""
    chosen = [json.loads(e)["choices"] for e in events]
    return sum(1 for c in chosen if c and c[0].get("text"))


def test_n_sampled_choices_streamed_together_come_back_each_whole(
    worker: Worker, tokenizer: Path
) -> None:
    """n > 1 with sampling travels as n; the engine streams the choices' tokens in turn,
    each with its index: the service gives each choice whole, with its own count."""
    texts = ["The capital of France is Paris.", "Paris.", "It is Paris, of course."]
    events = worker.ask("stream", spec={"kind": "choices", "tokenizer": str(tokenizer),
                                        "texts": texts})  # fmt: skip

    async def ask() -> tuple[dict[str, Any], str]:
        async with running(_settings(), engine_set(_served(events))) as (_, http):
            body = {"model": "avibe", "messages": [{"role": "user", "content": "Capital?"}],
                    "n": 3, "temperature": 0.9, "max_tokens": 64}  # fmt: skip
            whole = (await http.post("/v1/chat/completions", json=body)).json()
            streamed = await http.post("/v1/chat/completions", json={**body, "stream": True})
            return whole, streamed.text

    whole, streamed = asyncio.run(ask())
    assert [c["message"]["content"] for c in whole["choices"]] == texts
    assert [c["finish_reason"] for c in whole["choices"]] == ["stop"] * 3
    assert whole["usage"]["completion_tokens"] == len(events) - 1  # a token an event
    deltas: dict[int, str] = {}
    for line in streamed.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                deltas[choice["index"]] = deltas.get(choice["index"], "") + (
                    choice["delta"].get("content") or ""
                )
    assert [deltas[i] for i in range(3)] == texts


def test_an_error_mid_stream_ends_the_answer_with_the_engines_message(worker: Worker) -> None:
    first = (
        '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
        '"choices":[{"index":0,"delta":{"content":"Par"}}]}'
    )
    events = [first, worker.ask("error_event", message="CUDA out of memory")]

    async def ask() -> str:
        async with running(_settings(), engine_set(_served(events))) as (_, http):
            user = [{"role": "user", "content": "Hi"}]
            streamed = await http.post(
                "/v1/chat/completions", json={"model": "avibe", "messages": user, "stream": True}
            )
            return streamed.text

    text = asyncio.run(ask())
    assert '"Par"' in text and "CUDA out of memory" in text and text.rstrip().endswith("[DONE]")


# --- tracing -------------------------------------------------------------------------------


class Receiver:
    """An OTLP/HTTP receiver: the span names posted to /v1/traces, and any other path."""

    def __init__(self) -> None:
        self.spans: list[str] = []
        self.paths: list[str] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.paths.append(self.path)
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(body)
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            received.spans += [s.name for s in scope.spans]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_the_engines_tracer_reaches_an_otlp_http_collector_as_configured(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint and the environment the service gives the engine (its base URL in
    OTEL_EXPORTER_OTLP_ENDPOINT, as for the service itself), handed to the engine's own
    tracer set-up: its span arrives at /v1/traces over OTLP/HTTP (not gRPC, its default)."""
    receiver = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    spec = spec_of(worker.engine, "avibe", EAGLE)
    endpoint = spec.argv[spec.argv.index("--otlp-traces-endpoint") + 1]
    try:  # the worker sets the engine's environment as the supervisor would, then traces
        assert worker.ask("trace", endpoint=endpoint, environment=spec.environment) is True
    finally:
        receiver.server.shutdown()
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    assert f"{worker.engine}-contract-span" in receiver.spans


# --- the real executables ------------------------------------------------------------------


def test_the_real_executable_started_as_the_supervisor_starts_it_fails_on_the_model(
    worker: Worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's own executable, started by the supervisor with the command line it builds
    (EAGLE-3, tracing, extra arguments) and a model folder that does not exist: it gets past
    every argument and fails on the model (exit 1, a crash the supervisor restarts), never on
    an argument (exit 2, `failed`). vLLM without a GPU stops at device detection before it
    parses anything; VLLM_TARGET_DEVICE=cpu (read by vLLM at run time) lets it go on."""
    from avito_ai.engines.process.supervisor import EngineSupervisor

    if worker.engine == "vllm":
        monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    missing = tmp_path / "no-such-model"
    extra = "--enforce-eager" if worker.engine == "vllm" else "--disable-cuda-graph"
    settings = isolated_settings(
        avibe_backend=worker.engine,
        avibe_model=str(missing),
        avibe_draft_model=str(tmp_path / "no-such-draft"),
        avibe_engine_args=extra,
        engine_state_dir=tmp_path,
        **{f"{worker.engine}_command": command_for(worker.engine)},
    )
    supervisor = EngineSupervisor("avibe", settings, tmp_path)
    supervisor.start()
    try:
        deadline = time.monotonic() + 240
        while supervisor.state.state not in ("crashed", "failed") and time.monotonic() < deadline:
            supervisor._stopping.wait(0.2)
        state, reason, tail = (
            supervisor.state.state,
            supervisor.state.reason,
            list(supervisor._tail),
        )
    finally:
        supervisor.stop()
    said = "\n".join(tail)
    assert state == "crashed" and "exited with status 1" in str(reason), said
    assert str(missing) in said, said
    assert "error: argument" not in said and "unrecognized arguments" not in said


def test_a_line_the_real_engine_refuses_is_failed_once_with_its_words(
    worker: Worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM: the issue's line, as the supervisor ran it before the fix; SGLang: a tool
    parser it does not know. The engine exits 2 with its `error:` line; the supervisor says
    `failed` with that line and the setting behind the flag, and does not restart it."""
    from avito_ai.engines.base import EngineState
    from avito_ai.engines.process.supervisor import EngineSupervisor

    if worker.engine == "vllm":
        monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")
        args = "--structured-outputs-config '{\"disable_any_whitespace\":true}'"
        said = [
            "vllm serve: error: argument --structured-outputs-config",
            "disable_any_whitespace is only supported for xgrammar",
            "--structured-outputs-config comes from AVIBE_ENGINE_ARGS",
        ]
    else:
        args = "--tool-call-parser hermes3000"
        said = [
            "error: argument --tool-call-parser: invalid choice: 'hermes3000'",
            "--tool-call-parser comes from AVIBE_ENGINE_ARGS",
        ]
    settings = isolated_settings(
        avibe_backend=worker.engine,
        avibe_model=str(tmp_path / "m"),
        avibe_engine_args=args,
        engine_state_dir=tmp_path,
        **{f"{worker.engine}_command": command_for(worker.engine)},
    )
    supervisor = EngineSupervisor("avibe", settings, tmp_path)
    supervisor.start()
    supervisor._thread.join(timeout=240)  # it gives up by itself: no restart loop
    assert not supervisor._thread.is_alive()
    status = process_engine(settings).status()  # readiness and /api/health
    restarts = supervisor.state.restarts
    supervisor.stop()
    assert restarts == 0 and status.state is EngineState.FAILED
    for words in said:
        assert words in str(status.reason), status.reason


def test_avito_ai_config_checks_the_lines_with_the_installed_engines(tmp_path: Path) -> None:
    """What an operator runs before a deployment: each engine command line, and what the
    installed engine's own parser says of it (exit 1 when one is refused)."""
    import os
    import subprocess
    import sys

    from tests.contract.engines import envs_dir, require

    for engine in ENGINES:
        require(engine)
    env = {
        **os.environ,
        "ENGINE_ENVS_DIR": str(envs_dir()),
        "AVIBE_BACKEND": "vllm",
        "AVIBE_MODEL": "AvitoTech/avibe",
        "AVIBE_DRAFT_MODEL": "AvitoTech/avibe-eagle",
        "AVIBE_ENGINE_ARGS": "--no-such-flag",
        "AVISION_BACKEND": "sglang",
        "AVISION_MODEL": "AvitoTech/avision",
    }
    done = subprocess.run(
        [sys.executable, "-m", "avito_ai", "config", "--check-engines"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = [line for line in done.stdout.splitlines() if line.startswith("#")]
    assert done.returncode == 1, done.stderr
    assert said[0].startswith(f"# avibe engine (vllm): {command_for('vllm')} serve AvitoTech/avibe")
    assert said[1].startswith("#   refused by vLLM 0.33.0:") and "--no-such-flag" in said[1]
    assert said[2].startswith("# avision engine (sglang): ")
    assert said[3].startswith("#   accepted by SGLang 0.5.23's own parser")
