"""The model names a client may use, in one place for every dialect: each role's own name
and its configured model id, and the list offered (`/v1/models`)."""

from __future__ import annotations

from dataclasses import dataclass

from avito_ai.engines.base import EngineState, Role
from avito_ai.errors import NotFound
from avito_ai.services.state import ServiceState

DISPLAY_NAMES: dict[Role, str] = {"avibe": "A-Vibe", "avision": "A-Vision"}


def model_names(state: ServiceState, *, configured: bool = False) -> dict[str, Role]:
    """Every name a client may use: the role, and the configured model id of each role.

    `configured`: only the roles that have a model (what a client is offered); a request
    for a role without one still resolves, and gets 503 saying what to set.
    """
    names: dict[str, Role] = {}
    for role, engine in state.engines.items():
        if configured and engine.status().state is EngineState.NOT_CONFIGURED:
            continue
        names[role] = role
        model_id = engine.status().model_id
        if model_id:
            names.setdefault(model_id, role)
    return names


def unknown_model(name: str, state: ServiceState, param: str | None = "model") -> NotFound:
    offered = ", ".join(model_names(state, configured=True))
    return NotFound(f"The model '{name}' does not exist. Available: {offered}", param=param)


def resolve_role(model: str, state: ServiceState) -> Role:
    role = model_names(state).get(model)
    if role is None:
        raise unknown_model(model, state)
    return role


@dataclass(frozen=True)
class OfferedModel:
    """One name of the list: what it serves (`root`: the role's model id) and its title."""

    name: str
    role: Role
    root: str
    display_name: str


def offered_models(state: ServiceState) -> list[OfferedModel]:
    """Every name a client may use, for every configured role, in order."""
    return [
        OfferedModel(
            name=name,
            role=role,
            root=state.engines[role].status().model_id or role,
            display_name=DISPLAY_NAMES[role] if name == role else f"{DISPLAY_NAMES[role]} ({name})",
        )
        for name, role in model_names(state, configured=True).items()
    ]
