"""Images as the models see them: RGB, at most AVISION_MAX_PIXELS pixels (aspect kept).

Qwen2.5-VL turns every 28x28 patch into a token: scaling first bounds vision memory and
time (and, for the remote backend, the request body) to what the model would use anyway.
"""

from __future__ import annotations

import math

from PIL import Image


def fit_image(image: Image.Image, max_pixels: int) -> Image.Image:
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if width * height > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image
