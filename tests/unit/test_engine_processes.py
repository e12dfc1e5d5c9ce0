"""Engine processes without processes: the exact command lines built from settings, the
figures read from an engine's metrics, and what a worker answers for each engine state."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from avito_ai.config import ConfigError, load_settings
from avito_ai.engines.base import EngineState
from avito_ai.engines.process.commands import engine_spec
from avito_ai.engines.process.engine import ProcessEngine, engine_figures
from avito_ai.engines.process.supervisor import EngineRecord, state_path
from avito_ai.errors import ModelUnavailable
from tests.conftest import isolated_settings

EAGLE = {
    "avibe_backend": "vllm",
    "avibe_model": "AvitoTech/avibe",
    "avibe_draft_model": "AvitoTech/avibe-eagle",
    "dtype": "float16",
}


def test_vllm_command_line_with_eagle3_as_the_card_says() -> None:
    spec = engine_spec("avibe", isolated_settings(**EAGLE, vllm_command="/opt/vllm/bin/vllm"), 8101)
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
    vibe = engine_spec("avibe", settings, 1).argv
    vision = engine_spec("avision", settings, 2).argv
    assert vibe[vibe.index("--gpu-memory-utilization") + 1] == "0.55"
    assert vision[vision.index("--gpu-memory-utilization") + 1] == "0.35"
    assert vision[-16:] == [
        "--tensor-parallel-size", "2",
        "--scheduling-policy", "priority",
        "--structured-outputs-config", '{"backend":"xgrammar","disable_any_whitespace":true}',
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--max-model-len", "16384",
        "--limit-mm-per-prompt", '{"image": 2}',
        "--enforce-eager", "--chat-template", "/x y/t.jinja",
    ]  # fmt: skip
    assert "--speculative-config" not in vision and "--reasoning-parser" not in vision
    own = isolated_settings(**EAGLE, avibe_gpu_memory=0.7)
    argv = engine_spec("avibe", own, 1).argv
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.7"


def test_sglang_command_line_with_eagle3() -> None:
    settings = isolated_settings(
        **{**EAGLE, "avibe_backend": "sglang"},
        avibe_max_model_len=32768,
        sglang_command="/opt/sglang/bin/python -m sglang.launch_server",
    )
    assert engine_spec("avibe", settings, 30000).argv == [
        "/opt/sglang/bin/python", "-m", "sglang.launch_server",
        "--model-path", "AvitoTech/avibe",
        "--host", "127.0.0.1", "--port", "30000",
        "--served-model-name", "AvitoTech/avibe",
        "--dtype", "float16",
        "--mem-fraction-static", "0.9",
        "--tp-size", "1",
        "--enable-metrics",
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
    spec = engine_spec("avibe", settings, 9000)
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
    return ProcessEngine("avibe", settings)


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
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    vllm = engine_spec("avibe", isolated_settings(**EAGLE), 1).argv
    assert vllm[vllm.index("--otlp-traces-endpoint") + 1] == "http://collector:4318"
    sglang = engine_spec("avibe", isolated_settings(**{**EAGLE, "avibe_backend": "sglang"}), 1)
    assert "--enable-trace" in sglang.argv and "--otlp-traces-endpoint" in sglang.argv
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert "--otlp-traces-endpoint" not in engine_spec("avibe", isolated_settings(**EAGLE), 1).argv
