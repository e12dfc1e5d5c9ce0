"""The tiny Qwen2.5-VL as an OpenVINO IR folder: test data for the OpenVINO A-Vision engine.

`tests/data/tiny-qwen2_5_vl-ov/` (about 0.8 MB, committed) is `build_tiny_qwen2_5_vl`'s
random-weight model (tests/tiny_vision_models.py, seed 0) exported by the project's own
exporter, `scripts/export_avision.sh` (optimum-intel 2.2.0, transformers 5.0.0, fp16
weights: greedy answers match the transformers engine's token for token). Committed so that
`make test` needs no export environment (torch and a second transformers, 4 minutes and
6 GB); this script makes it again:

    .venv/bin/python tests/tiny_vision_ir.py        # rebuilds tests/data/tiny-qwen2_5_vl-ov

Runs in the test environment (it builds the checkpoint with transformers and torch), then
the export script builds or reuses its own environment.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY_VISION_IR = ROOT / "tests" / "data" / "tiny-qwen2_5_vl-ov"
EXPORT = ROOT / "scripts" / "export_avision.sh"


def rebuild(out: Path = TINY_VISION_IR) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.tiny_vision_models import build_tiny_qwen2_5_vl

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_tiny_qwen2_5_vl(Path(tmp) / "checkpoint", seed=0)
        exported = Path(tmp) / "ir"
        subprocess.run([str(EXPORT), str(checkpoint), str(exported), "fp16"], check=True)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(exported, out)
    return out


# ------------------------------------------------------------------ variants for the tests


def copy_of(folder: Path) -> Path:
    """A fresh copy of the tiny IR in `folder` (a variant is made by changing it)."""
    shutil.copytree(TINY_VISION_IR, folder)
    return folder


def with_thinking_template(folder: Path) -> Path:
    """The tiny IR whose chat template opens `<think>` unless thinking is on (as Qwen3's
    does). OpenVINO GenAI reads the template from the tokenizer IR's rt_info."""
    copy_of(folder)
    old = 'add_generation_prompt %}&lt;|im_start|>assistant&#10;{% endif %}"'
    new = (
        "add_generation_prompt %}&lt;|im_start|>assistant&#10;"
        '{% if not enable_thinking %}&lt;think>&#10;{% endif %}{% endif %}"'
    )
    for name in ("openvino_tokenizer.xml", "openvino_detokenizer.xml"):
        xml = folder / name
        text = xml.read_text(encoding="utf-8")
        assert text.count(old) == 1, name
        xml.write_text(text.replace(old, new), encoding="utf-8")
    return folder


def truncated(folder: Path, name: str = "openvino_language_model.bin") -> Path:
    copy_of(folder)
    part = folder / name
    with open(part, "r+b") as fh:
        fh.truncate(part.stat().st_size // 2)
    return folder


def other_architecture(folder: Path, model_type: str = "llava") -> Path:
    copy_of(folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def text_ir(folder: Path) -> Path:
    """A text model's IR (openvino_model.xml), as `optimum-cli export openvino` writes one
    for a causal LM: the A-Vibe kind, not a vision-language model."""
    folder.mkdir(parents=True)
    for name in ("config.json", "openvino_tokenizer.xml", "openvino_tokenizer.bin"):
        shutil.copy(TINY_VISION_IR / name, folder / name)
    shutil.copy(TINY_VISION_IR / "openvino_language_model.xml", folder / "openvino_model.xml")
    shutil.copy(TINY_VISION_IR / "openvino_language_model.bin", folder / "openvino_model.bin")
    return folder


def without(folder: Path, name: str) -> Path:
    copy_of(folder)
    (folder / name).unlink()
    return folder


if __name__ == "__main__":  # pragma: no cover - manual helper
    print(rebuild(Path(sys.argv[1]) if len(sys.argv) > 1 else TINY_VISION_IR))
