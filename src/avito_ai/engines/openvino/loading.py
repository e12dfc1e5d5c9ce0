"""What OpenVINO GenAI can serve, and getting it into a continuous-batching pipeline.

`AVIBE_MODEL` may be unset (the embedded SmolLM2 GGUF), a `.gguf` file (OpenVINO GenAI reads
GGUF directly: no conversion, no cache) or an OpenVINO IR folder exported with
`optimum-cli export openvino --model <hub id or folder> <out>`. OpenVINO loads local files
only; a transformers checkpoint folder or a hub id gets a reason that says what to do.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avito_ai.config import InProcessSettings, OpenVINOSettings
from avito_ai.engines.models import ModelLoadError, gguf_location

log = logging.getLogger(__name__)

IR_FILES = ("openvino_model.xml", "openvino_language_model.xml")
_WHAT_TO_DO = (
    "re-download it, export the model to an OpenVINO IR folder "
    "(`optimum-cli export openvino --model <model> <folder>`), "
    "or serve it with AVIBE_BACKEND=transformers"
)


# One pipeline is built at a time in the process: OpenVINO GenAI's Python constructors point
# it at its tokenizer library through an environment variable they set and unset around
# themselves, so A-Vibe and A-Vision loading at once made one of them miss it ("Failed to
# load shared object: .../libopenvino_tokenizers.so").
CONSTRUCTION = threading.Lock()


@dataclass(frozen=True)
class ModelSource:
    path: str  # the .gguf file or the IR folder
    model_id: str  # what status() reports


@dataclass
class LoadedPipeline:
    pipe: Any  # openvino_genai.ContinuousBatchingPipeline
    tokenizer: Any  # openvino_genai.Tokenizer
    precision: str  # the CPU's inference precision (f32, bf16)
    seconds: float
    context_length: int | None  # from the GGUF header; None for an IR folder


def resolve_source(spec: str | None) -> ModelSource:
    """Classify an AVIBE_MODEL value for OpenVINO. Raises ModelLoadError with a reason."""
    found = gguf_location(spec)
    if found is not None:
        _, file, model_id = found
        return ModelSource(str(file), model_id)
    assert spec is not None  # unset is the embedded model
    spec = spec.strip()
    path = Path(spec).expanduser()
    if path.is_dir():
        if any((path / name).is_file() for name in IR_FILES):
            return ModelSource(str(path.resolve()), spec)
        if (path / "config.json").is_file():
            raise ModelLoadError(
                f"{spec} is a transformers checkpoint, not an OpenVINO IR folder: export it "
                f"(`optimum-cli export openvino --model {spec} {spec}-ov`) and point AVIBE_MODEL "
                "there, or serve it with AVIBE_BACKEND=transformers"
            )
        raise ModelLoadError(f"{spec} holds no OpenVINO model ({' or '.join(IR_FILES)})")
    if path.exists():
        raise ModelLoadError(f"{spec} is neither a .gguf file nor an OpenVINO IR folder")
    raise ModelLoadError(
        f"model {spec} not found: OpenVINO serves local files only (a .gguf file or an "
        "OpenVINO IR folder); for a hub id use AVIBE_BACKEND=transformers"
    )


def new_pipeline(path: str, max_batch_size: int, settings: OpenVINOSettings) -> Any:
    """A ContinuousBatchingPipeline on the CPU for a GGUF file or an IR folder (text or
    vision-language), with the service's scheduler. Blocking; raises OpenVINO's errors."""
    import openvino_genai as genai

    scheduler = genai.SchedulerConfig()
    scheduler.cache_size = settings.kv_cache_gb
    scheduler.max_num_seqs = max_batch_size
    # Chunked prefill: a long prompt (or an image's tokens) is prefilled a chunk per step,
    # beside the running streams' decode tokens, so it never stalls them for the whole prompt.
    scheduler.dynamic_split_fuse = True
    scheduler.max_num_batched_tokens = settings.max_batched_tokens
    scheduler.enable_prefix_caching = True
    properties: dict[str, Any] = {}
    if settings.threads:
        properties["INFERENCE_NUM_THREADS"] = settings.threads
    with CONSTRUCTION:
        return genai.ContinuousBatchingPipeline(path, scheduler, "CPU", properties)


def cpu_precision() -> str:
    """The precision OpenVINO infers in on this CPU (bf16 where the CPU has it)."""
    import openvino as ov

    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return hint.to_string() if hasattr(hint, "to_string") else str(hint)


def openable_gguf(path: Path, cache_dir: Path) -> Path:
    """A path to `path` that OpenVINO GenAI can open. Its GGUF reader opens the file for
    writing (2026.4: "Failed to open ... with gguf_open" for a file the process may only
    read), so a GGUF this user cannot write, as an installed package's for a service user,
    is copied once into MODEL_CACHE_DIR/gguf (reused while its size and time match)."""
    if os.access(path, os.W_OK):
        return path
    stat = path.stat()
    copy = cache_dir / "gguf" / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}.gguf"
    if copy.is_file() and copy.stat().st_size == stat.st_size:
        return copy
    started = time.monotonic()
    copy.parent.mkdir(parents=True, exist_ok=True)
    partial = copy.with_suffix(f".{os.getpid()}.partial")
    try:
        shutil.copyfile(path, partial)
        partial.replace(copy)  # whole or not at all, for a concurrent worker too
    finally:
        partial.unlink(missing_ok=True)
    log.info(
        "%s is read-only for this user, and OpenVINO opens a GGUF for writing: copied to "
        "%s (%.0f MB in %.1f s, once)",
        path,
        copy,
        stat.st_size / 1e6,
        time.monotonic() - started,
    )
    return copy


def load_pipeline(
    source: ModelSource, local: InProcessSettings, settings: OpenVINOSettings
) -> LoadedPipeline:
    """Build the continuous-batching pipeline. Blocking: run it in a thread."""
    import openvino_genai as genai

    from avito_ai.engines.openvino.gguf_check import GGUFProblem, check_gguf

    started = time.monotonic()
    context: int | None = None
    if source.path.lower().endswith(".gguf"):
        try:  # before OpenVINO reads it: a truncated file would crash the process
            context = check_gguf(Path(source.path)).context_length
        except (GGUFProblem, OSError) as exc:
            raise ModelLoadError(f"cannot load {source.path}: {exc}; {_WHAT_TO_DO}") from exc
    try:
        path = source.path
        if path.lower().endswith(".gguf"):
            path = str(openable_gguf(Path(path), local.model_cache_dir))
        pipe = new_pipeline(path, local.max_batch_size, settings)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelLoadError(
            f"cannot load {source.path}: {first}. The file may be truncated, or its "
            f"architecture is one OpenVINO GenAI cannot serve; {_WHAT_TO_DO}"
        ) from exc
    precision = cpu_precision()
    # Warm up here, not in the first client's request: the first inference compiles kernels.
    warm = genai.GenerationConfig()
    warm.max_new_tokens = 2
    pipe.generate(["Hello"], [warm])
    # The grammar compiler's one-time set-up (seconds, the GIL held) too: at start, not in
    # the first structured request's step.
    warm.structured_output_config = genai.StructuredOutputConfig(grammar='root ::= "a"')
    pipe.generate(["Hello"], [warm])
    return LoadedPipeline(
        pipe, pipe.get_tokenizer(), precision, time.monotonic() - started, context
    )
