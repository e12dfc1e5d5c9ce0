"""Settings → engines, one per role. Heavy imports happen only for the backend chosen."""

from __future__ import annotations

from avito_ai.config import Settings
from avito_ai.engines.base import Engine, NotConfiguredEngine, Role

AVISION_HINT = (
    "A-Vision is not configured: set AVISION_MODEL to a local model folder or a hub id "
    "in the local Hugging Face cache"
)


def build_engine(role: Role, settings: Settings) -> Engine:
    own = settings.role(role)
    if own.backend == "fake":
        from avito_ai.engines.fake import FakeEngine

        return FakeEngine(role, token_delay=settings.fake_token_delay)
    if own.backend == "openai":
        from avito_ai.engines.remote.fleet import RemoteEngine

        return RemoteEngine(role, settings)
    if role == "avibe":
        # With AVIBE_MODEL unset the embedded default (SmolLM2-135M-Instruct) serves A-Vibe.
        from avito_ai.engines.transformers.text import TransformersTextEngine

        return TransformersTextEngine(settings)
    if own.model is None:
        return NotConfiguredEngine("avision", AVISION_HINT)
    from avito_ai.engines.transformers.vision import TransformersVisionEngine

    return TransformersVisionEngine(settings)


def build_engines(settings: Settings) -> dict[Role, Engine]:
    return {role: build_engine(role, settings) for role in ("avibe", "avision")}


def device_problem(settings: Settings) -> str | None:
    """Why the configured DEVICE cannot be used (a CUDA device that is not there), or None."""
    if not settings.device.startswith("cuda"):
        return None
    from avito_ai.engines.transformers.device import cuda_problem

    return cuda_problem(settings.device)
