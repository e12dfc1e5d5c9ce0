"""Image checks and decoding for every front door (native, OpenAI, forms).

The type is decided by magic bytes, never by Content-Type or file name; Pillow is
restricted to the four accepted formats; pixel count is checked from the header before
any pixel is decoded, so decompression bombs are refused quickly with flat memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import functools
import io
import math
import re
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from PIL import Image, UnidentifiedImageError

from avito_ai.engines.images import fit_image
from avito_ai.errors import Overloaded, PayloadTooLarge, ValidationFailed

FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
# 40 megapixels: more than any phone photo; a bomb declares far more than this.
MAX_PIXELS = 40_000_000
_WRAPPING = re.compile(r"[ \t\r\n]+")
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,", re.I)


def sniff_format(data: bytes) -> str | None:
    """JPEG, PNG, WEBP or GIF from the file's first bytes; None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def check_size(size_bytes: int, max_mb: float, *, param: str = "image") -> None:
    if size_bytes > max_mb * 1024 * 1024:
        raise PayloadTooLarge(f"Image too large. Maximum size: {max_mb:g} MB", param=param)


def decode_image(
    data: bytes, max_mb: float, *, param: str = "image", max_pixels: int | None = None
) -> Image.Image:
    """Validate and decode an uploaded image into an RGB Pillow image of at most
    `max_pixels` (the model's budget, AVISION_MAX_PIXELS): a JPEG is decoded straight at a
    reduced scale (`draft`), anything else reduced by a whole factor before its RGB copy,
    so a request holds its images at the model's size, not the file's, while it waits.
    Every image decoded counts against the pixels waiting requests may hold (`held`).

    `param` is the request field that carried it, named in every error.
    """
    check_size(len(data), max_mb, param=param)
    if not data:
        raise ValidationFailed("Image file is empty", param=param)
    fmt = sniff_format(data)
    if fmt is None:
        raise ValidationFailed(
            "Unsupported image type: only JPEG, PNG, WEBP and GIF are accepted", param=param
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = image.size
            if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
                raise ValidationFailed(
                    f"Image dimensions {width}x{height} exceed the limit of "
                    f"{MAX_PIXELS // 1_000_000} megapixels",
                    param=param,
                )
            image.seek(0)  # first frame of an animation
            if max_pixels and fmt == "JPEG" and width * height > max_pixels:
                scale = math.sqrt(max_pixels / (width * height))
                image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
            image.load()
            return _held(_to_budget(image, max_pixels) if max_pixels else image.convert("RGB"))
    except ValidationFailed:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValidationFailed(
            f"Image refused: its dimensions exceed the limit of {MAX_PIXELS // 1_000_000} "
            "megapixels",
            param=param,
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ValidationFailed(
            f"Image could not be decoded ({fmt}): file is corrupt or truncated", param=param
        ) from exc


def _to_budget(image: Image.Image, max_pixels: int) -> Image.Image:
    """RGB, at most `max_pixels`: a whole-factor reduce first (cheap, on the decoded
    palette or grey levels), then the exact fit the engines make."""
    factor = math.isqrt(image.width * image.height // max_pixels)
    if factor >= 2:
        if image.mode == "1":  # (a byte a pixel already: grey keeps it so)
            image = image.convert("L")
        elif image.mode not in ("L", "RGB", "RGBA", "I", "F"):
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        image = image.reduce(factor)
    return fit_image(image.convert("RGB"), max_pixels)


# Decoded pixels held by requests (waiting for admission or being answered): each image
# is counted from its decoding until it is freed (weakref.finalize: when the request that
# holds it ends). Past the bound, a new image is a fast 503, never more memory.
MAX_HELD_PIXELS = 256_000_000  # about 768 MB of RGB
_held_pixels = 0
_held_lock = threading.Lock()


def held_pixels() -> int:
    return _held_pixels


def _release(pixels: int) -> None:
    global _held_pixels
    with _held_lock:
        _held_pixels -= pixels


def _held(image: Image.Image) -> Image.Image:
    global _held_pixels
    pixels = image.width * image.height
    with _held_lock:
        if _held_pixels + pixels > MAX_HELD_PIXELS:
            raise Overloaded("Too many images are waiting to be answered; retry in a moment")
        _held_pixels += pixels
    weakref.finalize(image, _release, pixels)
    return image


def decode_base64_image(
    value: str, max_mb: float, *, param: str = "image", max_pixels: int | None = None
) -> Image.Image:
    """A `data:` URI or bare base64 string → decoded image."""
    match = _DATA_URI.match(value)
    payload = value[match.end() :] if match else value
    # Line breaks as `base64` (76 columns) and many encoders write them are not an error.
    payload = _WRAPPING.sub("", payload)
    # Reject before decoding when the encoded text alone is over the limit (its exact
    # decoded size: 3 bytes per 4 characters, less the padding).
    check_size(
        len(payload) * 3 // 4 - (len(payload) - len(payload.rstrip("="))), max_mb, param=param
    )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed("Image is not valid base64", param=param) from None
    return decode_image(data, max_mb, param=param, max_pixels=max_pixels)


# Image decoding is CPU work (0.25 s for a 24 MP JPEG): never on the event loop, and at most
# this many at once, so a burst of uploads cannot hold a decoded copy of each in memory.
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="image-decode")
T = TypeVar("T")


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run image work `fn(*args, **kwargs)` in the bounded image pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_POOL, functools.partial(fn, *args, **kwargs))


def is_data_uri(value: str) -> bool:
    return _DATA_URI.match(value) is not None
