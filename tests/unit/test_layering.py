"""The service starts and answers without the transformers backend's heavy libraries when
that backend is not used (the import contract in pyproject.toml checks the source).

torch is made unimportable, as on the light install (`make serve`, the CPU image), where it
is not installed: with torch installed, xgrammar's C++ binding layer (tvm_ffi) imports it
first thing, which is no concern of the service's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch':
            raise ImportError('no torch on the light install')
sys.meta_path.insert(0, NoTorch())
from fastapi.testclient import TestClient
from avito_ai.app import create_app
from avito_ai.config import Settings

settings = Settings(_env_file=None, avibe_backend="fake", avision_backend="fake")
with TestClient(create_app(settings)) as client:
    r = client.post("/api/v1/text/generate", json={"prompt": "hello there"})
    assert r.status_code == 200, r.text
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    r = client.post("/v1/chat/completions", json={
        "model": "avibe", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    })
    assert r.status_code == 200, r.text
    assert client.get("/api/health/ready").status_code == 200
heavy = sorted(m for m in ("transformers", "tokenizers", "xgrammar.matcher") if m in sys.modules)
print(",".join(heavy) or "none")
"""


def test_fake_backends_serve_without_torch_or_transformers(clean_environment) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=clean_environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "none"


def test_a_backend_whose_extra_is_missing_stops_start_with_one_line(monkeypatch, capsys) -> None:
    """A light install (no torch) asked for the transformers engine: exit 2, one line
    naming the extra to install."""
    import pytest

    from avito_ai.cli import settings_or_exit
    from avito_ai.engines import registry

    real = registry._installed
    monkeypatch.setattr(registry, "_installed", lambda m: m not in {"torch"} and real(m))
    monkeypatch.setenv("AVIBE_BACKEND", "transformers")
    with pytest.raises(SystemExit) as stopped:
        settings_or_exit()
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'avito-ai[transformers]'" in lines[0]
    monkeypatch.setenv("AVIBE_BACKEND", "auto")  # auto on a CPU: OpenVINO, nothing missing
    assert settings_or_exit().avibe.backend == "auto"
    assert registry.backend_for("avibe", settings_or_exit().engines) == "openvino"
