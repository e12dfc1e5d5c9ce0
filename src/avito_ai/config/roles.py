"""Each model role's settings: `AVIBE_*` (and MAX_TOKENS_AVIBE, MAX_PROMPT_TOKENS) in
`AvibeSettings`, `AVISION_*` (and MAX_TOKENS_AVISION) in `AvisionSettings`, read through
pydantic-settings' `env_prefix`; what both roles have is `RoleSettings`."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from avito_ai.config.section import Section

Backend = Literal["auto", "openvino", "transformers", "remote", "fake", "vllm", "sglang", "command"]
# The remote backend's name until 0.4; still accepted, read as "remote".
OLD_REMOTE_NAME = "openai"
# Backends that run an engine server as a child process (engines/process/).
PROCESS_BACKENDS = ("vllm", "sglang", "command")
Role = Literal["avibe", "avision"]

PositiveInt = Annotated[int, Field(gt=0)]
Port = Annotated[int, Field(ge=0, le=65535)]
MemoryShare = Annotated[float, Field(gt=0, le=1)]


class RoleSettings(Section):
    """What A-Vibe and A-Vision both have, under common names: `settings.avibe.model` is
    AVIBE_MODEL, `settings.avision.model` AVISION_MODEL."""

    role: ClassVar[Role]
    max_tokens: int  # MAX_TOKENS_<ROLE>: each role declares its own (name and default)

    model: str | None = None
    backend: Backend = Field(
        "auto",
        description="auto | openvino | transformers (the [transformers] extra) | remote "
        "(the upstreams below) | vllm | sglang | command (an engine process the service "
        "starts, below) | fake (echo, tests only)",
    )
    # --- Remote backend (<ROLE>_BACKEND=remote): OpenAI-compatible upstreams ---
    upstream_urls: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="remote backend: comma-separated base URLs of OpenAI-compatible "
        "upstreams (vLLM, SGLang...), e.g. http://vllm-1:8000,http://vllm-2:8000",
    )
    upstream_model: str | None = Field(
        None, description="model name sent upstream; empty = the first one the upstream lists"
    )
    upstream_api_key: SecretStr | None = Field(
        None, description="bearer key for the upstreams (secret)"
    )
    # --- Engine processes (<ROLE>_BACKEND=vllm|sglang|command) ---
    engine_command: str | None = Field(
        None,
        description='backend "command": any OpenAI-compatible server; {port}, {model}, '
        "{python} are filled in",
    )
    engine_health_path: str = Field(
        "/health",
        description='backend "command": the path that answers 200 once it serves '
        "(vLLM and SGLang: /health)",
    )
    engine_port: Port = Field(0, description="loopback port of the engine (0 = a free one)")
    engine_args: str = Field(
        "", description="extra engine arguments, passed through verbatim (shell quoting)"
    )
    gpu_memory: MemoryShare | None = Field(
        None,
        description="share of GPU memory (empty: 0.9 for one engine, 0.55 / 0.35 when both "
        "share a GPU)",
    )
    max_model_len: PositiveInt | None = Field(
        None, description="longest context (empty: the model's own)"
    )
    tensor_parallel_size: PositiveInt = Field(1, description="GPUs the engine spreads over")
    # --- Fair admission ---
    max_concurrency: Annotated[int, Field(ge=0)] = Field(
        0,
        description="requests generating at once before the fair queue holds the rest (0 = "
        "the engine's own: MAX_BATCH_SIZE in process, 1 for transformers A-Vision, 256 for "
        "remote engines)",
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _remote_by_its_old_name(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == OLD_REMOTE_NAME:
            return "remote"
        return value

    @field_validator("upstream_urls", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(u.strip().rstrip("/") for u in value.split(",") if u.strip())
        return value

    @model_validator(mode="after")
    def _backend_has_what_it_needs(self) -> Self:
        name = self.role.upper()
        if self.backend == "remote" and not self.upstream_urls:
            raise ValueError(f"{name}_BACKEND=remote needs {name}_UPSTREAM_URLS")
        if self.backend == "command" and not self.engine_command:
            raise ValueError(f"{name}_BACKEND=command needs {name}_ENGINE_COMMAND")
        if self.backend in ("vllm", "sglang") and not self.model:
            raise ValueError(f"{name}_BACKEND={self.backend} needs {name}_MODEL")
        return self

    @property
    def runs_engine_process(self) -> bool:
        """Whether the service starts this role's engine server (engines/process/)."""
        return self.backend in PROCESS_BACKENDS


class AvibeSettings(RoleSettings):
    """A-Vibe, the text model: `AVIBE_*`, MAX_TOKENS_AVIBE and MAX_PROMPT_TOKENS."""

    model_config = SettingsConfigDict(env_prefix="AVIBE_")
    heading: ClassVar[str] = "A-Vibe (text)"
    role: ClassVar[Role] = "avibe"

    model: str | None = Field(
        None, description="empty = embedded SmolLM2-135M-Instruct; a folder, a hub id or a .gguf"
    )
    backend: Backend = Field(
        "auto",
        description="auto (OpenVINO on a CPU, transformers on an NVIDIA GPU) | openvino | "
        "transformers (needs the [transformers] extra) | remote (the upstreams below) | vllm "
        "| sglang | command (an engine process the service starts, below) | fake (echo, "
        "tests only)",
    )
    max_tokens: PositiveInt = Field(
        256, validation_alias="max_tokens_avibe", description="Max tokens for text generation"
    )
    # The MAX_PROMPT_LENGTH bound in tokens, on the rendered A-Vibe prompt (chat template
    # included): characters undercount text the tokenizer splits finely (an emoji: 3 tokens).
    max_prompt_tokens: PositiveInt = Field(
        4096,
        validation_alias="max_prompt_tokens",
        description="Max tokens of the rendered A-Vibe prompt (chat template included)",
    )
    draft_model: str | None = Field(
        None,
        description="EAGLE-3 draft model (e.g. AvitoTech/avibe-eagle) for vLLM and SGLang: "
        "speculative decoding when set",
    )
    speculative_tokens: Annotated[int, Field(ge=1, le=16)] = Field(
        5, description="tokens drafted per step (the avibe-eagle card's 5)"
    )


class AvisionSettings(RoleSettings):
    """A-Vision, the image model: `AVISION_*` and MAX_TOKENS_AVISION."""

    model_config = SettingsConfigDict(env_prefix="AVISION_")
    heading: ClassVar[str] = "A-Vision (images)"
    role: ClassVar[Role] = "avision"

    model: str | None = Field(
        None, description="empty = A-Vision not configured (its requests get 503)"
    )
    backend: Backend = Field(
        "auto",
        description="auto (OpenVINO for an OpenVINO IR folder, `make export-avision`, unless "
        "DEVICE=cuda; transformers for a checkpoint) | openvino | transformers | remote | "
        "vllm | sglang | command | fake",
    )
    max_tokens: PositiveInt = Field(
        200, validation_alias="max_tokens_avision", description="Max tokens for image analysis"
    )
    max_images: Annotated[int, Field(ge=1, le=32)] = Field(
        4,
        description="images per request (checked here; also the engine's per-prompt limit)",
    )
    # 1280*28*28: about 1280 image tokens for Qwen2.5-VL.
    max_pixels: PositiveInt = Field(
        1003520,
        description="images are scaled down (aspect kept) to at most this many pixels before "
        "the model's processor sees them",
    )
