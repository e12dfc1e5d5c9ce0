"""The engine settings → engines, one per role, each given only its role's and its backend's
settings. Heavy imports happen only for the backend chosen."""

from __future__ import annotations

import functools
import importlib.util
from typing import Literal

from avito_ai.config import ConfigError, EngineSettings
from avito_ai.engines.base import Engine, NotConfiguredEngine, Role

AVISION_HINT = (
    "A-Vision is not configured: set AVISION_MODEL to a local model folder or a hub id "
    "in the local Hugging Face cache"
)
# The light install (no torch, no transformers) serves A-Vision from an OpenVINO IR only.
AVISION_HINT_LIGHT = (
    "A-Vision is not configured: set AVISION_MODEL to an OpenVINO IR folder "
    "(make export-avision writes one from a checkpoint)"
)


def serves_checkpoints() -> bool:
    """Whether this install can serve a checkpoint or a hub id (the transformers extra)."""
    return all(_installed(m) for m in _EXTRAS["transformers"][0])


def avision_hint() -> str:
    """What to set when A-Vision is not configured, for what this install can serve."""
    return AVISION_HINT if serves_checkpoints() else AVISION_HINT_LIGHT


Chosen = Literal["openvino", "transformers", "remote", "fake", "vllm", "sglang", "command"]
# What each in-process backend needs installed, and what brings it: OpenVINO GenAI is in
# the base install (the light set), torch and transformers in the transformers extra.
_EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "openvino": (("openvino_genai",), "avito-ai"),
    "transformers": (("torch", "transformers"), "avito-ai[transformers]"),
}


def backend_for(role: Role, settings: EngineSettings) -> Chosen:
    """The backend that serves `role`, with `auto` decided."""
    chosen = settings.role(role).backend
    device = settings.in_process.device
    if chosen != "auto":
        return chosen
    if role == "avision":
        # OpenVINO reads an IR folder (on the CPU), transformers a checkpoint or a hub id.
        # DEVICE=cuda asks for the GPU, which only transformers uses.
        if _is_ir_folder(settings.role(role).model) and not device.startswith("cuda"):
            return "openvino"
        return "transformers"
    return "transformers" if _wants_cuda(device) else "openvino"


def _is_ir_folder(model: str | None) -> bool:
    from avito_ai.engines.openvino.vision_loading import is_ir_folder

    return is_ir_folder(model)


@functools.cache  # the machine's GPUs do not change while the process runs
def _wants_cuda(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto" or not _installed("torch"):
        return False
    try:  # NVML answers in milliseconds, without importing torch
        import pynvml

        pynvml.nvmlInit()
        try:
            return bool(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def missing_extra(settings: EngineSettings) -> str | None:
    """One line naming the extra to install when a configured backend's libraries are
    missing (a light install asked to run transformers, say); None when all is there."""
    for role in ("avibe", "avision"):
        problem = _missing_for(role, backend_for(role, settings), settings)
        if problem is not None:
            return problem
    return None


def _missing_for(role: Role, backend: Chosen, settings: EngineSettings) -> str | None:
    if role == "avision" and settings.role(role).model is None:
        return None  # not configured: nothing to load
    if backend not in _EXTRAS:
        return None
    modules, extra = _EXTRAS[backend]
    absent = [m for m in modules if not _installed(m)]
    if not absent:
        return None
    problem = f"{role.upper()}_BACKEND={backend} needs {', '.join(absent)}: pip install '{extra}'"
    if role == "avision" and backend == "transformers":
        problem += (
            ", or export the model to an OpenVINO IR folder (make export-avision), which "
            "the light install serves"
        )
    return problem


def build_engine(role: Role, settings: EngineSettings) -> Engine:
    backend = backend_for(role, settings)
    if backend == "fake":
        from avito_ai.engines.fake import FakeEngine

        return FakeEngine(
            role, token_delay=settings.fake.token_delay, load_delay=settings.fake.load_delay
        )
    if backend == "remote":
        from avito_ai.engines.remote.engine import RemoteEngine
        from avito_ai.engines.remote.upstreams import RemoteConfig

        return RemoteEngine(
            RemoteConfig.of(settings.role(role), settings.remote, settings.avision.max_pixels)
        )
    if backend in ("vllm", "sglang", "command"):
        from avito_ai.engines.process.engine import ProcessEngine
        from avito_ai.engines.remote.upstreams import RemoteConfig

        own = settings.role(role)
        remote = RemoteConfig.of(own, settings.remote, settings.avision.max_pixels)
        return ProcessEngine(own, settings.process, remote)
    if role == "avision" and settings.role(role).model is None:
        return NotConfiguredEngine("avision", avision_hint())
    problem = _missing_for(role, backend, settings)
    if problem is not None:
        raise ConfigError(problem)
    if backend == "openvino":
        if role == "avision":
            from avito_ai.engines.openvino.vision import OpenVINOVisionEngine

            return OpenVINOVisionEngine(
                settings.avision,
                settings.in_process,
                settings.openvino,
                max_queue_size=settings.max_queue_size,
            )
        from avito_ai.engines.openvino.engine import OpenVINOTextEngine

        return OpenVINOTextEngine(
            settings.avibe,
            settings.in_process,
            settings.openvino,
            max_queue_size=settings.max_queue_size,
        )
    if role == "avibe":
        # With AVIBE_MODEL unset the embedded default (SmolLM2-135M-Instruct) serves A-Vibe.
        from avito_ai.engines.transformers.text import TransformersTextEngine

        return TransformersTextEngine(
            settings.avibe, settings.in_process, max_queue_size=settings.max_queue_size
        )
    from avito_ai.engines.transformers.vision import TransformersVisionEngine

    return TransformersVisionEngine(
        settings.avision, settings.in_process, max_queue_size=settings.max_queue_size
    )


def _loaded_roles(settings: EngineSettings) -> list[Role]:
    """The roles with a model to load (A-Vision is optional)."""
    return [r for r in ("avibe", "avision") if r == "avibe" or settings.role(r).model is not None]


def build_engines(settings: EngineSettings) -> dict[Role, Engine]:
    return {role: build_engine(role, settings) for role in ("avibe", "avision")}


def device_problem(settings: EngineSettings) -> str | None:
    """Why the configured DEVICE cannot be used (a CUDA device that is not there), or None.
    Only in-process transformers engines use DEVICE: vLLM, SGLang and remote upstreams
    pick their own GPUs, and OpenVINO runs on the CPU, so they need neither torch here
    nor a CUDA check. (The fake engine stands in for an in-process one: it checks the
    device where torch is installed, and needs no extra where it is not.)"""
    device = settings.in_process.device
    if not device.startswith("cuda"):
        return None
    backends = {backend_for(r, settings) for r in _loaded_roles(settings)}
    if not backends & {"transformers", "fake"}:
        return None
    if not _installed("torch"):
        if "transformers" not in backends:
            return None  # nothing here would use the GPU: no extra to ask for
        extra = _EXTRAS["transformers"][1]
        return f"DEVICE={device} needs the transformers extra: pip install '{extra}'"
    from avito_ai.engines.transformers.device import cuda_problem

    return cuda_problem(device)
