"""Uploaded image bytes and base64 / data: URI images: what is accepted, and the error a
client gets (type, message, field) for what is not."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from avito_ai.errors import Overloaded, PayloadTooLarge, ValidationFailed
from avito_ai.services import images
from avito_ai.services.images import (
    MAX_PIXELS,
    check_size,
    decode_base64_image,
    decode_image,
    is_data_uri,
    sniff_format,
)
from tests.images import encoded, png_bomb

MB = 1024 * 1024
ACCEPTED = ("PNG", "JPEG", "WEBP", "GIF")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def assert_reddish(image: Image.Image) -> None:
    r, g, b = image.getpixel((image.width // 2, image.height // 2))
    assert r > 200 and g < 60 and b < 60, (r, g, b)


# ------------------------------------------------------------------ sniff_format


@pytest.mark.parametrize("fmt", ACCEPTED)
def test_sniff_format_recognises_each_accepted_format(fmt: str) -> None:
    assert sniff_format(encoded(fmt)) == fmt


@pytest.mark.parametrize(
    "data",
    [
        encoded("BMP"),
        encoded("TIFF"),
        b"%PDF-1.7\n",
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # RIFF, but audio, not WEBP
        b"hello world",
        b"",
    ],
    ids=["bmp", "tiff", "pdf", "wav", "text", "empty"],
)
def test_sniff_format_refuses_everything_else(data: bytes) -> None:
    assert sniff_format(data) is None


# ------------------------------------------------------------------ decode_image


@pytest.mark.parametrize("fmt", ACCEPTED)
def test_each_accepted_format_decodes_to_an_rgb_image(fmt: str) -> None:
    image = decode_image(encoded(fmt, size=(64, 48), color="red"), max_mb=1)
    assert image.size == (64, 48)
    assert image.mode == "RGB"
    assert_reddish(image)


def test_transparent_png_becomes_rgb() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (5, 7), (0, 255, 0, 128)).save(buf, "PNG")
    image = decode_image(buf.getvalue(), max_mb=1)
    assert (image.mode, image.size) == ("RGB", (5, 7))


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "blue", "green")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert_reddish(decode_image(buf.getvalue(), max_mb=1))


@pytest.mark.parametrize(
    "data",
    [encoded("BMP"), encoded("TIFF"), b"%PDF-1.7\n%...", b"just some text"],
    ids=["bmp", "tiff", "pdf", "text"],
)
def test_non_image_or_unaccepted_bytes_are_refused_naming_the_formats(data: bytes) -> None:
    with pytest.raises(ValidationFailed) as exc:
        decode_image(data, max_mb=1)
    assert exc.value.param == "image"
    assert "JPEG, PNG, WEBP and GIF" in exc.value.message


def test_empty_file_is_refused() -> None:
    with pytest.raises(ValidationFailed) as exc:
        decode_image(b"", max_mb=1)
    assert exc.value.param == "image"
    assert "empty" in exc.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_refused_as_corrupt(fmt: str) -> None:
    data = encoded(fmt, size=(200, 200))
    with pytest.raises(ValidationFailed) as exc:
        decode_image(data[: len(data) // 2], max_mb=1)
    assert exc.value.param == "image"
    assert "corrupt or truncated" in exc.value.message
    assert fmt in exc.value.message


def test_right_magic_bytes_with_garbage_after_is_refused_as_corrupt() -> None:
    with pytest.raises(ValidationFailed) as exc:
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, max_mb=1)
    assert "corrupt or truncated" in exc.value.message


def test_image_over_the_pixel_limit_is_refused_with_its_dimensions() -> None:
    # 8000x6000 = 48 MP: over MAX_PIXELS, under Pillow's own bomb threshold.
    assert MAX_PIXELS < 8000 * 6000
    with pytest.raises(ValidationFailed) as exc:
        decode_image(png_bomb(8000, 6000), max_mb=1)
    assert exc.value.param == "image"
    assert "8000x6000" in exc.value.message
    assert "40 megapixels" in exc.value.message


def test_decompression_bomb_is_refused() -> None:
    bomb = png_bomb()  # declares 10 gigapixels in a few hundred bytes
    assert len(bomb) < 10_000
    with pytest.raises(ValidationFailed) as exc:
        decode_image(bomb, max_mb=1)
    assert exc.value.param == "image"


def test_size_limit_is_inclusive_and_one_byte_over_is_payload_too_large() -> None:
    data = encoded("PNG")
    assert decode_image(data, max_mb=len(data) / MB).size == (64, 48)
    with pytest.raises(PayloadTooLarge) as exc:
        decode_image(data, max_mb=(len(data) - 1) / MB)
    assert exc.value.param == "image"
    assert "Image too large" in exc.value.message


def test_too_large_wins_over_wrong_type() -> None:
    """An oversized upload is 413 whatever it is; its content is never inspected."""
    with pytest.raises(PayloadTooLarge):
        decode_image(b"x" * (MB + 1), max_mb=1)


@pytest.mark.parametrize(("max_mb", "shown"), [(16.0, "16 MB"), (0.5, "0.5 MB"), (2, "2 MB")])
def test_check_size_message_shows_the_configured_limit(max_mb: float, shown: str) -> None:
    check_size(int(max_mb * MB), max_mb)  # exactly at the limit: fine
    with pytest.raises(PayloadTooLarge) as exc:
        check_size(int(max_mb * MB) + 1, max_mb)
    assert exc.value.message == f"Image too large. Maximum size: {shown}"


# ------------------------------------------------------------------ base64 and data: URIs


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "data:image/png;base64,",
        "DATA:IMAGE/PNG;BASE64,",
        "data:;base64,",
        "data:image/png;name=photo.png;base64,",
        "data:image/jpeg;base64,",  # the label is not trusted: the bytes say PNG
    ],
    ids=["bare", "data-uri", "upper-case", "no-mime", "with-params", "wrong-label"],
)
def test_base64_image_decodes_bare_or_as_data_uri(prefix: str) -> None:
    image = decode_base64_image(prefix + b64(encoded("PNG", size=(10, 20))), max_mb=1)
    assert (image.mode, image.size) == ("RGB", (10, 20))
    assert_reddish(image)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF"])
def test_other_formats_decode_from_data_uris(fmt: str) -> None:
    image = decode_base64_image(f"data:image/{fmt.lower()};base64," + b64(encoded(fmt)), 1)
    assert image.size == (64, 48)


@pytest.mark.parametrize(
    "value",
    [
        "not base64!!",
        "data:image/png;base64,not base64!!",
        b64(encoded("PNG"))[:-2],  # padding cut off
        "картинка",
        "https://example.com/cat.png",
    ],
    ids=["garbage", "data-uri-garbage", "bad-padding", "non-ascii", "url"],
)
def test_invalid_base64_is_refused(value: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        decode_base64_image(value, max_mb=1)
    assert exc.value.param == "image"
    assert exc.value.message == "Image is not valid base64"


def test_invalid_base64_names_the_field_the_caller_gives() -> None:
    with pytest.raises(ValidationFailed) as exc:
        decode_base64_image("data:image/png;base64,%%%", max_mb=1, param="image_url")
    assert exc.value.param == "image_url"


def test_valid_base64_of_a_non_image_is_refused_as_unsupported() -> None:
    with pytest.raises(ValidationFailed) as exc:
        decode_base64_image("data:image/png;base64," + b64(b"hello, I am text"), max_mb=1)
    assert "JPEG, PNG, WEBP and GIF" in exc.value.message


@pytest.mark.parametrize("value", ["", "data:image/png;base64,"], ids=["bare", "data-uri"])
def test_empty_base64_image_is_refused_as_empty(value: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        decode_base64_image(value, max_mb=1)
    assert "empty" in exc.value.message


def test_oversized_base64_text_is_refused_before_decoding() -> None:
    # Not even valid base64: the size alone decides, so it is 413, not "invalid base64".
    with pytest.raises(PayloadTooLarge) as exc:
        decode_base64_image("data:image/png;base64," + "!" * (2 * MB), max_mb=1)
    assert exc.value.param == "image"


def test_base64_image_over_the_size_limit_is_payload_too_large() -> None:
    data = encoded("PNG")
    value = "data:image/png;base64," + b64(data)
    assert decode_base64_image(value, max_mb=2 * len(data) / MB).size == (64, 48)
    with pytest.raises(PayloadTooLarge):
        decode_base64_image(value, max_mb=len(data) / MB / 2)


# ------------------------------------------------------------------ is_data_uri


@pytest.mark.parametrize(
    "value",
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "data:image/jpeg;base64,",
        "DATA:image/webp;BASE64,AAAA",
        "data:;base64,AAAA",
        "data:image/png;charset=utf-8;base64,AAAA",
    ],
)
def test_is_data_uri_accepts_base64_data_uris(value: str) -> None:
    assert is_data_uri(value)


@pytest.mark.parametrize(
    "value",
    [
        "https://example.com/image.png",
        "http://example.com/data:image/png;base64,AAAA",
        "iVBORw0KGgo=",
        "data:image/png,rawbytes",  # not base64
        " data:image/png;base64,AAAA",
        "file:///etc/passwd",
        "",
    ],
)
def test_is_data_uri_refuses_everything_else(value: str) -> None:
    assert not is_data_uri(value)


# ------------------------------------------------------------------ the field is named


def test_every_base64_image_error_names_the_callers_field() -> None:
    """An OpenAI request carries its image in `image_url`: every refusal says so."""
    for bad in (b64(b"hello"), b64(b""), b64(encoded("PNG")[:40])):
        with pytest.raises(ValidationFailed) as info:
            decode_base64_image("data:image/png;base64," + bad, 16, param="image_url")
        assert info.value.param == "image_url"
    with pytest.raises(PayloadTooLarge) as too_big:
        decode_base64_image(b64(encoded("PNG")), 10 / MB, param="image_url")
    assert too_big.value.param == "image_url"


def test_base64_at_exactly_the_limit_is_accepted_like_the_file() -> None:
    data = encoded("PNG")
    limit = len(data) / MB  # the file itself is accepted at this limit...
    decode_image(data, limit)
    for payload in (b64(data), "data:image/png;base64," + b64(data)):  # ...and as base64
        assert decode_base64_image(payload, limit).size == Image.open(io.BytesIO(data)).size
    with pytest.raises(PayloadTooLarge):
        decode_base64_image(b64(data), (len(data) - 1) / MB)


def test_line_wrapped_base64_is_accepted() -> None:
    """`base64 photo.png` wraps its output at 76 columns."""
    text = b64(encoded("JPEG"))
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + "\n"
    assert "\n" in wrapped.strip()
    assert decode_base64_image(wrapped, 16).mode == "RGB"


# ----------------------------------------------------- decoded at the model's size


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (Image.new("1", (6300, 6300), 1), "PNG"),  # 1-bit: a byte a pixel once decoded
        (Image.new("RGB", (4000, 3000), "red"), "JPEG"),  # decoded at a reduced scale
        (Image.new("P", (3000, 3000), 3), "GIF"),
    ],
)
def test_a_big_image_is_decoded_to_the_models_budget(image: Image.Image, fmt: str) -> None:
    decoded = images.decode_image(_encoded(image, fmt), 50, max_pixels=1_003_520)
    assert decoded.mode == "RGB"
    assert decoded.width * decoded.height <= 1_003_520
    assert abs(decoded.width / decoded.height - image.width / image.height) < 0.01


def test_decoded_pixels_held_are_bounded_and_freed_with_the_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _encoded(Image.new("RGB", (1000, 1000), "blue"), "PNG")
    start = images.held_pixels()
    monkeypatch.setattr(images, "MAX_HELD_PIXELS", start + 2_500_000)
    first = images.decode_image(data, 10)
    second = images.decode_image(data, 10)
    assert images.held_pixels() == start + 2_000_000
    with pytest.raises(Overloaded):
        images.decode_image(data, 10)
    del first, second  # the requests that held them ended
    assert images.held_pixels() == start
    assert images.decode_image(data, 10).size == (1000, 1000)
