"""Settings → engines, one per role. Heavy imports happen only for the backend chosen."""

from __future__ import annotations

from avito_ai.config import Settings
from avito_ai.engines.base import Engine, NotConfiguredEngine, Role

AVISION_HINT = (
    "A-Vision is not configured: set AVISION_MODEL to a local model folder or a hub id "
    "in the local Hugging Face cache"
)


def build_engine(role: Role, settings: Settings) -> Engine:
    backend = settings.avibe_backend if role == "avibe" else settings.avision_backend
    if backend == "fake":
        from avito_ai.engines.fake import FakeEngine

        return FakeEngine(role, token_delay=settings.fake_token_delay)
    if backend == "openai":
        from avito_ai.engines.remote import RemoteEngine

        return RemoteEngine(role, settings)
    if role == "avibe":
        # With AVIBE_MODEL unset the embedded default (SmolLM2-135M-Instruct) serves A-Vibe.
        from avito_ai.engines.transformers_text import TransformersTextEngine

        return TransformersTextEngine(settings)
    if settings.avision_model is None:
        return NotConfiguredEngine("avision", AVISION_HINT)
    from avito_ai.engines.transformers_vision import TransformersVisionEngine

    return TransformersVisionEngine(settings)


def build_engines(settings: Settings) -> dict[Role, Engine]:
    return {role: build_engine(role, settings) for role in ("avibe", "avision")}
