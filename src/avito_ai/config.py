"""One Settings object, read from the environment and `.env`.

Nothing is built at import time: callers construct `Settings()` (or `load_settings()`)
explicitly, so tests and the CLI decide when the environment is read.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from avito_ai.clients import KeyPolicy, key_id, parse_key_line

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Backend = Literal["auto", "openvino", "transformers", "remote", "fake", "vllm", "sglang", "command"]
# The remote backend's name until 0.4; still accepted, read as "remote".
OLD_REMOTE_NAME = "openai"
# Backends that run an engine server as a child process (engines/process/).
PROCESS_BACKENDS = ("vllm", "sglang", "command")
Role = Literal["avibe", "avision"]

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "avito-ai"


# The engine versions the service's command lines are built and checked for (the Makefile's
# VLLM_VERSION and SGLANG_VERSION install them; tests/contract run them).
ENGINE_VERSIONS = {"vllm": "0.33.0", "sglang": "0.5.23"}


def engine_env(engine: str, envs_dir: Path) -> Path:
    """Where `make vllm-env` / `make sglang-env` put that engine's environment."""
    return envs_dir / f"{engine}-{ENGINE_VERSIONS[engine]}"


def default_engine_command(engine: str, envs_dir: Path) -> str:
    """VLLM_COMMAND / SGLANG_COMMAND when unset: the engine in its own environment."""
    bin_dir = engine_env(engine, envs_dir).expanduser().absolute() / "bin"
    if engine == "vllm":
        return shlex.quote(str(bin_dir / "vllm"))
    return shlex.join([str(bin_dir / "python"), "-m", "sglang.launch_server"])


@dataclass(frozen=True)
class RoleConfig:
    """One model role's configuration (`AVIBE_*` or `AVISION_*`) under common names:
    `settings.role("avibe").model` is AVIBE_MODEL. Built once per Settings."""

    role: Role
    backend: Backend
    model: str | None
    max_tokens: int  # MAX_TOKENS_AVIBE / MAX_TOKENS_AVISION
    upstream_urls: tuple[str, ...]
    upstream_model: str | None
    upstream_api_key: SecretStr | None
    engine_command: str | None
    engine_health_path: str
    engine_port: int
    engine_args: str
    gpu_memory: float | None
    max_model_len: int | None
    tensor_parallel_size: int
    max_concurrency: int
    # A-Vibe only: the EAGLE-3 draft model and its tokens per step.
    draft_model: str | None = None
    speculative_tokens: int = 5
    # A-Vision only: images per request.
    max_images: int = 1


class Settings(BaseSettings):
    """Every variable of the service. Names are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        validate_default=True,
        # VAR= (empty) in the environment or .env means "not set": the default applies.
        env_ignore_empty=True,
    )

    # --- Service ---
    environment: Literal["development", "staging", "production"] = "production"
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=1, le=65535)] = 8085
    graceful_timeout: NonNegativeFloat = 30.0
    # Slow clients: a connection that has not sent a whole request head this long after it
    # opened (or after its last answer, with keep-alive) is closed.
    header_read_timeout: Annotated[float, Field(gt=0)] = 10.0
    # A request head (request line and header fields) of more bytes, or more fields, gets
    # 431 from the server: nothing of it reaches the app (nginx in front: its own buffers).
    max_header_bytes: Annotated[int, Field(ge=1024)] = 32768
    max_headers: Annotated[int, Field(ge=8)] = 100
    # Open connections plus running requests per process; past it uvicorn answers 503.
    max_connections: Annotated[int, Field(ge=16)] = 1000
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are trusted (comma-separated, or *).
    forwarded_allow_ips: str = "127.0.0.1"
    # The path prefix a proxy mounts the service under (e.g. /ai, the proxy stripping it):
    # the page, /docs and the OpenAPI document name their URLs under it.
    root_path: str = ""

    # --- Security (original specification) ---
    rate_limit_per_minute: PositiveInt = 10
    rate_limit_per_hour: PositiveInt = 100
    max_prompt_length: PositiveInt = 2000
    # The same bound in tokens, on the rendered A-Vibe prompt (chat template included):
    # characters undercount text the tokenizer splits finely (an emoji can be 3 tokens).
    max_prompt_tokens: PositiveInt = 4096
    # memory:// (one process) or Redis, shared by workers and replicas: redis://host:port/db,
    # redis+cluster://host:port,host:port or redis+sentinel://host:port,host:port/service.
    rate_limit_storage_uri: str = "memory://"
    # When the rate-limit storage is unreachable: "open" serves requests unlimited,
    # "closed" refuses them with 503. Either way the answer is fast and logged.
    rate_limit_fail_mode: Literal["open", "closed"] = "open"
    # IPv6 clients are limited by network prefix: whoever has one address has the subnet.
    rate_limit_ipv6_prefix: Annotated[int, Field(ge=32, le=128)] = 64
    allowed_origins: str = "*"

    # --- Model performance (original specification) ---
    max_tokens_avibe: PositiveInt = 256
    max_tokens_avision: PositiveInt = 200
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7

    # --- Models ---
    avibe_model: str | None = None
    avision_model: str | None = None
    # auto: A-Vibe on OpenVINO on a CPU, on transformers when DEVICE asks for CUDA (or auto
    # finds an NVIDIA GPU and the transformers extra). A-Vision on OpenVINO (CPU, continuous
    # batching, the light install) when AVISION_MODEL is an OpenVINO IR folder (`make
    # export-avision`) and DEVICE is not cuda; else on transformers (a checkpoint, a GPU).
    avibe_backend: Backend = "auto"
    avision_backend: Backend = "auto"
    # Remote backend (AVIBE_BACKEND=remote): OpenAI-compatible upstreams such as vLLM or
    # SGLang. URLs are base URLs (with or without /v1), comma-separated.
    avibe_upstream_urls: str = ""
    avision_upstream_urls: str = ""
    avibe_upstream_model: str | None = None  # empty = the first model the upstream lists
    avision_upstream_model: str | None = None
    avibe_upstream_api_key: SecretStr | None = None
    avision_upstream_api_key: SecretStr | None = None
    upstream_connect_timeout: Annotated[float, Field(gt=0)] = 5.0
    upstream_read_timeout: Annotated[float, Field(gt=0)] = 60.0  # longest silence mid-stream
    upstream_health_interval: Annotated[float, Field(gt=0)] = 5.0
    # Engine processes (AVIBE_BACKEND=vllm|sglang|command): the service starts one engine
    # server per role on a loopback port, watches it, restarts it, and sends it the
    # requests through the remote backend above (docs/engines.md).
    # Where `make engine-envs` builds vLLM's and SGLang's own environments (the Makefile's
    # ENGINE_ENVS_DIR): vllm-0.33.0/ and sglang-0.5.23/. Unset VLLM_COMMAND and
    # SGLANG_COMMAND run the engines from there (absolute paths).
    engine_envs_dir: Path = Field(default_factory=lambda: _default_cache_dir() / "engines")
    vllm_command: str = ""  # unset: <ENGINE_ENVS_DIR>/vllm-0.33.0/bin/vllm
    sglang_command: str = ""  # unset: <ENGINE_ENVS_DIR>/sglang-0.5.23/bin/python -m ...
    # backend "command": any OpenAI-compatible server; {port} and {model} are filled in.
    avibe_engine_command: str | None = None
    avision_engine_command: str | None = None
    avibe_engine_health_path: str = "/health"  # backend "command" only; vLLM/SGLang: /health
    avision_engine_health_path: str = "/health"
    avibe_engine_port: Annotated[int, Field(ge=0, le=65535)] = 0  # 0: a free port
    avision_engine_port: Annotated[int, Field(ge=0, le=65535)] = 0
    avibe_engine_args: str = ""  # passed through verbatim (shell-style quoting)
    avision_engine_args: str = ""
    # Share of GPU memory per engine; unset: 0.9 for one engine, 0.55/0.35 when both share.
    avibe_gpu_memory: Annotated[float, Field(gt=0, le=1)] | None = None
    avision_gpu_memory: Annotated[float, Field(gt=0, le=1)] | None = None
    avibe_max_model_len: PositiveInt | None = None  # unset: the model's own
    avision_max_model_len: PositiveInt | None = None
    avibe_tensor_parallel_size: PositiveInt = 1
    avision_tensor_parallel_size: PositiveInt = 1
    # EAGLE-3 draft for A-Vibe (e.g. AvitoTech/avibe-eagle): speculative decoding is on
    # when set. Tokens drafted per step: the avibe-eagle card's 5.
    avibe_draft_model: str | None = None
    avibe_speculative_tokens: Annotated[int, Field(ge=1, le=16)] = 5
    # Images one A-Vision request may carry (checked here, and the engine's own limit).
    avision_max_images: Annotated[int, Field(ge=1, le=32)] = 4
    engine_stop_timeout: Annotated[float, Field(gt=0)] = 30.0  # SIGTERM, then SIGKILL
    # A ready engine whose health endpoint has not answered this long is killed and
    # restarted (frozen: SIGSTOPped, deadlocked, a hung GPU).
    engine_unhealthy_timeout: Annotated[float, Field(gt=0)] = 30.0
    # Where the engine supervisor writes each engine's state for the workers; unset: a
    # fresh temp folder per master (exported to the workers' environment).
    engine_state_dir: Path | None = None
    device: str = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    model_cache_dir: Path = Field(default_factory=_default_cache_dir)
    # OpenVINO engine: CPU threads (0: all cores), KV cache size in GB, tokens per step
    # (decode tokens plus a chunk of prefill: a long prompt never stalls the other streams).
    openvino_threads: Annotated[int, Field(ge=0)] = 0
    openvino_kv_cache_gb: PositiveInt = 1
    openvino_max_batched_tokens: Annotated[int, Field(ge=32)] = 256
    max_batch_size: PositiveInt = 16
    # Choices one request may ask for (OpenAI's n); each counts as a request.
    max_choices: Annotated[int, Field(ge=1, le=128)] = 8
    max_queue_size: PositiveInt = 64
    request_timeout: Annotated[float, Field(gt=0)] = 120.0
    max_image_size_mb: Annotated[float, Field(gt=0)] = 16.0
    max_body_size_mb: Annotated[float, Field(gt=0)] = 1.0
    # Longest pause in a request body before 408 (slow or stalled clients).
    body_read_timeout: Annotated[float, Field(gt=0)] = 30.0
    # Images are scaled down (aspect kept) to at most this many pixels before the vision
    # processor sees them: 1280*28*28, about 1280 image tokens for Qwen2.5-VL.
    avision_max_pixels: PositiveInt = 1003520

    # --- Logging (original specification) ---
    log_level: LogLevel = "INFO"
    log_file: Path | None = None
    log_format: Literal["text", "json"] = "text"

    # --- Gunicorn (read by gunicorn_config.py through load_settings) ---
    web_concurrency: PositiveInt = 1  # workers; each loads its own copy of the models
    gunicorn_bind: str | None = None  # None: HOST:PORT
    gunicorn_timeout: PositiveInt = 120
    # Shared metrics folder of the workers; None: a fresh temp folder per master.
    prometheus_multiproc_dir: Path | None = None

    # --- Testing aids: per-token and load delays of the fake engine (backend "fake" only) ---
    fake_token_delay: NonNegativeFloat = 0.0
    fake_load_delay: NonNegativeFloat = 0.0

    # --- Fair admission (services/admission.py) ---
    # Tokens (prompt + generated) per client per minute and per day; 0: no budget. Keys
    # may carry their own (API_KEYS_FILE fields). Counted in RATE_LIMIT_STORAGE_URI.
    tokens_per_minute: Annotated[int, Field(ge=0)] = 0
    tokens_per_day: Annotated[int, Field(ge=0)] = 0
    # Requests of one client generating at once (per worker); the rest wait. 0: no limit.
    client_concurrency: Annotated[int, Field(ge=0)] = 0
    # Requests of one client waiting for a model at once (per worker); past it, 429.
    # 0: a quarter of MAX_QUEUE_SIZE (at least 1), so one client cannot fill the queue.
    client_max_waiting: Annotated[int, Field(ge=0)] = 0
    # Requests generating at once per model before the fair queue holds the rest;
    # 0: the engine's own (MAX_BATCH_SIZE in process, 1 for A-Vision, 256 for remote).
    avibe_max_concurrency: Annotated[int, Field(ge=0)] = 0
    avision_max_concurrency: Annotated[int, Field(ge=0)] = 0

    # --- Secrets (masked by `avito-ai config`) ---
    api_keys: SecretStr | None = None
    api_keys_file: Path | None = None  # one key per line; "#" starts a comment

    # The keys as first read (api_key_policies): a Settings object is one configuration.
    _policies: list[KeyPolicy] | None = PrivateAttr(default=None)
    _roles: dict[Role, RoleConfig] = PrivateAttr(default_factory=dict)

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

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("*", mode="before")
    @classmethod
    def _blank_means_default(cls, value: Any, info: ValidationInfo) -> Any:
        """Only spaces count as empty too (env_ignore_empty covers ""): the default applies."""
        if isinstance(value, str) and value and not value.strip() and info.field_name:
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)
        return value

    @field_validator("vllm_command", "sglang_command")
    @classmethod
    def _engine_in_its_environment(cls, value: str, info: ValidationInfo) -> str:
        """Unset: the engine in the environment `make vllm-env` / `make sglang-env` builds
        (whether it is there is checked when the service starts one: `engine_problem`)."""
        if value.strip():
            try:
                if not shlex.split(value):
                    raise ValueError("names no program")
            except ValueError as exc:
                raise ValueError(f"not a command line: {exc}") from None
            return value
        folder = info.data.get("engine_envs_dir") or _default_cache_dir() / "engines"
        engine = "vllm" if info.field_name == "vllm_command" else "sglang"
        return default_engine_command(engine, Path(folder))

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

    @field_validator("log_file")
    @classmethod
    def _writable_log_file(cls, value: Path | None) -> Path | None:
        """Opened for appending (its folder made) as the server will: a path it cannot
        write stops `avito-ai config` and the server with one line, not a traceback."""
        if value is None:
            return None
        if value.is_dir():
            raise ValueError(f"{value} is a folder; give a file's path")
        try:
            value.parent.mkdir(parents=True, exist_ok=True)
            with value.open("a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise ValueError(f"cannot write {value}: {exc.strerror or exc}") from None
        return value

    @field_validator("rate_limit_storage_uri")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        schemes = ("memory", "redis", "rediss", "redis+unix", "redis+cluster", "redis+sentinel")
        if not value.startswith(tuple(f"{scheme}://" for scheme in schemes)):
            raise ValueError(
                "must be memory:// or a redis://, redis+cluster:// or redis+sentinel:// URI"
            )
        return value

    @field_validator("root_path")
    @classmethod
    def _a_path_prefix(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and (not value.startswith("/") or "//" in value or any(c in value for c in "?#")):
            raise ValueError("must be empty or a path such as /ai")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda"):
            return value
        if value.startswith("cuda:") and value[5:].isdigit():
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    @field_validator("avibe_backend", "avision_backend", mode="before")
    @classmethod
    def _remote_by_its_old_name(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == OLD_REMOTE_NAME:
            return "remote"
        return value

    def role(self, role: Role) -> RoleConfig:
        """One role's configuration, from the fields named `<role>_…` (and MAX_TOKENS_<ROLE>)."""
        cached = self._roles.get(role)
        if cached is not None:
            return cached
        prefix = f"{role}_"
        fields = dict(self)
        own = {n.removeprefix(prefix): v for n, v in fields.items() if n.startswith(prefix)}
        names = {f.name for f in dataclasses.fields(RoleConfig)}
        urls = str(own.pop("upstream_urls"))
        config = RoleConfig(
            role=role,
            max_tokens=fields[f"max_tokens_{role}"],
            upstream_urls=tuple(u.strip().rstrip("/") for u in urls.split(",") if u.strip()),
            **{name: value for name, value in own.items() if name in names},
        )
        self._roles[role] = config
        return config

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        copy._roles = {}  # built again from the copy's own fields
        return copy

    @model_validator(mode="after")
    def _backends_have_what_they_need(self) -> Settings:
        for role in ("avibe", "avision"):
            own = self.role(role)
            name = role.upper()
            if own.backend == "remote" and not own.upstream_urls:
                raise ValueError(f"{name}_BACKEND=remote needs {name}_UPSTREAM_URLS")
            if own.backend == "command" and not own.engine_command:
                raise ValueError(f"{name}_BACKEND=command needs {name}_ENGINE_COMMAND")
            if own.backend in ("vllm", "sglang") and not own.model:
                raise ValueError(f"{name}_BACKEND={own.backend} needs {name}_MODEL")
        return self

    def engine_processes(self) -> list[Role]:
        """The roles served by an engine process this service starts."""
        return [r for r in ("avibe", "avision") if self.role(r).backend in PROCESS_BACKENDS]

    @property
    def cors_origins(self) -> list[str]:
        """`ALLOWED_ORIGINS` as a list: `*` or comma-separated origins."""
        return [o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()]

    def public_view(self) -> dict[str, Any]:
        """The effective configuration keyed by environment variable, secrets masked."""
        view: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********" if value.get_secret_value() else ""
            elif isinstance(value, Path):
                value = str(value)
            view[name.upper()] = value
        return view


class ConfigError(Exception):
    """Invalid configuration; the message is one line naming the variable."""


def format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        name = ".".join(str(p) for p in item["loc"]).upper()
        if not name:  # a rule across several variables: the message names them
            parts.append(str(item["msg"]).removeprefix("Value error, "))
            continue
        value = item.get("input")
        message = str(item["msg"]).removeprefix("Value error, ")
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
