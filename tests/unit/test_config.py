from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from avito_ai.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]

# Every test here reads the environment (or starts a child that does): none of the
# service's variables from the machine running the tests may leak in.
pytestmark = pytest.mark.usefixtures("clean_environment")


def test_seed_defaults() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.rate_limit_per_minute, s.rate_limit_per_hour) == (10, 100)
    assert s.max_prompt_length == 2000
    assert s.allowed_origins == "*"
    assert (s.max_tokens_avibe, s.max_tokens_avision, s.temperature) == (256, 200, 0.7)
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
    assert s.avibe_model is None and s.temperature == 0.7


def test_blank_values_mean_the_default(monkeypatch) -> None:
    monkeypatch.setenv("AVISION_MODEL", "   ")
    monkeypatch.setenv("MAX_TOKENS_AVIBE", " ")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.avision_model is None and s.max_tokens_avibe == 256


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
    assert s.role("avision") is avision  # built once
    assert s.model_copy(update={"max_tokens_avision": 9}).role("avision").max_tokens == 9


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
    assert s.rate_limit_per_minute == 10 and s.api_keys is None and s.avibe_model is None
    assert s.model_dump() == Settings(_env_file=None).model_dump()  # type: ignore[call-arg]


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
