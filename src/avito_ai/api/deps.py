"""Annotated dependencies, so routes declare what they need and tests can swap it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from avito_ai.clients import ANONYMOUS, Client
from avito_ai.config import Settings
from avito_ai.middleware.auth import client_of
from avito_ai.middleware.request_id import request_id_of
from avito_ai.services.state import ServiceState

# `async def`, though they never wait: FastAPI runs a plain `def` dependency in its thread
# pool, a thread handoff per dependency per request (a third of /api/health's time).


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.avito
    return state


async def get_settings(request: Request) -> Settings:
    state: ServiceState = request.app.state.avito
    return state.settings


async def get_request_id(request: Request) -> str:
    return request_id_of(request.scope)


async def get_client(request: Request) -> Client:
    """Who sent the request (middleware/auth.py decided it once, for every layer)."""
    return client_of(request.scope) or ANONYMOUS


def disconnect_waiter(request: Request) -> Callable[[], Awaitable[None]]:
    """Waits until the client closes the connection (the body has been read already)."""

    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait


StateDep = Annotated[ServiceState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
ClientDep = Annotated[Client, Depends(get_client)]


@dataclass(frozen=True)
class Call:
    """One request as every serving layer needs it: its id, its client, and a way to
    learn that the client has gone (a generation for it is then cancelled)."""

    request_id: str
    client: Client
    disconnected: Callable[[], Awaitable[None]] | None = None


async def get_call(request: Request) -> Call:
    return Call(
        request_id_of(request.scope),
        client_of(request.scope) or ANONYMOUS,
        disconnect_waiter(request),
    )


CallDep = Annotated[Call, Depends(get_call)]
