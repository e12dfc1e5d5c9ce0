"""A-Vision's OpenVINO IR folder: found, checked and loaded into a continuous-batching
pipeline. No torch.

`AVISION_MODEL` is a folder exported with `make export-avision MODEL=<hub id or folder>
OUT=<folder>` (`optimum-cli export openvino --task image-text-to-text`): the language model,
the text and vision embeddings (and, for Qwen2-VL, the vision merger), the tokenizer pair,
and the checkpoint's config.json and preprocessor_config.json. Everything that can be told
from the folder is checked before OpenVINO reads it, so a wrong folder gets a reason that
names it and says what to do; what only OpenVINO can tell (a truncated or damaged file)
comes back as its own one-line message with the same advice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avito_ai.config import InProcessSettings, OpenVINOSettings
from avito_ai.engines.models import ModelLoadError

# The files of a vision-language IR (optimum-intel's names), beyond the language model.
VLM_PARTS = (
    "openvino_language_model.xml",
    "openvino_text_embeddings_model.xml",
    "openvino_vision_embeddings_model.xml",
    "openvino_tokenizer.xml",
    "openvino_detokenizer.xml",
)
# Qwen2-VL's vision encoder comes in two parts: the patch embeddings and the merger.
MERGER = "openvino_vision_embeddings_merger_model.xml"
# config.json model_type -> what the engine knows of it (prompt tags, image tokens).
ARCHITECTURES = ("qwen2_vl", "qwen2_5_vl")
TEXT_IR = "openvino_model.xml"  # a text model's IR (A-Vibe's kind)


def export_hint(model: str) -> str:
    return f"`make export-avision MODEL={model} OUT={model.rstrip('/')}-ov`"


@dataclass(frozen=True)
class ImageGeometry:
    """How the model's image processor sizes an image (Qwen2-VL's smart_resize)."""

    min_pixels: int = 56 * 56
    max_pixels: int = 14 * 14 * 4 * 1280
    patch_size: int = 14
    merge_size: int = 2

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class VisionSource:
    path: Path  # the IR folder, resolved
    model_id: str  # AVISION_MODEL as given: what status() reports
    architecture: str
    context_length: int | None
    geometry: ImageGeometry


@dataclass
class LoadedVision:
    pipe: Any  # openvino_genai.ContinuousBatchingPipeline
    tokenizer: Any  # openvino_genai.Tokenizer
    precision: str
    seconds: float


def _read_json(path: Path, spec: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{spec}: cannot read {path.name} ({exc}); the folder is damaged, export it "
            f"again ({export_hint(spec)})"
        ) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{spec}: {path.name} is not a JSON object; export it again")
    return data


def is_ir_folder(spec: str | None) -> bool:
    """Whether `spec` names an OpenVINO IR folder (of any model): what `auto` looks at."""
    if not spec:
        return False
    path = Path(spec.strip()).expanduser()
    return path.is_dir() and any((path / n).is_file() for n in (VLM_PARTS[0], TEXT_IR))


def resolve_vision_source(spec: str | None) -> VisionSource:
    """Check an AVISION_MODEL value for the OpenVINO engine. Raises ModelLoadError."""
    if not spec or not spec.strip():
        raise ModelLoadError("AVISION_MODEL is not set")
    spec = spec.strip()
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"AVISION_MODEL {spec} not found: the OpenVINO engine serves a local OpenVINO IR "
            f"folder; export one ({export_hint(spec)}) or serve a checkpoint with "
            "AVISION_BACKEND=transformers"
        )
    if not path.is_dir():
        raise ModelLoadError(
            f"{spec} is a file, not an OpenVINO IR folder: export the model "
            f"({export_hint('<hub id or folder>')}) and set AVISION_MODEL to the folder"
        )
    if not (path / VLM_PARTS[0]).is_file():
        if (path / TEXT_IR).is_file():
            raise ModelLoadError(
                f"{spec} is the OpenVINO IR of a text model ({TEXT_IR}), not of a "
                "vision-language one: export the vision model with --task "
                f"image-text-to-text ({export_hint('<model>')})"
            )
        if (path / "config.json").is_file():
            raise ModelLoadError(
                f"{spec} is a transformers checkpoint, not an OpenVINO IR folder: export it "
                f"({export_hint(spec)}) and point AVISION_MODEL there, or serve it with "
                "AVISION_BACKEND=transformers"
            )
        raise ModelLoadError(
            f"{spec} holds no OpenVINO vision-language model ({VLM_PARTS[0]}): export one "
            f"({export_hint('<model>')})"
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{spec} has no config.json (the model's architecture); export it again "
            f"({export_hint('<model>')})"
        )
    config = _read_json(path / "config.json", spec)
    architecture = str(config.get("model_type") or "unknown")
    if architecture not in ARCHITECTURES:
        raise ModelLoadError(
            f"{spec} is a {architecture} model; the OpenVINO A-Vision engine serves "
            f"Qwen2-VL and Qwen2.5-VL ({', '.join(ARCHITECTURES)}): serve this one's "
            "checkpoint with AVISION_BACKEND=transformers"
        )
    missing = [n for n in (*VLM_PARTS, MERGER) if not (path / n).is_file()]
    missing += [] if (path / "preprocessor_config.json").is_file() else ["preprocessor_config.json"]
    if missing:
        raise ModelLoadError(
            f"{spec} is not a complete vision-language IR: {', '.join(missing)} missing; "
            f"export it again ({export_hint('<model>')})"
        )
    text = config.get("text_config")
    lengths = [c.get("max_position_embeddings") for c in (text, config) if isinstance(c, dict)]
    context = next((int(n) for n in lengths if isinstance(n, int) and n > 0), None)
    geometry = _geometry(_read_json(path / "preprocessor_config.json", spec))
    return VisionSource(path.resolve(), spec, architecture, context, geometry)


def _geometry(pre: dict[str, Any]) -> ImageGeometry:
    """The processor's sizes, read as OpenVINO GenAI reads them (min_pixels/max_pixels,
    else size.shortest_edge/longest_edge)."""
    base = ImageGeometry()
    found = pre.get("size")
    size: dict[str, Any] = found if isinstance(found, dict) else {}
    low, high = pre.get("min_pixels"), pre.get("max_pixels")
    if low is None and high is None:
        low, high = size.get("shortest_edge"), size.get("longest_edge")
    return ImageGeometry(
        min_pixels=int(low or base.min_pixels),
        max_pixels=int(high or base.max_pixels),
        patch_size=int(pre.get("patch_size") or base.patch_size),
        merge_size=int(pre.get("merge_size") or base.merge_size),
    )


def openvino_message(exc: BaseException) -> str:
    """OpenVINO's own words without its source locations ("Incorrect weights in bin file!")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    skip = ("Exception from", "Check '")
    useful = [line for line in lines if not line.startswith(skip) and "/" not in line]
    return (useful or lines or [type(exc).__name__])[-1][:300]


def load_vision_pipeline(
    source: VisionSource, local: InProcessSettings, settings: OpenVINOSettings
) -> LoadedVision:
    """Build the continuous-batching pipeline and warm it up. Blocking: run in a thread."""
    import numpy as np
    import openvino as ov
    import openvino_genai as genai

    from avito_ai.engines.openvino.loading import cpu_precision, new_pipeline

    started = time.monotonic()
    try:
        pipe = new_pipeline(str(source.path), local.max_batch_size, settings)
        # Warm up here, not in the first client's request: the first inference of each
        # part (vision encoder, merger, language model) compiles its kernels.
        warm = genai.GenerationConfig()
        warm.max_new_tokens = 2
        warm.apply_chat_template = False
        side = source.geometry.factor * 2
        image = ov.Tensor(np.full((1, side, side, 3), 128, dtype=np.uint8))
        pipe.generate(["<ov_genai_image_0>Hello"], [[image]], [warm])
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {source.model_id}: {openvino_message(exc)}. A file of the folder "
            f"may be truncated or damaged: export the model again ({export_hint('<model>')})"
        ) from exc
    return LoadedVision(pipe, pipe.get_tokenizer(), cpu_precision(), time.monotonic() - started)
