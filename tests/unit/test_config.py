from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from avito_ai.batches.settings import BatchSettings
from avito_ai.config import (
    FRONT_DOOR,
    SECTIONS,
    AvibeSettings,
    ConfigError,
    FakeSettings,
    Settings,
    env_names,
    load_settings,
)
from avito_ai.config.example import env_example

ROOT = Path(__file__).resolve().parents[2]

# Every test here reads the environment (or starts a child that does): none of the
# service's variables from the machine running the tests may leak in.
pytestmark = pytest.mark.usefixtures("clean_environment")


def test_seed_defaults() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.rate_limit_per_minute, s.rate_limit_per_hour) == (10, 100)
    assert s.max_prompt_length == 2000
    assert s.allowed_origins == "*"
    assert (s.avibe.max_tokens, s.avision.max_tokens, s.temperature) == (256, 200, 0.7)
    assert s.log_level == "INFO" and s.log_file is None and s.log_format == "text"
    assert s.port == 8085


def test_environment_and_dotenv(tmp_path, monkeypatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("RATE_LIMIT_PER_MINUTE=100\nLOG_LEVEL=debug\nLOG_FILE=\nAVIBE_MODEL=\n")
    monkeypatch.setenv("TEMPERATURE", "")  # empty means unset: the default applies
    monkeypatch.setenv("MAX_PROMPT_LENGTH", "50")
    s = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert s.rate_limit_per_minute == 100
    assert s.log_level == "DEBUG"
    assert s.log_file is None
    assert s.max_prompt_length == 50
    assert s.avibe.model is None and s.temperature == 0.7


def test_blank_values_mean_the_default(monkeypatch) -> None:
    monkeypatch.setenv("AVISION_MODEL", "   ")
    monkeypatch.setenv("MAX_TOKENS_AVIBE", " ")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.avision.model is None and s.avibe.max_tokens == 256


def test_role_settings(make_settings) -> None:
    s = make_settings(
        avision_model="/models/avision",
        avision_backend="openai",
        avision_upstream_urls="http://a:8000/, http://b:8000",
        max_tokens_avision=77,
    )
    avision = s.role("avision")
    # "openai", the remote backend's old name, is still read (as "remote")
    assert (avision.model, avision.backend, avision.max_tokens) == ("/models/avision", "remote", 77)
    assert avision.upstream_urls == ("http://a:8000", "http://b:8000")
    assert s.role("avibe").model is None and s.role("avibe").backend == "auto"
    assert (avision.max_images, s.role("avibe").speculative_tokens) == (4, 5)
    assert s.role("avision") is avision is s.avision  # built once
    shorter = s.avision.model_copy(update={"max_tokens": 9})
    assert s.model_copy(update={"avision": shorter}).role("avision").max_tokens == 9


def test_cors_origins_list() -> None:
    s = Settings(_env_file=None, allowed_origins="https://a.com/, https://b.com")  # type: ignore[call-arg]
    assert s.cors_origins == ["https://a.com", "https://b.com"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RATE_LIMIT_PER_MINUTE", "abc"),
        ("RATE_LIMIT_PER_HOUR", "0"),
        ("TEMPERATURE", "3"),
        ("LOG_FORMAT", "xml"),
        ("DEVICE", "tpu"),
        ("PORT", "70000"),
    ],
)
def test_invalid_value_names_the_variable(monkeypatch, name, value) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as exc:
        load_settings(_env_file=None)
    message = str(exc.value)
    assert name in message and "\n" not in message


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "avito_ai", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_invalid_value_stops_startup_with_one_line(tmp_path) -> None:
    r = run_cli("serve", env={"RATE_LIMIT_PER_MINUTE": "abc", "AVIBE_BACKEND": "fake"})
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "RATE_LIMIT_PER_MINUTE" in lines[0]


def test_config_command_prints_effective_config_with_secrets_masked() -> None:
    r = run_cli("config", env={"API_KEYS": "sk-very-secret", "RATE_LIMIT_PER_MINUTE": "42"})
    assert r.returncode == 0, r.stderr
    assert "RATE_LIMIT_PER_MINUTE=42" in r.stdout
    assert "API_KEYS=**********" in r.stdout
    assert "sk-very-secret" not in r.stdout


def test_env_example_loads_as_the_defaults() -> None:
    s = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    assert s.rate_limit_per_minute == 10 and s.api_keys is None and s.avibe.model is None
    assert s.public_view() == Settings(_env_file=None).public_view()  # type: ignore[call-arg]


def test_seed_configuration_check_command() -> None:
    import os

    command = [sys.executable, "-c", "from config import config; print(config.environment)"]
    ok = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "ENVIRONMENT": "staging"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "staging"
    bad = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "RATE_LIMIT_PER_MINUTE": "abc"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "RATE_LIMIT_PER_MINUTE" in bad.stderr


def test_keys_file_fields_and_the_old_format(tmp_path, make_settings) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(
        "# team keys\n"
        "sk-plain\n"
        "sk-a name=search tokens_per_minute=20000 tokens_per_day=0 concurrency=2  # note\n"
        "sk-b name=nightly priority=batch\n"
        "sk-c name=ops classes=interactive,batch\n"
    )
    policies = {
        p.key: p for p in make_settings(api_keys_file=keys, api_keys="sk-env").api_key_policies()
    }
    assert set(policies) == {"sk-plain", "sk-a", "sk-b", "sk-c", "sk-env"}
    assert (
        policies["sk-plain"].name.startswith("key-")
        and policies["sk-plain"].tokens_per_minute is None
    )
    a = policies["sk-a"]
    assert (a.name, a.tokens_per_minute, a.tokens_per_day, a.concurrency) == ("search", 20000, 0, 2)
    assert policies["sk-b"].priority == "batch" and policies["sk-b"].classes == {"batch"}
    assert policies["sk-c"].classes == {"interactive", "batch"}
    assert "sk-a" not in repr(a)  # never printed


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("sk-x tokens_per_minute=lots", "line 1: tokens_per_minute must be a whole number"),
        ("sk-x priority=urgent", "line 1: unknown priority class 'urgent'"),
        ("sk-x colour=red", "line 1: unknown field"),
        ("sk-x name", "line 1: 'name' is not name=value"),
    ],
)
def test_a_bad_keys_file_line_stops_the_start(tmp_path, line, message, clean_environment) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(api_keys_file=keys)


def test_root_path_is_a_path_prefix(make_settings) -> None:
    assert make_settings(root_path="/ai/").root_path == "/ai"
    assert make_settings().root_path == ""
    for bad in ("ai", "/ai?x=1", "//ai"):
        with pytest.raises(ValidationError, match="root_path"):
            make_settings(root_path=bad)


# Every variable the original specification (README_PRODUCTION.md) and the README name,
# with a value that is not its default, and where the settings classes keep it.
DOCUMENTED = {
    "RATE_LIMIT_PER_MINUTE": ("50", lambda s: s.rate_limit_per_minute, 50),
    "RATE_LIMIT_PER_HOUR": ("500", lambda s: s.rate_limit_per_hour, 500),
    "MAX_PROMPT_LENGTH": ("3000", lambda s: s.max_prompt_length, 3000),
    "ALLOWED_ORIGINS": ("https://a.example", lambda s: s.cors_origins, ["https://a.example"]),
    "MAX_TOKENS_AVIBE": ("128", lambda s: s.avibe.max_tokens, 128),
    "MAX_TOKENS_AVISION": ("100", lambda s: s.avision.max_tokens, 100),
    "TEMPERATURE": ("0.2", lambda s: s.temperature, 0.2),
    "LOG_LEVEL": ("debug", lambda s: s.log_level, "DEBUG"),
    "LOG_FILE": ("/var/log/app.log", lambda s: str(s.log_file), "/var/log/app.log"),
    "ENVIRONMENT": ("staging", lambda s: s.environment, "staging"),
    "PORT": ("9000", lambda s: s.port, 9000),
    "AVIBE_MODEL": ("/models/avibe", lambda s: s.avibe.model, "/models/avibe"),
    "AVISION_MODEL": ("/models/avision", lambda s: s.avision.model, "/models/avision"),
    "AVIBE_BACKEND": ("openvino", lambda s: s.avibe.backend, "openvino"),
    "AVISION_MAX_PIXELS": ("500000", lambda s: s.avision.max_pixels, 500000),
    "AVISION_MAX_IMAGES": ("2", lambda s: s.avision.max_images, 2),
    "MAX_PROMPT_TOKENS": ("1000", lambda s: s.avibe.max_prompt_tokens, 1000),
    "DEVICE": ("cuda:1", lambda s: s.in_process.device, "cuda:1"),
    "DTYPE": ("bfloat16", lambda s: s.in_process.dtype, "bfloat16"),
    "MAX_BATCH_SIZE": ("4", lambda s: s.in_process.max_batch_size, 4),
    "MAX_QUEUE_SIZE": ("8", lambda s: s.engines.max_queue_size, 8),
    "OPENVINO_THREADS": ("2", lambda s: s.openvino.threads, 2),
    "OPENVINO_KV_CACHE_GB": ("3", lambda s: s.openvino.kv_cache_gb, 3),
    "VLLM_COMMAND": ("vllm", lambda s: s.process.vllm_command, "vllm"),
    "ENGINE_STOP_TIMEOUT": ("5", lambda s: s.process.engine_stop_timeout, 5.0),
    "AVIBE_UPSTREAM_URLS": ("http://u:8000/,http://v", lambda s: s.avibe.upstream_urls,
                            ("http://u:8000", "http://v")),
    "AVIBE_DRAFT_MODEL": ("AvitoTech/avibe-eagle", lambda s: s.avibe.draft_model,
                          "AvitoTech/avibe-eagle"),
    "AVISION_ENGINE_PORT": ("8300", lambda s: s.avision.engine_port, 8300),
    "UPSTREAM_READ_TIMEOUT": ("7", lambda s: s.remote.read_timeout, 7.0),
    "FAKE_TOKEN_DELAY": ("0.5", lambda s: s.fake.token_delay, 0.5),
    "API_KEYS": ("sk-1", lambda s: s.api_keys.get_secret_value(), "sk-1"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_documented_variable_reaches_its_class(monkeypatch, tmp_path, name) -> None:
    value, read, expected = DOCUMENTED[name]
    monkeypatch.setenv(name, value)
    assert read(Settings(_env_file=None)) == expected  # type: ignore[call-arg]
    monkeypatch.delenv(name)
    (tmp_path / ".env").write_text(f"{name}={value}\n")  # and from .env, as before
    assert read(Settings(_env_file=tmp_path / ".env")) == expected  # type: ignore[call-arg]


# The variables the service read before its settings were split (README, docs/, the
# original specification): each one keeps its name.
VARIABLES = [
    "ALLOWED_ORIGINS", "API_KEYS", "API_KEYS_FILE", "AVIBE_BACKEND", "AVIBE_DRAFT_MODEL",
    "AVIBE_ENGINE_ARGS", "AVIBE_ENGINE_COMMAND", "AVIBE_ENGINE_HEALTH_PATH",
    "AVIBE_ENGINE_PORT", "AVIBE_GPU_MEMORY", "AVIBE_MAX_CONCURRENCY", "AVIBE_MAX_MODEL_LEN",
    "AVIBE_MODEL", "AVIBE_SPECULATIVE_TOKENS", "AVIBE_TENSOR_PARALLEL_SIZE",
    "AVIBE_UPSTREAM_API_KEY", "AVIBE_UPSTREAM_MODEL", "AVIBE_UPSTREAM_URLS",
    "AVISION_BACKEND", "AVISION_ENGINE_ARGS", "AVISION_ENGINE_COMMAND",
    "AVISION_ENGINE_HEALTH_PATH", "AVISION_ENGINE_PORT", "AVISION_GPU_MEMORY",
    "AVISION_MAX_CONCURRENCY", "AVISION_MAX_IMAGES", "AVISION_MAX_MODEL_LEN",
    "AVISION_MAX_PIXELS", "AVISION_MODEL", "AVISION_TENSOR_PARALLEL_SIZE",
    "AVISION_UPSTREAM_API_KEY", "AVISION_UPSTREAM_MODEL", "AVISION_UPSTREAM_URLS",
    "BODY_READ_TIMEOUT", "CLIENT_CONCURRENCY", "CLIENT_MAX_WAITING", "DEVICE", "DTYPE",
    "ENGINE_ENVS_DIR", "ENGINE_STATE_DIR", "ENGINE_STOP_TIMEOUT",
    "ENGINE_UNHEALTHY_TIMEOUT", "ENVIRONMENT", "FAKE_LOAD_DELAY", "FAKE_TOKEN_DELAY",
    "FORWARDED_ALLOW_IPS", "GRACEFUL_TIMEOUT", "GUNICORN_BIND", "GUNICORN_TIMEOUT",
    "HEADER_READ_TIMEOUT", "HOST", "LOG_FILE", "LOG_FORMAT", "LOG_LEVEL", "MAX_BATCH_SIZE",
    "MAX_BODY_SIZE_MB", "MAX_CHOICES", "MAX_CONNECTIONS", "MAX_HEADERS", "MAX_HEADER_BYTES",
    "MAX_IMAGE_SIZE_MB", "MAX_PROMPT_LENGTH", "MAX_PROMPT_TOKENS", "MAX_QUEUE_SIZE",
    "MAX_TOKENS_AVIBE", "MAX_TOKENS_AVISION", "MODEL_CACHE_DIR", "OPENVINO_KV_CACHE_GB",
    "OPENVINO_GRAMMAR_LIMIT", "OPENVINO_MAX_BATCHED_TOKENS", "OPENVINO_THREADS", "PORT",
    "PROMETHEUS_MULTIPROC_DIR",
    "RATE_LIMIT_FAIL_MODE", "RATE_LIMIT_IPV6_PREFIX", "RATE_LIMIT_PER_HOUR",
    "RATE_LIMIT_PER_MINUTE", "RATE_LIMIT_STORAGE_URI", "REQUEST_TIMEOUT", "ROOT_PATH",
    "SGLANG_COMMAND", "TEMPERATURE", "TOKENS_PER_DAY", "TOKENS_PER_MINUTE",
    "UPSTREAM_CONNECT_TIMEOUT", "UPSTREAM_HEALTH_INTERVAL", "UPSTREAM_READ_TIMEOUT",
    "VLLM_COMMAND", "WEB_CONCURRENCY",
]  # fmt: skip


def test_every_variable_of_before_is_still_read() -> None:
    assert env_names() == set(VARIABLES)
    assert set(DOCUMENTED) <= env_names()


def test_every_variable_shows_in_config_and_env_example() -> None:
    """`avito-ai config` and `.env.example` come from the classes: every field of every
    class shows, under its environment name, once."""
    view = Settings.given().public_view()
    assert set(view) == env_names() and len(view) == len(env_names())
    fields = sum(len(c.model_fields) for c in (*FRONT_DOOR, *SECTIONS.values()))
    assert len(env_names()) == fields  # no two classes read one variable
    example = (ROOT / ".env.example").read_text()
    batch = set(BatchSettings.env_names().values())
    assert set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M)) == env_names() | batch
    # written from the classes: `avito-ai config --example > .env.example` after a change
    assert example == env_example()


def test_each_class_reads_only_its_own(monkeypatch) -> None:
    """The front door has no role or backend field; each backend class only its own."""
    front = {n for c in FRONT_DOOR for n in c.env_names().values()}
    assert not any(n.startswith(("AVIBE_", "AVISION_", "OPENVINO_", "UPSTREAM_", "FAKE_"))
                   for n in front)  # fmt: skip
    assert all(n.startswith("FAKE_") for n in FakeSettings.env_names().values())
    monkeypatch.setenv("AVISION_MAX_PIXELS", "640000")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.avision.max_pixels == 640000 and "max_pixels" not in AvibeSettings.model_fields


def test_keyword_values_go_to_their_class_and_typos_are_refused() -> None:
    s = Settings.given(avibe_model="m", max_tokens_avision=9, device="cpu", fake_load_delay=1)
    assert (s.avibe.model, s.avision.max_tokens, s.in_process.device) == ("m", 9, "cpu")
    assert s.fake.load_delay == 1
    with pytest.raises(TypeError, match="avibe_modle"):
        Settings.given(avibe_modle="m")


def test_the_log_file_is_checked_when_the_server_starts_not_when_read(tmp_path) -> None:
    """Reading the settings writes nothing; the server's start-up step makes the folder."""
    from avito_ai.cli import checked_settings

    path = tmp_path / "logs" / "app.log"
    s = Settings.given(log_file=path)
    assert s.log_file == path and not path.parent.exists()
    import os

    os.environ["LOG_FILE"] = str(path)
    try:
        checked_settings(serving=True, avibe_backend="fake", _env_file=None)
    finally:
        del os.environ["LOG_FILE"]
    assert path.exists()
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(ConfigError, match="LOG_FILE: cannot write"):
        checked_settings(serving=True, log_file=blocked / "app.log", _env_file=None)
