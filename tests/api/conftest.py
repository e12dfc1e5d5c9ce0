"""The app in process with the fake engine (httpx ASGITransport, lifespan run by hand)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from avito_ai.app import create_app
from avito_ai.config import Settings
from avito_ai.engines.base import Engine, Role
from tests.conftest import engine_set, isolated_settings

AppFactory = Callable[..., Any]


@asynccontextmanager
async def running(
    settings: Settings | None = None,
    engines: dict[Role, Engine] | None = None,
    client: tuple[str, int] = ("127.0.0.1", 123),
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = settings or isolated_settings()
    engines = engines or engine_set()
    app = create_app(settings, engines)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            # Let background loading tasks run.
            for _ in range(5):
                await _yield()
            yield app, http


async def _yield() -> None:
    import asyncio

    await asyncio.sleep(0)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with running() as (_, c):
        yield c
