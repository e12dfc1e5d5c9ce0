"""A running service in front of an upstream that sends what no OpenAI-compatible server
should (tests/hostile_upstream.py): every such answer is a clean 503 `model_unavailable`
naming the upstream, never a 500, never a success, never a client charged a fortune."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.servers import ROOT, ServerProcess, dev_server, free_port, serving
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

BAD = [
    "negative_usage",
    "string_usage",
    "list_usage",
    "huge_prompt_tokens",
    "float_usage",
    "choices_7",
    "string_delta",
    "list_finish",
    "numeric_content",
    "no_finish",
    "no_done",
    "late_garbage",
    "not_sse",
    "long_line",
]


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("hostile")
    port = free_port()
    upstream = ServerProcess(
        [sys.executable, str(ROOT / "tests" / "hostile_upstream.py"), str(port)],
        {},
        tmp / "upstream.log",
        port,
    )
    keys = tmp / "keys.txt"
    keys.write_text("sk-team name=team tokens_per_minute=1000000\n")
    env = {
        "AVIBE_BACKEND": "remote",
        "AVIBE_UPSTREAM_URLS": upstream.url,
        "UPSTREAM_HEALTH_INTERVAL": "0.2",  # an ejected upstream is back at the next probe
        "API_KEYS_FILE": str(keys),
        "RATE_LIMIT_PER_MINUTE": "100000",
        "RATE_LIMIT_PER_HOUR": "100000",
    }
    try:
        with serving(dev_server(env, tmp / "front.log")) as srv:
            yield srv
    finally:
        upstream.stop()


def ask(front: ServerProcess, case: str, stream: bool = False) -> httpx.Response:
    wait_until(  # (not ejected)
        lambda: httpx.get(front.url + "/api/health/ready").status_code == 200, 10, "ready"
    )
    return httpx.post(
        front.url + "/v1/chat/completions",
        json={"model": "avibe", "messages": [{"role": "user", "content": case}], "stream": stream},
        headers={"Authorization": "Bearer sk-team"},
        timeout=60,
    )


def used(front: ServerProcess) -> int:
    body = httpx.get(front.url + "/api/metrics", headers={"X-API-Key": "sk-team"}).json()
    return int(body["client"]["tokens_per_minute"]["used"])


def test_a_good_upstream_answers(front: ServerProcess) -> None:
    r = ask(front, "good")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "fine"
    assert r.json()["usage"]["prompt_tokens"] == 5


@pytest.mark.parametrize("case", BAD)
def test_a_misbehaving_upstream_is_a_clean_503(front: ServerProcess, case: str) -> None:
    before = used(front)
    memory = psutil.Process(front.proc.pid).memory_info().rss
    r = ask(front, case)
    assert r.status_code == 503, (case, r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == "model_unavailable"
    assert "avibe upstream" in error["message"], error["message"]
    assert r.headers["x-request-id"]
    assert used(front) - before < 1000  # not 10^15: the figures were not believed
    assert psutil.Process(front.proc.pid).memory_info().rss - memory < 50 * 2**20


def test_a_stream_that_goes_bad_ends_with_an_error_event(front: ServerProcess) -> None:
    r = ask(front, "late_garbage", stream=True)
    assert r.status_code == 200  # the first token had gone out
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["error"]["code"] == "model_unavailable"
    assert "invalid answer" in last["error"]["message"]


def test_the_log_names_the_upstream_address(front: ServerProcess) -> None:
    log = front.output()
    assert "sent an invalid answer" in log and "upstream http://127.0.0.1:" in log
    assert "Traceback" not in log
    assert not Path(front.log_path).read_text().count("internal_error")


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """AVIBE_BACKEND=vllm with the recording upstream standing in for vLLM."""
    tmp = tmp_path_factory.mktemp("fake-vllm")
    env = {
        "AVIBE_BACKEND": "vllm",
        "AVIBE_MODEL": "AvitoTech/avibe",
        "VLLM_COMMAND": f"{sys.executable} {ROOT / 'tests' / 'hostile_upstream.py'} vllm",
        "RATE_LIMIT_PER_MINUTE": "100000",
        "RATE_LIMIT_PER_HOUR": "100000",
    }
    with serving(dev_server(env, tmp / "server.log"), 60) as srv:
        yield srv


def engine_url(srv: ServerProcess) -> str:
    port = httpx.get(srv.url + "/api/metrics").json()["engines"]["avibe"]["port"]
    return f"http://127.0.0.1:{port}"


def test_vllm_gets_its_compact_json_flag_and_each_constraint_in_its_own_field(
    supervised: ServerProcess,
) -> None:
    engine = engine_url(supervised)
    argv = httpx.get(engine + "/argv").json()
    flag = argv.index("--structured-outputs-config")
    assert json.loads(argv[flag + 1]) == {"backend": "xgrammar", "disable_any_whitespace": True}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    sent = [
        {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}},
        {"type": "json_object"},
        {"type": "regex", "regex": "[0-9]{3}"},
        {"type": "grammar", "grammar": 'root ::= "a" | "b"'},
    ]
    for response_format in sent:
        r = httpx.post(
            supervised.url + "/api/v1/text/generate",
            json={"prompt": "hi", "response_format": response_format},
            timeout=30,
        )
        assert r.status_code == 200, r.text
    received = httpx.get(engine + "/recorded").json()[-4:]
    assert received[0]["response_format"] == sent[0]
    assert received[1]["response_format"] == {"type": "json_object"}
    assert received[2]["structured_outputs"] == {"regex": "[0-9]{3}"}
    assert received[3]["structured_outputs"] == {"grammar": 'root ::= "a" | "b"'}
    assert all("response_format" not in body for body in received[2:])


def test_vllm_runs_its_parsers_and_gets_tools_and_the_history_as_sent(
    supervised: ServerProcess,
) -> None:
    """vLLM parses Qwen3's calls and thinking itself (--tool-call-parser hermes
    --reasoning-parser qwen3): the request's tools, choice and history pass through, and
    its reasoning_content and tool_calls deltas come back as ours."""
    engine = engine_url(supervised)
    argv = httpx.get(engine + "/argv").json()
    assert argv[argv.index("--tool-call-parser") + 1] == "hermes"
    assert "--enable-auto-tool-choice" in argv
    assert argv[argv.index("--reasoning-parser") + 1] == "qwen3"
    client = openai.OpenAI(base_url=supervised.url + "/v1", api_key="x", max_retries=0)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(
        model="avibe",
        messages=ask,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        extra_body={"enable_thinking": True},
    )
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and not message.content
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Paris"},
    )
    assert getattr(message, "reasoning_content", None) == "Weather: a tool."
    sent = httpx.get(engine + "/recorded").json()[-1]
    assert sent["tools"] == tools
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}
    assert "structured_outputs" not in sent  # vLLM holds the choice itself
    # Streamed, the same call; then the result goes back with the call in the history.
    stream = client.chat.completions.create(model="avibe", messages=ask, tools=tools, stream=True)
    pieces = [
        tc.function.arguments
        for chunk in stream
        for tc in (chunk.choices[0].delta.tool_calls or [] if chunk.choices else [])
        if tc.function and tc.function.arguments
    ]
    assert json.loads("".join(pieces)) == {"city": "Paris"}
    history = [
        *ask,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call.id, "type": "function", "function": call.function.model_dump()}
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    done = client.chat.completions.create(model="avibe", messages=history, tools=tools)
    assert done.choices[0].message.content == "fine"
    sent = httpx.get(engine + "/recorded").json()[-1]
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": call.id}
