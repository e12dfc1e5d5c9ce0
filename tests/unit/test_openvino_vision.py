"""The OpenVINO A-Vision engine without loading a model: which backend `auto` picks, fair
admission's capacity, the folder checks and their reasons, image sizing and token counts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from avito_ai.config import Settings
from avito_ai.engines import registry
from avito_ai.engines.models import ModelLoadError
from avito_ai.engines.openvino.vision import (
    OpenVINOVisionEngine,
    image_tokens,
    model_image,
)
from avito_ai.engines.openvino.vision_loading import (
    ImageGeometry,
    openvino_message,
    resolve_vision_source,
)
from avito_ai.errors import ValidationFailed
from avito_ai.services.admission import capacity_for
from tests.conftest import isolated_settings
from tests.tiny_vision_ir import (
    TINY_VISION_IR,
    other_architecture,
    text_ir,
    truncated,
    without,
)

IR = str(TINY_VISION_IR)
# Qwen2.5-VL-7B's processor: 4 to 16384 tokens an image.
SEVEN_B = ImageGeometry(min_pixels=3136, max_pixels=12845056)


# ------------------------------------------------------------------ backend and capacity


def test_auto_serves_an_ir_folder_on_openvino_and_a_checkpoint_on_transformers(
    tmp_path: Path,
) -> None:
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    assert (
        registry.backend_for("avision", isolated_settings(avision_model=IR).engines) == "openvino"
    )
    for model in (str(checkpoint), "AvitoTech/avision"):
        chosen = registry.backend_for("avision", isolated_settings(avision_model=model).engines)
        assert chosen == "transformers"
    gpu = isolated_settings(avision_model=IR, device="cuda")
    assert (
        registry.backend_for("avision", gpu.engines) == "transformers"
    )  # the GPU is transformers'
    text = text_ir(tmp_path / "text-ir")  # any IR: the OpenVINO engine says what it lacks
    assert registry.backend_for("avision", isolated_settings(avision_model=str(text)).engines) == (
        "openvino"
    )


def test_the_openvino_backend_builds_the_vision_engine() -> None:
    settings = isolated_settings(avision_model=IR, avision_backend="openvino")
    assert isinstance(registry.build_engine("avision", settings.engines), OpenVINOVisionEngine)


def test_fair_admission_lets_the_batch_generate_at_once() -> None:
    def capacity(settings: Settings) -> int:  # what the engine built for them declares
        return capacity_for("avision", settings, registry.build_engine("avision", settings))

    batch = isolated_settings(avision_model=IR, max_batch_size=6)
    assert capacity(batch) == 6  # auto: OpenVINO, continuous batching
    explicit = isolated_settings(avision_model=IR, avision_backend="openvino", max_batch_size=3)
    assert capacity(explicit) == 3
    one = isolated_settings(avision_model="AvitoTech/avision", max_batch_size=6)
    assert capacity(one) == 1  # transformers: one request at a time
    own = isolated_settings(avision_model=IR, avision_max_concurrency=2)
    assert capacity(own) == 2


def test_a_light_install_asked_for_a_checkpoint_is_told_about_the_export(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = registry._installed
    monkeypatch.setattr(registry, "_installed", lambda m: m != "torch" and real(m))
    problem = registry.missing_extra(isolated_settings(avision_model="AvitoTech/avision").engines)
    assert problem is not None
    assert "pip install 'avito-ai[transformers]'" in problem and "make export-avision" in problem
    assert registry.missing_extra(isolated_settings(avision_model=IR).engines) is None


# ------------------------------------------------------------------ folders that cannot serve


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("missing", "not found"),
        ("file", "is a file"),
        ("checkpoint", "transformers checkpoint"),
        ("text", "text model"),
        ("empty", "holds no OpenVINO"),
        ("architecture", "llava"),
        ("incomplete", "openvino_vision_embeddings_merger_model.xml missing"),
    ],
)
def test_a_folder_that_cannot_serve_gets_a_reason_naming_it(
    kind: str, words: str, tmp_path: Path
) -> None:
    folder = tmp_path / f"{kind}-model"
    if kind == "file":
        folder.write_text("x")
    elif kind in ("checkpoint", "empty"):
        folder.mkdir()
        if kind == "checkpoint":
            (folder / "config.json").write_text("{}")
    elif kind == "text":
        text_ir(folder)
    elif kind == "architecture":
        other_architecture(folder)
    elif kind == "incomplete":
        without(folder, "openvino_vision_embeddings_merger_model.xml")
    with pytest.raises(ModelLoadError) as failed:
        resolve_vision_source(str(folder))
    reason = str(failed.value)
    assert folder.name in reason and words in reason
    assert "make export-avision" in reason or "AVISION_BACKEND=transformers" in reason


def test_a_truncated_file_passes_the_folder_checks(tmp_path: Path) -> None:
    """Only OpenVINO can tell (the integration tests load it): the checks let it through."""
    source = resolve_vision_source(str(truncated(tmp_path / "cut")))
    assert source.architecture == "qwen2_5_vl"


def test_the_tiny_ir_is_read_as_the_exporter_wrote_it() -> None:
    source = resolve_vision_source(IR)
    assert (source.architecture, source.context_length) == ("qwen2_5_vl", 2048)
    assert source.geometry == ImageGeometry(min_pixels=56 * 56, max_pixels=112 * 112)


def test_openvino_messages_lose_their_source_locations() -> None:
    raised = RuntimeError(
        "Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'is_valid_weights_range("
        "size, offset)' failed at src/core/xml_util/src/x.cpp:900:\nIncorrect weights in bin "
        "file!\n\n"
    )
    assert openvino_message(raised) == "Incorrect weights in bin file!"


# ------------------------------------------------------------------ images and their tokens


def transformers_smart_resize(height: int, width: int, geometry: ImageGeometry) -> int:
    """Qwen2-VL's processor in transformers (Python's rounding), in tokens."""
    factor = geometry.factor
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > geometry.max_pixels:
        beta = math.sqrt(height * width / geometry.max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < geometry.min_pixels:
        beta = math.sqrt(geometry.min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return (h_bar // factor) * (w_bar // factor)


@pytest.mark.parametrize("size", [(1000, 1000), (640, 480), (1280, 720), (96, 64), (56, 56)])
def test_image_tokens_match_the_processor(size: tuple[int, int]) -> None:
    width, height = size
    assert image_tokens(width, height, SEVEN_B) == transformers_smart_resize(height, width, SEVEN_B)


def test_image_tokens_round_halves_up_as_openvino_does() -> None:
    """70 px is 2.5 patches: OpenVINO GenAI (C++) rounds it to 3, Python's round() to 2."""
    assert image_tokens(70 * 2, 70 * 2, SEVEN_B) == 5 * 5


def test_images_are_capped_and_small_ones_grown() -> None:
    big = model_image(Image.new("RGBA", (4000, 3000)), 1_003_520, 28)
    assert big.mode == "RGB" and big.width * big.height <= 1_003_520
    assert abs(big.width / big.height - 4 / 3) < 0.01
    small = model_image(Image.new("RGB", (10, 20)), 1_003_520, 28)
    assert min(small.size) == 28 and small.size == (28, 56)


def test_an_image_of_an_extreme_shape_is_refused() -> None:
    with pytest.raises(ValidationFailed) as refused:
        model_image(Image.new("RGB", (8000, 30)), 10**9, 28)
    assert "200 times" in refused.value.message and refused.value.param == "messages"
