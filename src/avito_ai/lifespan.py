"""The app's lifespan: load models in the background, release them on shutdown.

Models may take minutes to load, so start-up returns at once: liveness answers
immediately while readiness stays 503 until every configured model is ready.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from avito_ai.batches import lifecycle as batches
from avito_ai.observability import tracing
from avito_ai.observability.system import prime_cpu_percent
from avito_ai.services import constraints
from avito_ai.services.state import ServiceState

logger = logging.getLogger("avito_ai.lifespan")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.avito
    prime_cpu_percent()
    tracing.start()  # in this process (each gunicorn worker: after the fork)
    await state.start_engines()
    constraints.warm_compiler()  # structured output's compiler, imported in the background
    await batches.start(app)  # the Batch API's runner (avito_ai/batches/)
    logger.info("Avito AI API started; models are loading in the background")
    try:
        yield
    finally:
        await batches.stop(app)
        await state.stop_engines()
        tracing.stop()
