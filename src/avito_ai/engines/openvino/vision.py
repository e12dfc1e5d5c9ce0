"""A-Vision on OpenVINO GenAI's continuous-batching pipeline: the light install's vision.

A Qwen2-VL / Qwen2.5-VL exported to an OpenVINO IR folder (`make export-avision`) is served
with continuous batching: several image requests share each step (MAX_BATCH_SIZE), images
of different sizes and token budgets included, beside requests joining and leaving. The
worker, its step loop, cancellation, deadlines, stop strings, seeds, the thinking switch
and structured output are the A-Vibe OpenVINO engine's (`worker.py`, `generation.py`).

What differs is the input. Images get the transformers engine's checks and scaling
(AVISION_MAX_PIXELS, `engines/images.py`), in a thread (a big photo takes a while to
scale), then become uint8 `ov.Tensor`s [1, H, W, 3]. The chat is rendered with the model's
template, each image as OpenVINO GenAI's tag `<ov_genai_image_N>` where it stands in the
message (a client cannot write one: user text is neutralized, as are special tokens), and
`add_request(id, prompt, images, config)` gets that text with the template already applied.

`add_request` encodes the images (vision encoder and merger) before it returns, on the
worker thread and holding the GIL (OpenVINO GenAI 2026.4's binding): the running streams
and the event loop wait for it, which is the price of an image's prefill either way.

Prompt tokens are counted as the model will see them: the rendered text's tokens plus each
image's tokens from Qwen2-VL's own sizing (`smart_resize`: 28x28 pixels a token).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
from typing import TYPE_CHECKING, Any

from PIL import Image

from avito_ai.config import AvisionSettings, InProcessSettings, OpenVINOSettings
from avito_ai.engines.base import Capabilities, GenerationRequest, ImagePart, Role, TextPart
from avito_ai.engines.images import fit_image
from avito_ai.engines.openvino.generation import Prepared, request_config
from avito_ai.engines.openvino.worker import PipelineEngine
from avito_ai.engines.prompts import neutralize
from avito_ai.errors import ValidationFailed

if TYPE_CHECKING:
    from avito_ai.engines.openvino.vision_loading import ImageGeometry, LoadedVision

log = logging.getLogger(__name__)

# Qwen2-VL's image in its chat template; OpenVINO GenAI expands the pad to the image's tokens.
NATIVE_TAG = "<|vision_start|><|image_pad|><|vision_end|>"
# OpenVINO GenAI's own tags: a client's text must never hold one.
GENAI_TAGS = ("<ov_genai_image_", "<ov_genai_video_")
_TAG = re.compile(r"<ov_genai_image_\d+>")
MAX_ASPECT = 200  # Qwen2-VL's processor refuses a longer side over 200 times the shorter


def image_tokens(width: int, height: int, geometry: ImageGeometry) -> int:
    """The tokens of a width x height image, sized as OpenVINO GenAI sizes it (C++
    rounding: halves away from zero)."""
    factor = geometry.factor
    h_bar = math.floor(height / factor + 0.5) * factor
    w_bar = math.floor(width / factor + 0.5) * factor
    if h_bar * w_bar > geometry.max_pixels:
        beta = math.sqrt(height * width / geometry.max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < geometry.min_pixels:
        beta = math.sqrt(geometry.min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return (h_bar // factor) * (w_bar // factor)


def model_image(image: Image.Image, max_pixels: int, factor: int) -> Image.Image:
    """The image as the model gets it: RGB, at most `max_pixels` (AVISION_MAX_PIXELS), and
    at least `factor` pixels a side (OpenVINO GenAI refuses less; transformers scales such
    an image up too). Raises ValidationFailed for a shape the model cannot take."""
    image = fit_image(image, max_pixels)
    width, height = image.size
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ValidationFailed(
            f"cannot process the image(s): a {width}x{height} image; the longer side may be "
            f"at most {MAX_ASPECT} times the shorter",
            param="messages",
        )
    if min(width, height) < factor:
        scale = factor / min(width, height)
        size = (max(factor, math.ceil(width * scale)), max(factor, math.ceil(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def image_tensor(image: Image.Image) -> Any:
    import numpy as np
    import openvino as ov

    pixels = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[None])
    return ov.Tensor(pixels)


class OpenVINOVisionEngine(PipelineEngine):
    """Engine for role "avision" on OpenVINO GenAI. Construction is cheap; start() loads."""

    role: Role = "avision"
    title = "A-Vision"
    engine = "openvino"

    def __init__(
        self,
        own: AvisionSettings,
        local: InProcessSettings,
        settings: OpenVINOSettings,
        *,
        max_queue_size: int,
    ) -> None:
        super().__init__(own.model, local, settings, max_queue_size=max_queue_size)
        self._geometry: ImageGeometry | None = None
        self._max_pixels = own.max_pixels
        self._max_images = own.max_images

    # ------------------------------------------------------------------ lifecycle

    def _load(self) -> LoadedVision:
        from avito_ai.engines.openvino.vision_loading import (
            load_vision_pipeline,
            resolve_vision_source,
        )

        source = resolve_vision_source(self._model_id)
        self._context = source.context_length or 0
        self._geometry = source.geometry
        return load_vision_pipeline(source, self._local, self._settings)

    def _install(self, loaded: LoadedVision) -> None:
        self._specials = list(GENAI_TAGS)  # beside the tokenizer's own specials

    # ----------------------------------------------------------------- generation

    async def _prepared(self, request: GenerationRequest) -> Prepared:
        # Scaling a big photo takes a while (PIL releases the GIL): not on the event loop.
        images = await asyncio.to_thread(self.images, request)
        return self._build(request, images)

    def capabilities(self) -> Capabilities:
        # The same pipeline as text, and it takes images (a chat model: no completions).
        return dataclasses.replace(super().capabilities(), images=True, completions=False)

    def prepare(self, request: GenerationRequest) -> Prepared:
        """Check and scale the images, render and count the prompt, map the sampling.
        Raises ValidationFailed."""
        return self._build(request, self.images(request))

    def images(self, request: GenerationRequest) -> list[Image.Image]:
        """The request's images, in order, as the model gets them."""
        assert self._geometry is not None  # set before READY
        found = [p.image for m in request.messages for p in m.content if isinstance(p, ImagePart)]
        if len(found) > self._max_images:
            raise ValidationFailed(
                f"{len(found)} images; A-Vision takes at most {self._max_images} a request "
                "(AVISION_MAX_IMAGES)",
                param="messages",
            )
        images = [model_image(i, self._max_pixels, self._geometry.factor) for i in found]
        for original, image in zip(found, images, strict=True):
            if not image_tokens(*image.size, self._geometry):
                width, height = original.size  # the model's sizing rounds a side to nothing
                raise ValidationFailed(
                    f"cannot process the image(s): a {width}x{height} image is too narrow "
                    f"for this model (at most {self._geometry.max_pixels} pixels, in "
                    f"{self._geometry.factor}-pixel patches); crop it closer to a square",
                    param="messages",
                )
        return images

    def _build(self, request: GenerationRequest, images: list[Image.Image]) -> Prepared:
        assert self._geometry is not None and self._tokenizer is not None
        sampling = request.sampling
        if sampling.max_tokens < 1:
            raise ValidationFailed("max_tokens must be at least 1", param="max_tokens")
        if request.prompt is not None:
            if not request.prompt:
                raise ValidationFailed("The prompt is empty", param="prompt")
            prompt, special = request.prompt, True
        else:
            prompt, special = self._render(request), False
        counted = _TAG.sub(NATIVE_TAG, prompt)  # the text the model sees, one pad an image
        ids = self._tokenizer.encode(counted, add_special_tokens=special).input_ids
        tokens = int(ids.shape[1]) + sum(
            image_tokens(*image.size, self._geometry) - 1 for image in images
        )
        config, opened = request_config(
            request, prompt, tokens, self._context, counted=f"{tokens} tokens with its images"
        )
        config.apply_chat_template = False  # the prompt is rendered already
        return Prepared(
            request=request,
            prompt_tokens=tokens,
            config=config,
            stop=tuple(s for s in sampling.stop if s),
            keep_thinking=request.enable_thinking,
            thinking_open=opened,
            prompt=prompt,
            images=tuple(image_tensor(image) for image in images),
            what="images or generation settings",
        )

    def _render(self, request: GenerationRequest) -> str:
        """The chat in the model's template, `<ov_genai_image_N>` where each image goes."""
        if not request.messages:
            raise ValidationFailed("messages must not be empty", param="messages")
        conversation: list[dict[str, str]] = []
        count = 0
        for message in request.messages:
            pieces: list[str] = []
            for part in message.content:
                if isinstance(part, TextPart):
                    pieces.append(neutralize(part.text, self._specials))
                elif isinstance(part, ImagePart):
                    pieces.append(f"<ov_genai_image_{count}>")
                    count += 1
            conversation.append({"role": message.role, "content": "".join(pieces)})
        try:
            rendered: str = self._tokenizer.apply_chat_template(
                conversation,
                add_generation_prompt=True,
                extra_context={"enable_thinking": request.enable_thinking},
            )
        except Exception as exc:  # jinja raise_exception(): e.g. roles must alternate
            raise ValidationFailed(f"cannot build the chat prompt: {exc}") from exc
        return rendered

    def _add_request(self, request_id: int, prepared: Prepared) -> Any:
        return self._pipe.add_request(
            request_id, prepared.prompt, list(prepared.images), prepared.config
        )
