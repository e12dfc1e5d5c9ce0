"""What the engine layer is given: the roles' and the backends' settings, never the front
door's. Built once per `Settings` (`Settings.engines`); the registry hands each engine only
its own role's and its backend's."""

from __future__ import annotations

from dataclasses import dataclass

from avito_ai.config.backends import (
    FakeSettings,
    InProcessSettings,
    OpenVINOSettings,
    ProcessSettings,
    RemoteSettings,
)
from avito_ai.config.roles import AvibeSettings, AvisionSettings, Role, RoleSettings


@dataclass(frozen=True)
class EngineSettings:
    avibe: AvibeSettings
    avision: AvisionSettings
    in_process: InProcessSettings
    openvino: OpenVINOSettings
    process: ProcessSettings
    remote: RemoteSettings
    fake: FakeSettings
    # Requests queued in front of an in-process engine's worker (MAX_QUEUE_SIZE, the front
    # door's: the fair queue in front of every engine is as long).
    max_queue_size: int

    def role(self, role: Role) -> RoleSettings:
        return self.avibe if role == "avibe" else self.avision

    def engine_processes(self) -> list[Role]:
        """The roles served by an engine process this service starts."""
        return [r.role for r in (self.avibe, self.avision) if r.runs_engine_process]
