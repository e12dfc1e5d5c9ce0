"""Each backend's settings, apart from the roles' and the front door's: the in-process
engines' (where models run, their batch), OpenVINO's, the engine processes' (vLLM, SGLang),
the remote backend's and the fake engine's (test knobs, never production's)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from avito_ai.config.section import Section

PositiveInt = Annotated[int, Field(gt=0)]
Seconds = Annotated[float, Field(gt=0)]

# The engine versions the service's command lines are built and checked for (the Makefile's
# VLLM_VERSION and SGLANG_VERSION install them; tests/contract run them).
ENGINE_VERSIONS = {"vllm": "0.33.0", "sglang": "0.5.23"}


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "avito-ai"


def engine_env(engine: str, envs_dir: Path) -> Path:
    """Where `make vllm-env` / `make sglang-env` put that engine's environment."""
    return envs_dir / f"{engine}-{ENGINE_VERSIONS[engine]}"


def default_engine_command(engine: str, envs_dir: Path) -> str:
    """VLLM_COMMAND / SGLANG_COMMAND when unset: the engine in its own environment."""
    bin_dir = engine_env(engine, envs_dir).expanduser().absolute() / "bin"
    if engine == "vllm":
        return shlex.quote(str(bin_dir / "vllm"))
    return shlex.join([str(bin_dir / "python"), "-m", "sglang.launch_server"])


class InProcessSettings(Section):
    """What the in-process engines (OpenVINO, transformers) share: where models run and
    are cached, and how many sequences decode together. (DTYPE also goes to vLLM/SGLang.)"""

    heading: ClassVar[str] = "In-process engines (OpenVINO, transformers)"

    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto | bfloat16 | float16 | float32"
    )
    model_cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="converted weights cache; empty = ~/.cache/avito-ai",
    )
    max_batch_size: PositiveInt = Field(16, description="sequences decoded together per step")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda"):
            return value
        if value.startswith("cuda:") and value[5:].isdigit():
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")


class OpenVINOSettings(Section):
    """The OpenVINO engine's own: `OPENVINO_*`."""

    model_config = SettingsConfigDict(env_prefix="OPENVINO_")
    heading: ClassVar[str] = "OpenVINO engine"

    threads: Annotated[int, Field(ge=0)] = Field(0, description="CPU threads (0 = all cores)")
    kv_cache_gb: PositiveInt = Field(1, description="KV cache size in GB")
    # Decode tokens plus a chunk of prefill: a long prompt never stalls the other streams.
    max_batched_tokens: Annotated[int, Field(ge=32)] = Field(
        256,
        description="tokens per step (decode plus a chunk of prefill: lower keeps streams "
        "smooth while long prompts arrive)",
    )
    grammar_limit: Annotated[float, Field(gt=0)] = Field(
        15.0,
        description="seconds a structured-output grammar may take to compile (on an idle "
        "core, for the embedded model's vocabulary; less for a larger one): OpenVINO compiles "
        "it inside the step every request shares, so a longer one is refused with a 400",
    )


class ProcessSettings(Section):
    """Engine processes (<ROLE>_BACKEND=vllm|sglang|command): the service starts one engine
    server per role on a loopback port, watches it, restarts it, and sends it the requests
    through the remote backend (docs/engines.md). The per-role ones are `<ROLE>_ENGINE_*`."""

    heading: ClassVar[str] = "Engine processes (<ROLE>_BACKEND=vllm|sglang|command)"

    engine_envs_dir: Path = Field(
        default_factory=lambda: default_cache_dir() / "engines",
        description="where `make vllm-env` / `make sglang-env` build the engines' own "
        "environments (empty: ~/.cache/avito-ai/engines; the Makefile reads the same variable)",
    )
    vllm_command: str = Field(
        "",
        description="vLLM's program; empty: <ENGINE_ENVS_DIR>/vllm-0.33.0/bin/vllm (a missing "
        "one stops the start, naming the make target); or e.g. vllm in vLLM's own image",
    )
    sglang_command: str = Field(
        "",
        description="SGLang's; empty: <ENGINE_ENVS_DIR>/sglang-0.5.23/bin/python -m "
        "sglang.launch_server",
    )
    engine_stop_timeout: Seconds = Field(
        30.0, description="seconds an engine gets to stop after SIGTERM before SIGKILL"
    )
    # Frozen: SIGSTOPped, deadlocked, a hung GPU.
    engine_unhealthy_timeout: Seconds = Field(
        30.0,
        description="a ready engine that has not answered its health checks this long is "
        "killed and restarted",
    )
    engine_state_dir: Path | None = Field(
        None,
        description="where the supervisor writes engine states for the workers (empty: a "
        "temp folder, exported to the workers' environment)",
    )

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
        folder = info.data.get("engine_envs_dir") or default_cache_dir() / "engines"
        engine = "vllm" if info.field_name == "vllm_command" else "sglang"
        return default_engine_command(engine, Path(folder))

    def command(self, kind: Literal["vllm", "sglang"]) -> str:
        return self.vllm_command if kind == "vllm" else self.sglang_command


class RemoteSettings(Section):
    """The remote backend's (<ROLE>_BACKEND=remote, and engine processes behind it): how
    long to wait for an upstream. The upstreams themselves are `<ROLE>_UPSTREAM_*`."""

    model_config = SettingsConfigDict(env_prefix="UPSTREAM_")
    heading: ClassVar[str] = "Remote backend (<ROLE>_BACKEND=remote, and engine processes)"

    connect_timeout: Seconds = Field(5.0, description="seconds to connect to an upstream")
    read_timeout: Seconds = Field(60.0, description="longest silence mid-stream, seconds")
    health_interval: Seconds = Field(5.0, description="seconds between health probes")


class FakeSettings(Section):
    """The fake engine's (<ROLE>_BACKEND=fake, tests only): `FAKE_*`."""

    model_config = SettingsConfigDict(env_prefix="FAKE_")
    heading: ClassVar[str] = "Testing aids (fake backend only)"

    token_delay: Annotated[float, Field(ge=0)] = Field(
        0.0, description="seconds per token of the fake engine"
    )
    load_delay: Annotated[float, Field(ge=0)] = Field(
        0.0,
        description='seconds the fake engine takes to "load" (the model shows as loading '
        "meanwhile)",
    )
