"""The real engines, in their own environments (`make engine-envs`): where they are, and
one long-lived worker per engine (engine_worker.py in the engine's Python) that answers many
checks after importing the engine once. Nothing of vLLM or SGLang is imported here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from avito_ai.config import ENGINE_VERSIONS, engine_env

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("engine_worker.py")
ENGINES = ("vllm", "sglang")


def envs_dir() -> Path:
    """ENGINE_ENVS_DIR as the Makefile and the service read it."""
    return Path(
        os.environ.get("ENGINE_ENVS_DIR") or Path.home() / ".cache" / "avito-ai" / "engines"
    )


def env_of(engine: str) -> Path:
    return engine_env(engine, envs_dir())


def require(engine: str) -> Path:
    """The engine's environment, or a skip naming the target that builds it; on CI
    (CI=true) a missing environment fails: `.ci/run` builds them before `make test`."""
    env = env_of(engine)
    if (env / ".installed").exists():
        return env
    why = (
        f"{engine} {ENGINE_VERSIONS[engine]} is not installed at {env}: `make {engine}-env` "
        "builds it (about 10 minutes, 10 GB), then these contract tests run"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the engine contract tests: {why}", pytrace=False)
    pytest.skip(why)


def command_for(engine: str) -> str:
    """VLLM_COMMAND / SGLANG_COMMAND as their defaults resolve them for these envs."""
    from avito_ai.config import default_engine_command

    return default_engine_command(engine, envs_dir())


class Worker:
    """engine_worker.py in the engine's own Python, kept for the whole test module."""

    def __init__(self, engine: str, environment: dict[str, str] | None = None) -> None:
        env = require(engine)
        self.engine = engine
        self.proc = subprocess.Popen(
            [str(env / "bin" / "python"), str(WORKER), engine],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(environment or {})},
        )
        hello = self._read()
        assert hello.get("ready"), hello
        self.name, self.version = hello["name"], hello["version"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the {self.engine} worker exited ({self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, op: str, **fields: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if not answer["ok"]:
            raise AssertionError(f"{self.engine} worker: {answer['error']}")
        return answer["result"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def qwen3_tokenizer(folder: Path) -> Path:
    """A Qwen3-style tokenizer (tests/tiny_models.py's byte-level BPE) whose <think>,
    </think>, <tool_call> and </tool_call> are single added tokens, as in Qwen3's: the
    engines' reasoning and tool parsers look for them by token."""
    sys.path.insert(0, str(ROOT))
    from transformers import PreTrainedTokenizerFast

    from tests.tiny_models import CORPUS, QWEN3_CHAT_TEMPLATE, SPECIALS, bpe_tokenizer

    extra = [
        '{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}',
        "Let me check the weather first. The capital of France is Paris.",
    ]
    plain = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
    tok = bpe_tokenizer(CORPUS + extra, SPECIALS, 600, plain)
    PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=QWEN3_CHAT_TEMPLATE,
    ).save_pretrained(str(folder))
    return folder
