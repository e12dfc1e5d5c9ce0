"""Engine processes without processes: the exact command lines built from settings, the
figures read from an engine's metrics, and what a worker answers for each engine state."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from avito_ai.config import ENGINE_VERSIONS, ConfigError, ProcessSettings, load_settings
from avito_ai.engines.base import ChatMessage, EngineState, GenerationRequest, SamplingParams
from avito_ai.engines.process.commands import child_environment, engine_spec
from avito_ai.engines.process.engine import ProcessEngine, engine_figures
from avito_ai.engines.process.supervisor import EngineRecord, state_path
from avito_ai.engines.remote.engine import RemoteEngine
from avito_ai.engines.remote.wire import Flavour
from avito_ai.errors import ModelUnavailable
from tests.conftest import isolated_settings, process_engine, remote_config

EAGLE = {
    "avibe_backend": "vllm",
    "avibe_model": "AvitoTech/avibe",
    "avibe_draft_model": "AvitoTech/avibe-eagle",
    "dtype": "float16",
}


def test_vllm_command_line_with_eagle3_as_the_card_says() -> None:
    spec = engine_spec(
        "avibe", isolated_settings(**EAGLE, vllm_command="/opt/vllm/bin/vllm").engines, 8101
    )
    assert spec.argv == [
        "/opt/vllm/bin/vllm", "serve", "AvitoTech/avibe",
        "--host", "127.0.0.1", "--port", "8101",
        "--served-model-name", "AvitoTech/avibe",
        "--dtype", "float16",
        "--gpu-memory-utilization", "0.9",
        "--tensor-parallel-size", "1",
        "--scheduling-policy", "priority",
        "--structured-outputs-config", '{"backend":"xgrammar","disable_any_whitespace":true}',
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--reasoning-parser", "qwen3",
        "--speculative-config",
        '{"method":"eagle3","model":"AvitoTech/avibe-eagle","num_speculative_tokens":5}',
    ]  # fmt: skip
    assert spec.health_path == "/health" and spec.served_model == "AvitoTech/avibe"


def test_both_models_on_one_gpu_share_its_memory_and_vision_keeps_its_image_limit() -> None:
    settings = isolated_settings(
        **EAGLE,
        avision_backend="vllm",
        avision_model="AvitoTech/avision",
        avision_max_images=2,
        avision_max_model_len=16384,
        avision_tensor_parallel_size=2,
        avision_engine_args='--enforce-eager --chat-template "/x y/t.jinja"',
    )
    vibe = engine_spec("avibe", settings.engines, 1).argv
    vision = engine_spec("avision", settings.engines, 2).argv
    assert vibe[vibe.index("--gpu-memory-utilization") + 1] == "0.55"
    assert vision[vision.index("--gpu-memory-utilization") + 1] == "0.35"
    assert vision[-16:] == [
        "--tensor-parallel-size", "2",
        "--scheduling-policy", "priority",
        "--structured-outputs-config", '{"backend":"xgrammar","disable_any_whitespace":true}',
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--max-model-len", "16384",
        "--limit-mm-per-prompt", '{"image":2}',
        "--enforce-eager", "--chat-template", "/x y/t.jinja",
    ]  # fmt: skip
    assert "--speculative-config" not in vision and "--reasoning-parser" not in vision
    own = isolated_settings(**EAGLE, avibe_gpu_memory=0.7)
    argv = engine_spec("avibe", own.engines, 1).argv
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.7"


def test_sglang_command_line_with_eagle3() -> None:
    settings = isolated_settings(
        **{**EAGLE, "avibe_backend": "sglang"},
        avibe_max_model_len=32768,
        sglang_command="/opt/sglang/bin/python -m sglang.launch_server",
    )
    assert engine_spec("avibe", settings.engines, 30000).argv == [
        "/opt/sglang/bin/python", "-m", "sglang.launch_server",
        "--model-path", "AvitoTech/avibe",
        "--host", "127.0.0.1", "--port", "30000",
        "--served-model-name", "AvitoTech/avibe",
        "--dtype", "float16",
        "--mem-fraction-static", "0.9",
        "--tp-size", "1",
        "--enable-metrics",
        "--enable-priority-scheduling", "--schedule-low-priority-values-first",
        "--default-priority-value", "0",
        "--constrained-json-disable-any-whitespace",
        "--tool-call-parser", "qwen25",
        "--reasoning-parser", "qwen3",
        "--context-length", "32768",
        "--speculative-algorithm", "EAGLE3",
        "--speculative-draft-model-path", "AvitoTech/avibe-eagle",
        "--speculative-num-steps", "5",
        "--speculative-eagle-topk", "1",
        "--speculative-num-draft-tokens", "6",
    ]  # fmt: skip


def test_command_form_fills_port_model_and_python() -> None:
    settings = isolated_settings(
        avibe_backend="command",
        avibe_model="m",
        avibe_engine_command="env A=1 {python} -m server --port {port} --model {model}",
        avibe_engine_health_path="/ready",
    )
    spec = engine_spec("avibe", settings.engines, 9000)
    assert spec.argv == [
        "env",
        "A=1",
        sys.executable,
        "-m",
        "server",
        "--port",
        "9000",
        "--model",
        "m",
    ]
    assert spec.health_path == "/ready" and spec.served_model is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"avibe_backend": "vllm"}, "AVIBE_BACKEND=vllm needs AVIBE_MODEL"),
        ({"avision_backend": "sglang"}, "AVISION_BACKEND=sglang needs AVISION_MODEL"),
        ({"avibe_backend": "command"}, "AVIBE_BACKEND=command needs AVIBE_ENGINE_COMMAND"),
    ],
)
def test_an_engine_without_what_it_needs_is_refused_at_start(
    values, message, clean_environment
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**values)


VLLM_METRICS = """
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="AvitoTech/avibe"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="AvitoTech/avibe"} 1.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="AvitoTech/avibe"} 0.25
# TYPE vllm:spec_decode_num_draft_tokens counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="AvitoTech/avibe"} 1000.0
vllm:spec_decode_num_draft_tokens_created{engine="0",model_name="AvitoTech/avibe"} 1.78e9
# TYPE vllm:spec_decode_num_accepted_tokens counter
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="AvitoTech/avibe"} 640.0
"""
SGLANG_METRICS = """
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m",tp_rank="0"} 8
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m",tp_rank="0"} 4
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m",tp_rank="0"} 0.52
# TYPE sglang:spec_accept_length gauge
sglang:spec_accept_length{model_name="m",tp_rank="0"} 3.1
"""


def test_key_figures_from_the_engines_own_metrics() -> None:
    assert engine_figures("vllm", VLLM_METRICS) == {
        "running": 3.0,
        "waiting": 1.0,
        "kv_cache_usage": 0.25,
        "spec_acceptance_rate": 0.64,
    }
    assert engine_figures("sglang", SGLANG_METRICS) == {
        "running": 8.0,
        "waiting": 4.0,
        "kv_cache_usage": 0.52,
        "spec_accept_length": 3.1,
    }


def _engine_in(tmp_path: Path, **record: object) -> ProcessEngine:
    settings = isolated_settings(
        avibe_backend="command", avibe_engine_command="x", engine_state_dir=tmp_path
    )
    if record:
        fields = {"role": "avibe", "kind": "command", "port": 1, "served_model": None, **record}
        state_path(tmp_path, "avibe").write_text(json.dumps(fields))
    return process_engine(settings)


async def test_what_a_worker_answers_for_each_engine_state(tmp_path: Path) -> None:
    assert _engine_in(tmp_path, state="starting").status().state is EngineState.LOADING
    loading = _engine_in(tmp_path, state="loading weights", pid=7).status()
    assert loading.state is EngineState.LOADING and "loading weights" in str(loading.reason)
    assert _engine_in(tmp_path, state="ready", pid=7).status().state is EngineState.READY

    crashed = _engine_in(
        tmp_path, state="crashed", restarts=1, retry_after=2, reason="killed by SIGKILL"
    )
    status = crashed.status()
    assert status.state is EngineState.FAILED and status.retry_after == 2
    assert "crashed: killed by SIGKILL" in str(status.reason)
    with pytest.raises(ModelUnavailable) as refused:  # fast, with when to come back
        await anext(crashed.generate(None))  # type: ignore[arg-type]
    assert refused.value.retry_after == 2
    # A restart that is loading again still refuses at once: requests do not pile up.
    again = _engine_in(tmp_path, state="loading weights", restarts=1).status()
    assert again.state is EngineState.FAILED


def test_a_worker_without_a_supervisor_says_how_to_start_one(tmp_path: Path) -> None:
    status = _engine_in(tmp_path).status()
    assert status.state is EngineState.FAILED and "avito-ai serve" in str(status.reason)
    assert EngineRecord.read(tmp_path / "nothing.json") is None


def test_with_tracing_on_the_engines_export_their_spans_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vLLM 0.33 and SGLang 0.5.23 export over gRPC unless told http/protobuf, and post to
    the endpoint they are given as it is: the full /v1/traces URL, and the protocol."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    spec = engine_spec("avibe", isolated_settings(**EAGLE).engines, 1)
    vllm = spec.argv
    assert vllm[vllm.index("--otlp-traces-endpoint") + 1] == "http://collector:4318/v1/traces"
    env = child_environment(frozenset(), spec.environment)
    assert env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    assert env["OTEL_SERVICE_NAME"] == "vllm-avibe"
    sglang = engine_spec(
        "avibe", isolated_settings(**{**EAGLE, "avibe_backend": "sglang"}).engines, 1
    )
    at = sglang.argv.index("--otlp-traces-endpoint")
    assert sglang.argv[at - 1 : at + 2] == [
        "--enable-trace", "--otlp-traces-endpoint", "http://collector:4318/v1/traces",
    ]  # fmt: skip
    assert sglang.environment["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c.example/otlp/traces")
    vllm = engine_spec("avibe", isolated_settings(**EAGLE).engines, 1).argv
    assert vllm[vllm.index("--otlp-traces-endpoint") + 1] == "https://c.example/otlp/traces"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert (
        "--otlp-traces-endpoint"
        not in engine_spec("avibe", isolated_settings(**EAGLE).engines, 1).argv
    )


# --- where the engines come from -------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_unset_engine_commands_run_the_engines_from_their_cached_environments(
    tmp_path: Path,
) -> None:
    settings = isolated_settings(engine_envs_dir=tmp_path / "my envs")
    assert settings.process.vllm_command == shlex.quote(
        str(tmp_path / "my envs/vllm-0.33.0/bin/vllm")
    )
    assert shlex.split(settings.process.sglang_command) == [
        str(tmp_path / "my envs/sglang-0.5.23/bin/python"), "-m", "sglang.launch_server",
    ]  # fmt: skip
    argv = engine_spec(
        "avibe", isolated_settings(**EAGLE, engine_envs_dir=tmp_path).engines, 1
    ).argv
    assert argv[0] == str(tmp_path / "vllm-0.33.0/bin/vllm") and argv[1] == "serve"
    own = isolated_settings(vllm_command="vllm", sglang_command="python3 -m sglang.launch_server")
    assert (own.process.vllm_command, own.process.sglang_command) == (
        "vllm",
        "python3 -m sglang.launch_server",
    )


def test_the_makefile_builds_the_versions_the_command_lines_are_made_for() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for engine, version in ENGINE_VERSIONS.items():
        assert f"{engine.upper()}_VERSION := {version}" in makefile
    assert "ENGINE_ENVS_DIR ?= $(HOME)/.cache/avito-ai/engines" in makefile
    assert ProcessSettings.model_fields["engine_envs_dir"].default_factory() == (  # type: ignore[call-arg,misc]
        Path.home() / ".cache/avito-ai/engines"
    )


def test_a_missing_engine_environment_stops_the_start_with_the_setting_and_the_target(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clean_environment,
) -> None:
    from avito_ai.cli import settings_or_exit

    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("ENGINE_ENVS_DIR", str(tmp_path / "envs"))
    monkeypatch.setenv("AVIBE_BACKEND", "vllm")
    monkeypatch.setenv("AVIBE_MODEL", "AvitoTech/avibe")
    with pytest.raises(SystemExit) as stopped:
        settings_or_exit()
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    expected = tmp_path / "envs/vllm-0.33.0/bin/vllm"
    assert f"VLLM_COMMAND runs {expected}, which does not exist" in lines[0]
    assert "`make vllm-env`" in lines[0] and "vLLM 0.33.0" in lines[0]
    assert settings_or_exit(serving=False).process.vllm_command == str(
        expected
    )  # config still shows it

    expected.parent.mkdir(parents=True)  # once `make vllm-env` has built it
    expected.write_text("#!/bin/sh\n")
    expected.chmod(0o755)
    assert settings_or_exit().process.vllm_command == str(expected)

    monkeypatch.setenv("AVIBE_BACKEND", "sglang")
    with pytest.raises(SystemExit):
        settings_or_exit()
    assert "`make sglang-env`" in capsys.readouterr().err


def test_avito_ai_config_prints_the_engine_command_lines(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clean_environment,
) -> None:
    from avito_ai.cli import main

    monkeypatch.chdir(tmp_path)
    for name, value in {
        "AVIBE_BACKEND": "vllm", "AVIBE_MODEL": "AvitoTech/avibe", "AVIBE_ENGINE_PORT": "8101",
        "AVISION_BACKEND": "sglang", "AVISION_MODEL": "/models/avision",
        "VLLM_COMMAND": "/opt/vllm/bin/vllm",
        "SGLANG_COMMAND": "/opt/sg/bin/python -m sglang.launch_server",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    main(["config"])
    out = capsys.readouterr().out.splitlines()
    vibe = next(line for line in out if line.startswith("# avibe engine (vllm): "))
    argv = shlex.split(vibe.split(": ", 1)[1])
    assert argv[:4] == ["/opt/vllm/bin/vllm", "serve", "AvitoTech/avibe", "--host"]
    assert argv[argv.index("--port") + 1] == "8101"
    assert '{"backend":"xgrammar","disable_any_whitespace":true}' in argv
    vision = next(line for line in out if line.startswith("# avision engine (sglang): "))
    assert shlex.split(vision.split(": ", 1)[1])[:5] == [
        "/opt/sg/bin/python", "-m", "sglang.launch_server", "--model-path", "/models/avision",
    ]  # fmt: skip
    main(["config", "--json"])
    view = json.loads(capsys.readouterr().out)
    assert view["ENGINE_COMMAND_LINES"]["avibe"]["command_line"] == vibe.split(": ", 1)[1]
    # Asked to check them: no engine at /opt here, so it says so and refuses nothing.
    main(["config", "--check-engines"])
    said = capsys.readouterr().out
    assert "#   not checked: /opt/vllm/bin/vllm is not installed (VLLM_COMMAND)" in said


# --- a refused command line --------------------------------------------------------------

REFUSING = (
    "{python} -c \"import sys; print('starting', flush=True); "
    "print('usage: vllm serve [model_tag] [options]', file=sys.stderr); "
    "print('vllm serve: error: argument --dtype: invalid choice: ' + repr(sys.argv[-1]), "
    'file=sys.stderr); sys.exit(2)"'
)


def test_an_engine_that_refuses_its_command_line_fails_once_with_its_error_and_the_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from avito_ai.engines.process.supervisor import EngineSupervisor

    settings = isolated_settings(
        avibe_backend="command",
        avibe_model="m",
        avibe_engine_command=REFUSING,
        avibe_engine_args="--dtype float64",
        engine_state_dir=tmp_path,
    )
    supervisor = EngineSupervisor("avibe", settings, tmp_path)
    with caplog.at_level("INFO", logger="avito_ai.engine"):
        supervisor.start()
        supervisor._thread.join(timeout=30)  # it gives up: no restart loop
        assert not supervisor._thread.is_alive()
    record = EngineRecord.read(state_path(tmp_path, "avibe"))
    assert record is not None and record.state == "failed" and record.restarts == 0
    line = "vllm serve: error: argument --dtype: invalid choice: 'float64'"
    assert record.reason == f"{line} (--dtype comes from AVIBE_ENGINE_ARGS)"
    assert caplog.text.count("pid ") == 1  # started once
    assert "refused its command line (exited with status 2) and is not restarted" in caplog.text
    assert "The flag: --dtype comes from AVIBE_ENGINE_ARGS" in caplog.text
    status = process_engine(settings).status()  # what readiness and /api/health say
    assert status.state is EngineState.FAILED
    assert status.reason == f"command engine failed: {record.reason}"

    async def probes() -> tuple[dict[str, Any], httpx.Response]:
        from tests.api.conftest import running
        from tests.conftest import engine_set

        async with running(settings, engine_set(process_engine(settings))) as (_, http):
            return (await http.get("/api/health")).json(), await http.get("/api/health/ready")

    health, ready = asyncio.run(probes())
    supervisor.stop()
    assert health["models"]["avibe"]["state"] == "failed"
    assert health["models"]["avibe"]["reason"] == status.reason
    assert ready.status_code == 503 and line in ready.text


def test_vllms_multi_line_refusal_is_read_whole_and_points_at_the_setting() -> None:
    from avito_ai.engines.process.commands import origin_of
    from avito_ai.engines.process.supervisor import usage_error_line

    tail = [  # vLLM 0.33.0's own output for the issue's command line
        "usage: vllm serve [model_tag] [options]",
        "vllm serve: error: argument --structured-outputs-config: 1 validation error for "
        "StructuredOutputsConfig",
        "  Value error, disable_any_whitespace is only supported for xgrammar and guidance "
        "backends. [type=value_error, input_value={'disable_any_whitespace': True}, "
        "input_type=dict]",
        "    For further information visit https://errors.pydantic.dev/2.14/v/value_error",
    ]
    line = usage_error_line(tail)
    assert line == (
        "vllm serve: error: argument --structured-outputs-config: 1 validation error for "
        "StructuredOutputsConfig Value error, disable_any_whitespace is only supported for "
        "xgrammar and guidance backends."
    )
    spec = engine_spec("avibe", isolated_settings(**EAGLE).engines, 1)
    assert origin_of(spec, line) == (
        "--structured-outputs-config is always added by the service "
        "(VLLM_COMMAND must run vLLM 0.33.0)"
    )
    assert origin_of(spec, "error: argument --speculative-config: bad").endswith(
        "comes from AVIBE_DRAFT_MODEL, AVIBE_SPECULATIVE_TOKENS"
    )
    overridden = isolated_settings(**EAGLE, avibe_engine_args="--dtype bfloat16")
    assert origin_of(engine_spec("avibe", overridden.engines, 1), "error: argument --dtype: x") == (
        "--dtype comes from AVIBE_ENGINE_ARGS"  # the last one given is the one parsed
    )
    assert origin_of(spec, "error: unrecognized arguments") == (
        "check VLLM_COMMAND and AVIBE_ENGINE_ARGS"
    )
    assert usage_error_line(["Traceback (most recent call last):", "OSError: no"]) is None


# --- what the remote backend sends the engines, and reads back ----------------------------


def _scripted_engine(events: list[dict], sent: list[dict], flavour: Flavour) -> RemoteEngine:
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"

    def answer(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        sent.append(json.loads(req.content))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    settings = isolated_settings(avibe_backend="remote", avibe_upstream_urls="http://e.test")
    return RemoteEngine(
        remote_config(settings),
        transport=httpx.MockTransport(answer),
        send_priority=True,
        flavour=flavour,
    )


def _asked(**sampling: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id="r-1",
        sampling=SamplingParams(max_tokens=4, **sampling),
        messages=[ChatMessage.text("user", "hi")],
        deadline=time.monotonic() + 30,
        priority=1,
    )


@pytest.mark.parametrize("flavour", ["vllm", "sglang"])
async def test_n_greedy_choices_are_one_answer_asked_once_and_given_n_times(
    flavour: Flavour,
) -> None:
    """vLLM refuses n > 1 at temperature 0 ("n must be 1 when using greedy sampling");
    the in-process engines give the one greedy answer n times: so does an engine process."""
    sent: list[dict] = []
    events = [
        {"choices": [{"index": 0, "delta": {"content": "Paris"}}]},
        {"choices": [{"index": 0, "delta": {"content": "."}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    ]
    engine = _scripted_engine(events, sent, flavour)
    await engine.start()
    chunks = [c async for c in engine.generate(_asked(n=3, temperature=0.0))]
    await engine.stop()
    assert "n" not in sent[0] and sent[0]["temperature"] == 0.0 and sent[0]["priority"] == 1
    texts = {
        i: "".join(c.text for c in chunks if c.index == i and not c.is_final) for i in (0, 1, 2)
    }
    assert texts == {0: "Paris.", 1: "Paris.", 2: "Paris."}
    final = chunks[-1]
    assert final.is_final and final.generated_tokens == 6  # three answers of two tokens
    assert [(e.index, e.finish_reason, e.generated_tokens) for e in final.choices or ()] == [
        (0, "stop", 2), (1, "stop", 2), (2, "stop", 2),
    ]  # fmt: skip
    sampled = _scripted_engine(events, sent, flavour)
    await sampled.start()
    with pytest.raises(ModelUnavailable):  # sampled choices travel as n: this script has one only
        [c async for c in sampled.generate(_asked(n=3, temperature=0.8))]
    await sampled.stop()
    assert sent[-1]["n"] == 3


async def test_a_zero_probability_token_is_carried_as_minus_infinity() -> None:
    """SGLang writes a log probability of -inf as null (orjson); vLLM floors at -9999.0."""
    sent: list[dict] = []
    top = [{"token": "a", "logprob": -0.1, "bytes": [97]}, {"token": "b", "logprob": None}]
    events = [
        {"choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": {"content": [
            {"token": "a", "logprob": None, "bytes": [97], "top_logprobs": top},
            {"token": "c", "logprob": -9999.0, "bytes": [99], "top_logprobs": []},
        ]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    ]  # fmt: skip
    engine = _scripted_engine(events, sent, "sglang")
    await engine.start()
    chunks = [c async for c in engine.generate(_asked(logprobs=True, top_logprobs=2))]
    await engine.stop()
    tokens = [t for c in chunks for t in c.logprobs or ()]
    assert [(t.token, t.logprob) for t in tokens] == [("a", float("-inf")), ("c", -9999.0)]
    assert [(t, p) for t, p, _ in tokens[0].top] == [("a", -0.1), ("b", float("-inf"))]


def test_the_command_lines_in_docs_engines_md_are_the_codes() -> None:
    """docs/engines.md shows the command lines scripts/engine_commands.py generates from the
    code: after a change there, `scripts/engine_commands.py --write`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "engine_commands", ROOT / "scripts" / "engine_commands.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    doc = (ROOT / "docs" / "engines.md").read_text()
    assert script.current(doc) == script.generated(), "run scripts/engine_commands.py --write"
    block = script.generated()
    assert '\'{"backend":"xgrammar","disable_any_whitespace":true}\'' in block
    assert "~/.cache/avito-ai/engines/vllm-0.33.0/bin/vllm serve AvitoTech/avibe" in block
    assert "--otlp-traces-endpoint http://collector:4318/v1/traces" in block


def test_a_fork_waits_while_an_engine_is_being_spawned() -> None:
    """The gunicorn master forks workers from its main thread while a thread of it spawns an
    engine: a worker forked inside Popen would hold Popen's error pipe open, and the spawn
    (the engine "starting") would wait until that worker exits."""
    import os
    import threading

    from avito_ai.engines.process import supervisor

    order: list[str] = []
    forking, forked = threading.Event(), threading.Event()

    def fork() -> None:
        forking.set()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        order.append("forked")
        forked.set()
        os.waitpid(pid, 0)

    with supervisor.SPAWNING:  # what the supervisor holds around Popen
        forker = threading.Thread(target=fork)
        forker.start()
        assert forking.wait(10)
        forked.wait(1.0)  # the behaviour under test: the fork is held back meanwhile
        order.append("spawned")
    forker.join(10)
    assert order == ["spawned", "forked"]
