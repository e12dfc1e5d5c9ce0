"""Command lines of the engine servers, built from the service's settings.

Only flags both engines document are used; anything else goes in `<ROLE>_ENGINE_ARGS`,
appended verbatim. vLLM 0.33 (`vllm serve`) and SGLang 0.5.23 (`sglang.launch_server`).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Literal

from avito_ai.config import Role, Settings
from avito_ai.observability import tracing

Kind = Literal["vllm", "sglang", "command"]
# Both engines answer GET /health with 200 once the model is loaded and serving.
HEALTH_PATH = "/health"
# Set in the child's environment: a supervised engine must not supervise engines itself
# (the stand-in engine is this service; a stray .env could otherwise recurse).
CHILD_MARKER = "AVITO_AI_ENGINE_PARENT"


@dataclass(frozen=True)
class EngineSpec:
    role: Role
    kind: Kind
    argv: list[str]
    port: int
    served_model: str | None  # what requests name as `model`; None: what the engine lists
    health_path: str
    metrics_path: str = "/metrics"


def memory_share(role: Role, settings: Settings) -> float:
    """GPU memory for this role's engine: as set, else 0.9 alone, 0.55/0.35 when both
    engines share the GPU (A-Vibe's KV cache needs the larger part)."""
    own = settings.role(role).gpu_memory
    if own is not None:
        return own
    if len(settings.engine_processes()) == 1:
        return 0.9
    return 0.55 if role == "avibe" else 0.35


def served_name(role: Role, settings: Settings) -> str:
    return settings.role(role).upstream_model or str(settings.role(role).model)


def vllm_argv(role: Role, settings: Settings, port: int) -> list[str]:
    own = settings.role(role)
    model = str(own.model)
    argv = [
        *shlex.split(settings.vllm_command),
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        served_name(role, settings),
        "--dtype",
        settings.dtype,
        "--gpu-memory-utilization",
        f"{memory_share(role, settings):g}",
        "--tensor-parallel-size",
        str(own.tensor_parallel_size),
        # Requests carry their class (interactive 0, batch 1): vLLM schedules by it.
        "--scheduling-policy",
        "priority",
        # Structured output as compact JSON: a grammar that allows any whitespace lets a
        # model write spaces until max_tokens (services/constraints.py does the same).
        # vLLM takes disable_any_whitespace only with a named backend (xgrammar or
        # guidance; its default, auto, exits 2): xgrammar, as the service's own engines.
        "--structured-outputs-config",
        json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}, separators=(",", ":")),
        # Tool calls in the Hermes format both models write; requests' tools pass through.
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
    ]
    if role == "avibe":  # Qwen3's <think> block as reasoning_content
        argv += ["--reasoning-parser", "qwen3"]
    if own.max_model_len:
        argv += ["--max-model-len", str(own.max_model_len)]
    if own.draft_model:
        speculative = {
            "method": "eagle3",
            "model": own.draft_model,
            "num_speculative_tokens": own.speculative_tokens,
        }
        argv += ["--speculative-config", json.dumps(speculative, separators=(",", ":"))]
    if role == "avision":
        argv += ["--limit-mm-per-prompt", json.dumps({"image": own.max_images})]
    if tracing.configured():  # it continues the traceparent the remote backend sends
        argv += ["--otlp-traces-endpoint", tracing.traces_endpoint()]
    return argv + shlex.split(own.engine_args)


def sglang_argv(role: Role, settings: Settings, port: int) -> list[str]:
    own = settings.role(role)
    argv = [
        *shlex.split(settings.sglang_command),
        "--model-path",
        str(own.model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        served_name(role, settings),
        "--dtype",
        settings.dtype,
        "--mem-fraction-static",
        f"{memory_share(role, settings):g}",
        "--tp-size",
        str(own.tensor_parallel_size),
        "--enable-metrics",  # SGLang serves /metrics only when asked
        "--constrained-json-disable-any-whitespace",  # compact structured output
        "--tool-call-parser",  # SGLang's name for the Hermes format of Qwen2.5 and Qwen3
        "qwen25",
    ]
    if role == "avibe":  # Qwen3's <think> block as reasoning_content
        argv += ["--reasoning-parser", "qwen3"]
    if own.max_model_len:
        argv += ["--context-length", str(own.max_model_len)]
    if own.draft_model:
        steps = own.speculative_tokens
        argv += [
            "--speculative-algorithm",
            "EAGLE3",
            "--speculative-draft-model-path",
            own.draft_model,
            "--speculative-num-steps",
            str(steps),
            "--speculative-eagle-topk",
            "1",
            "--speculative-num-draft-tokens",
            str(steps + 1),
        ]
    if tracing.configured():
        argv += ["--enable-trace", "--otlp-traces-endpoint", tracing.traces_endpoint()]
    return argv + shlex.split(own.engine_args)


def command_argv(role: Role, settings: Settings, port: int) -> list[str]:
    own = settings.role(role)
    model = own.model or ""
    template = shlex.split(own.engine_command or "")
    argv = [part.format(port=port, model=model, python=sys.executable) for part in template]
    return argv + shlex.split(own.engine_args)


def engine_spec(role: Role, settings: Settings, port: int) -> EngineSpec:
    kind: Kind = settings.role(role).backend  # type: ignore[assignment]
    if kind in ("vllm", "sglang"):
        build = vllm_argv if kind == "vllm" else sglang_argv
        served = served_name(role, settings)
        return EngineSpec(role, kind, build(role, settings, port), port, served, HEALTH_PATH)
    return EngineSpec(
        role,
        "command",
        command_argv(role, settings, port),
        port,
        settings.role(role).upstream_model,
        settings.role(role).engine_health_path,
    )


def child_environment(settings_vars: frozenset[str]) -> dict[str, str]:
    """The engine's environment: ours (CUDA_VISIBLE_DEVICES, HF_HOME, PATH...), without
    this service's own settings, which mean nothing to vLLM and would make a stand-in
    engine (this service) configure itself like its parent."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in settings_vars}
    env[CHILD_MARKER] = str(os.getpid())
    env.setdefault("PYTHONUNBUFFERED", "1")  # log lines as they happen
    return env
