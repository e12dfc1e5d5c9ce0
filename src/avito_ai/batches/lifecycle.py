"""The Batch API in an app: built with it (app.py), its runner started and stopped with
the app's lifespan (lifespan.py)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI
from pydantic import BaseModel

from avito_ai.batches.runner import BatchRunner
from avito_ai.batches.service import BatchService
from avito_ai.batches.settings import BatchSettings
from avito_ai.batches.store import BatchStore
from avito_ai.clients import KeyPolicy

logger = logging.getLogger("avito_ai.batches")


def install(
    app: FastAPI,
    settings: BatchSettings,
    *,
    models: Mapping[str, type[BaseModel]],
    policies: list[KeyPolicy],
) -> None:
    """The service on `app.state.batches` (nothing connects yet: the runner does, in the
    lifespan). `models`: each batch endpoint's online request model, for validation."""
    if not settings.enabled:
        return
    store = BatchStore(settings.database_url)
    runner = BatchRunner(
        app,
        store,
        settings,
        models=models,
        policies=policies,
        quiet_for=lambda: app.state.avito.governor.quiet_for(),
    )
    app.state.batches = BatchService(store, settings, runner)


async def start(app: FastAPI) -> None:
    service: BatchService | None = getattr(app.state, "batches", None)
    if service is not None and service.runner is not None:
        service.runner.start()


async def stop(app: FastAPI) -> None:
    service: BatchService | None = getattr(app.state, "batches", None)
    if service is None:
        return
    if service.runner is not None:
        await service.runner.stop()
    await service.store.close()
