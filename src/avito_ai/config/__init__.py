"""The service's settings, split as vLLM splits its own: the front door's (`Settings`'
fields: server, limits, keys, logging), each role's (`AvibeSettings`, `AvisionSettings`)
and each backend's (`InProcessSettings`, `OpenVINOSettings`, `ProcessSettings`,
`RemoteSettings`, `FakeSettings`), all read from the environment and `.env` under the
variable names the README documents. Each is built once, by `Settings`, and handed only to
what uses it: the engines get `Settings.engines` (roles and backends, no front door)."""

from avito_ai.config.backends import (
    ENGINE_VERSIONS,
    FakeSettings,
    InProcessSettings,
    OpenVINOSettings,
    ProcessSettings,
    RemoteSettings,
    default_engine_command,
    engine_env,
)
from avito_ai.config.engines import EngineSettings
from avito_ai.config.roles import (
    OLD_REMOTE_NAME,
    PROCESS_BACKENDS,
    AvibeSettings,
    AvisionSettings,
    Backend,
    Role,
    RoleSettings,
)
from avito_ai.config.section import Section, given_only
from avito_ai.config.service import (
    FRONT_DOOR,
    SECTIONS,
    ConfigError,
    LogLevel,
    Settings,
    env_names,
    format_validation_error,
    load_settings,
)

__all__ = [
    "ENGINE_VERSIONS",
    "FRONT_DOOR",
    "OLD_REMOTE_NAME",
    "PROCESS_BACKENDS",
    "SECTIONS",
    "AvibeSettings",
    "AvisionSettings",
    "Backend",
    "ConfigError",
    "EngineSettings",
    "FakeSettings",
    "InProcessSettings",
    "LogLevel",
    "OpenVINOSettings",
    "ProcessSettings",
    "RemoteSettings",
    "Role",
    "RoleSettings",
    "Section",
    "Settings",
    "default_engine_command",
    "engine_env",
    "env_names",
    "format_validation_error",
    "given_only",
    "load_settings",
]
