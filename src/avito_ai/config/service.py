"""The front door's settings (server, limits, keys, logging) and `Settings`, which holds
them with each role's and each backend's settings, all read from the environment and `.env`.

Nothing is built at import time: callers construct `Settings()` (or `load_settings()`)
explicitly, so tests and the CLI decide when the environment is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator

from avito_ai.clients import KeyPolicy, key_id, parse_key_line
from avito_ai.config.backends import (
    FakeSettings,
    InProcessSettings,
    OpenVINOSettings,
    ProcessSettings,
    RemoteSettings,
)
from avito_ai.config.engines import EngineSettings
from avito_ai.config.roles import AvibeSettings, AvisionSettings, Role, RoleSettings
from avito_ai.config.section import Section, given_only

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Seconds = Annotated[float, Field(gt=0)]
Counted = Annotated[int, Field(ge=0)]


class ServerSettings(Section):
    heading: ClassVar[str] = "Service"

    environment: Literal["development", "staging", "production"] = Field(
        "production", description="development | staging | production"
    )
    host: str = Field(
        "0.0.0.0", description="bind address (dev server; gunicorn uses GUNICORN_BIND or HOST:PORT)"
    )
    port: Annotated[int, Field(ge=1, le=65535)] = 8085
    graceful_timeout: NonNegativeFloat = Field(
        30.0, description="seconds in-flight requests get to finish on SIGTERM/SIGINT"
    )
    # Slow clients: a connection that has not sent a whole request head this long after it
    # opened (or after its last answer, with keep-alive) is closed.
    header_read_timeout: Seconds = Field(
        10.0,
        description="seconds a connection may take to send a request head (slow-header "
        "clients are closed)",
    )
    # A request head of more bytes, or more fields, gets 431 from the server: nothing of it
    # reaches the app (nginx in front: its own buffers).
    max_header_bytes: Annotated[int, Field(ge=1024)] = Field(
        32768, description="a request head over this many bytes gets 431"
    )
    max_headers: Annotated[int, Field(ge=8)] = Field(
        100, description="a request head with more header fields gets 431"
    )
    max_connections: Annotated[int, Field(ge=16)] = Field(
        1000,
        description="open connections + running requests per process (per gunicorn worker); "
        "past it: 503",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="proxies whose X-Forwarded-For / X-Forwarded-Proto are trusted "
        "(comma-separated or *)",
    )
    # The page, /docs and the OpenAPI document name their URLs under it.
    root_path: str = Field(
        "",
        description="path prefix a proxy mounts the service under, e.g. /ai (the proxy "
        "strips it); empty: none",
    )

    @field_validator("root_path")
    @classmethod
    def _a_path_prefix(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and (not value.startswith("/") or "//" in value or any(c in value for c in "?#")):
            raise ValueError("must be empty or a path such as /ai")
        return value


class SecuritySettings(Section):
    heading: ClassVar[str] = "Security"

    rate_limit_per_minute: PositiveInt = Field(10, description="Max requests per minute per IP")
    rate_limit_per_hour: PositiveInt = Field(100, description="Max requests per hour per IP")
    allowed_origins: str = Field("*", description="CORS origins (comma-separated), * allows any")
    rate_limit_storage_uri: str = Field(
        "memory://",
        description="memory:// (one process) or Redis, shared by workers and replicas: "
        "redis://host:6379/0, redis+cluster://host:port,host:port or "
        "redis+sentinel://host:port,host:port/service",
    )
    # Either way the answer is fast and logged.
    rate_limit_fail_mode: Literal["open", "closed"] = Field(
        "open",
        description="when the rate-limit storage is unreachable: open (serve unlimited) | "
        "closed (503)",
    )
    rate_limit_ipv6_prefix: Annotated[int, Field(ge=32, le=128)] = Field(
        64,
        description="IPv6 clients are limited per network prefix (one address owns its whole /64)",
    )
    api_keys: SecretStr | None = Field(
        None, description="comma-separated API keys (secret; empty = no keys)"
    )
    api_keys_file: Path | None = Field(
        None,
        description="file with one API key per line (added to API_KEYS), optionally with "
        'fields: "sk-... name=team tokens_per_minute=20000 tokens_per_day=0 concurrency=4 '
        'priority=batch classes=interactive,batch" (docs/admission.md); reloaded on HUP',
    )

    @field_validator("rate_limit_storage_uri")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        schemes = ("memory", "redis", "rediss", "redis+unix", "redis+cluster", "redis+sentinel")
        if not value.startswith(tuple(f"{scheme}://" for scheme in schemes)):
            raise ValueError(
                "must be memory:// or a redis://, redis+cluster:// or redis+sentinel:// URI"
            )
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _readable_keys_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist")
        if value is not None:
            try:
                lines = value.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"cannot read {value}: {exc}") from None
            for number, line in enumerate(lines, 1):
                # ValueError names the file, the line and the field
                parse_key_line(line, where=f"{value} line {number}")
        return value

    @property
    def cors_origins(self) -> list[str]:
        """`ALLOWED_ORIGINS` as a list: `*` or comma-separated origins."""
        return [o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()]


class RequestSettings(Section):
    heading: ClassVar[str] = "Requests"

    max_prompt_length: PositiveInt = Field(2000, description="Max characters in prompts")
    temperature: Annotated[float, Field(ge=0, le=2)] = Field(
        0.7, description="Default generation temperature (0 = greedy)"
    )
    max_choices: Annotated[int, Field(ge=1, le=128)] = Field(
        8, description="choices one request may ask for (OpenAI's n; each counts as a request)"
    )
    max_queue_size: PositiveInt = Field(
        64, description="requests waiting for a model beyond this get 503 overloaded at once"
    )
    request_timeout: Seconds = Field(
        120.0, description="seconds a request may take end to end (then 504 timeout)"
    )
    max_image_size_mb: Seconds = Field(
        16.0, description="largest accepted image upload (larger: 413)"
    )
    max_body_size_mb: Seconds = Field(
        1.0, description="largest JSON/form body on routes without an image (larger: 413)"
    )
    body_read_timeout: Seconds = Field(
        30.0, description="seconds a request body may pause before 408 (slow or stalled uploads)"
    )


class AdmissionSettings(Section):
    heading: ClassVar[str] = "Fair admission (docs/admission.md)"

    # Keys may carry their own (API_KEYS_FILE fields). Counted in RATE_LIMIT_STORAGE_URI.
    tokens_per_minute: Counted = Field(
        0,
        description="tokens (prompt + generated) per client per minute; 0 = no budget. A "
        "request reserves its prompt plus max_tokens when admitted (429 if that does not "
        "fit), and gives back what it did not use when it ends",
    )
    tokens_per_day: Counted = Field(0, description="the same per day; 0 = no budget")
    client_concurrency: Counted = Field(
        0,
        description="requests of one client generating at once (per worker; the rest wait); "
        "0 = no limit",
    )
    client_max_waiting: Counted = Field(
        0,
        description="requests of one client waiting for a model at once (per worker; past it "
        "429); 0 = a quarter of MAX_QUEUE_SIZE (at least 1)",
    )


class LoggingSettings(Section):
    heading: ClassVar[str] = "Logging"

    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    # Checked when the server starts (its folder made, opened for appending):
    # observability/logging.py's log_file_problem.
    log_file: Path | None = Field(
        None, description="e.g. /var/log/avito-ai/app.log (survives logrotate renames)"
    )
    log_format: Literal["text", "json"] = Field("text", description="text | json")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_file")
    @classmethod
    def _a_file(cls, value: Path | None) -> Path | None:
        if value is not None and value.is_dir():
            raise ValueError(f"{value} is a folder; give a file's path")
        return value


class GunicornSettings(Section):
    heading: ClassVar[str] = "Gunicorn (read by gunicorn_config.py)"

    web_concurrency: PositiveInt = Field(
        1, description="workers; each loads its own model copy (one per GPU)"
    )
    gunicorn_bind: str | None = Field(None, description="empty = HOST:PORT")
    gunicorn_timeout: PositiveInt = Field(120, description="worker boot/heartbeat timeout, seconds")
    prometheus_multiproc_dir: Path | None = Field(
        None, description="shared metrics folder for the workers; empty = a fresh temp folder"
    )


# The front door's groups, in the order `.env.example` and `avito-ai config` show them.
FRONT_DOOR: tuple[type[Section], ...] = (
    ServerSettings,
    SecuritySettings,
    RequestSettings,
    AdmissionSettings,
    LoggingSettings,
    GunicornSettings,
)
# Settings.<name>: each role's and each backend's settings, in the order they are shown.
SECTIONS: dict[str, type[Section]] = {
    "avibe": AvibeSettings,
    "avision": AvisionSettings,
    "in_process": InProcessSettings,
    "openvino": OpenVINOSettings,
    "process": ProcessSettings,
    "remote": RemoteSettings,
    "fake": FakeSettings,
}


class Settings(
    GunicornSettings,
    LoggingSettings,
    AdmissionSettings,
    RequestSettings,
    SecuritySettings,
    ServerSettings,
):
    """The front door's settings (its fields), and the roles' and backends' (`avibe`,
    `avision`, `in_process`, `openvino`, `process`, `remote`, `fake`), each built once.
    Keyword values go to whichever class owns the variable: `Settings(avibe_model="m",
    port=1)` sets AVIBE_MODEL and PORT. The engines get `engines` (no front door)."""

    _engines: EngineSettings = PrivateAttr()
    # The keys as first read (api_key_policies): a Settings object is one configuration.
    _policies: list[KeyPolicy] | None = PrivateAttr(default=None)

    def __init__(self, **values: Any) -> None:
        options = {k: v for k, v in values.items() if k.startswith("_")}  # _env_file...
        sections: dict[str, Section] = {}
        for name, section in SECTIONS.items():
            given = values.pop(name, None)
            own = {}
            for key in [k for k in values if not k.startswith("_")]:
                field = section.field_for(key)
                if field is not None:
                    own[field] = values.pop(key)
            if given is None:
                built = section if type(self).reads_environment else given_only(section)
                given = built(**options, **own)
            sections[name] = given
        unknown = sorted(
            k for k in values if not k.startswith("_") and k not in type(self).model_fields
        )
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(unknown)}")
        super().__init__(**values)
        self._engines = EngineSettings(**sections, max_queue_size=self.max_queue_size)  # type: ignore[arg-type]

    @classmethod
    def given(cls, **values: Any) -> Settings:
        """Settings from the values given and the defaults only: no `.env`, no environment."""
        return given_only(cls)(**values)

    # ------------------------------------------------------------- the other classes

    @property
    def engines(self) -> EngineSettings:
        """Everything the engine layer is given: roles and backends, no front door."""
        return self._engines

    @property
    def avibe(self) -> AvibeSettings:
        return self._engines.avibe

    @property
    def avision(self) -> AvisionSettings:
        return self._engines.avision

    @property
    def in_process(self) -> InProcessSettings:
        return self._engines.in_process

    @property
    def openvino(self) -> OpenVINOSettings:
        return self._engines.openvino

    @property
    def process(self) -> ProcessSettings:
        return self._engines.process

    @property
    def remote(self) -> RemoteSettings:
        return self._engines.remote

    @property
    def fake(self) -> FakeSettings:
        return self._engines.fake

    def role(self, role: Role) -> RoleSettings:
        """One role's settings: `settings.role("avibe").model` is AVIBE_MODEL."""
        return self._engines.role(role)

    def engine_processes(self) -> list[Role]:
        """The roles served by an engine process this service starts."""
        return self._engines.engine_processes()

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; `update` may replace a whole class too (`process=...`)."""
        update = dict(update or {})
        replaced = {name: update.pop(name) for name in SECTIONS if name in update}
        copy = super().model_copy(update=update, deep=deep)
        copy._engines = dataclasses.replace(
            self._engines, **replaced, max_queue_size=copy.max_queue_size
        )
        return copy

    def with_engine_state_dir(self, folder: Path) -> Settings:
        """A copy whose engine processes' states are in `folder` (ENGINE_STATE_DIR)."""
        process = self.process.model_copy(update={"engine_state_dir": folder})
        return self.model_copy(update={"process": process})

    # ------------------------------------------------------------- front door

    def api_key_policies(self) -> list[KeyPolicy]:
        """Each key with its name, budgets, concurrency and priority (avito_ai/clients.py
        documents the file's format), from API_KEYS and API_KEYS_FILE; empty means no
        authentication. Read once per Settings: a HUP reload makes new ones, which read an
        edited file."""
        if self._policies is not None:
            return self._policies
        policies: list[KeyPolicy] = []
        if self.api_keys is not None:
            for key in (k.strip() for k in self.api_keys.get_secret_value().split(",")):
                if key:
                    policies.append(KeyPolicy(key=key, name=f"key-{key_id(key)[:8]}"))
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            for number, line in enumerate(lines, 1):
                policy = parse_key_line(line, where=f"API_KEYS_FILE line {number}")
                if policy is not None:
                    policies.append(policy)
        self._policies = policies
        return policies

    # Old names of role settings, kept while callers move to `settings.avibe` / `.avision`.
    @property
    def max_tokens_avibe(self) -> int:
        return self.avibe.max_tokens

    @property
    def max_tokens_avision(self) -> int:
        return self.avision.max_tokens

    @property
    def max_prompt_tokens(self) -> int:
        return self.avibe.max_prompt_tokens

    @property
    def avision_max_pixels(self) -> int:
        return self.avision.max_pixels

    @property
    def avision_max_images(self) -> int:
        return self.avision.max_images

    # ------------------------------------------------------------- showing it

    def groups(self) -> Iterator[tuple[type[Section], Section]]:
        """Each settings class with the object holding its values, in display order."""
        for group in FRONT_DOOR:
            yield group, self
        for name, section in SECTIONS.items():
            yield section, getattr(self, name)

    def public_view(self) -> dict[str, Any]:
        """The effective configuration keyed by environment variable, secrets masked."""
        view: dict[str, Any] = {}
        for group, values in self.groups():
            full = values.view()
            view.update({env: full[env] for env in group.env_names().values()})
        return view


def env_names() -> frozenset[str]:
    """Every environment variable the service reads as a setting."""
    names: set[str] = set()
    for group in (*FRONT_DOOR, *SECTIONS.values()):
        names.update(group.env_names().values())
    return frozenset(names)


class ConfigError(Exception):
    """Invalid configuration; the message is one line naming the variable."""


_ALL: tuple[type[Section], ...] = (Settings, *FRONT_DOOR, *SECTIONS.values())
_CLASSES: dict[str, type[Section]] = {c.__name__: c for c in _ALL}


def format_validation_error(error: ValidationError) -> str:
    owner = _CLASSES.get(error.title)
    names = owner.env_names() if owner is not None else {}
    parts = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        if not loc:  # a rule across several variables: the message names them
            parts.append(message)
            continue
        name = names.get(loc, loc.upper())
        value = item.get("input")
        # The value, unless the message names it already (a file and the line that is bad).
        shown = (
            f" (got {value!r})"
            if isinstance(value, str | int | float) and str(value) not in message
            else ""
        )
        parts.append(f"{name}: {message}{shown}")
    return "Invalid configuration: " + "; ".join(parts)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment and `.env`; raise ConfigError on a bad value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
