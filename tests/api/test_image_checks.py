"""Image input checks through the API, in process with a fake A-Vision (the checks
themselves: tests/unit/test_images.py): the right status and message for every bad
upload, by multipart and by base64."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from avito_ai.engines.fake import FakeEngine
from tests.conftest import engine_set, isolated_settings
from tests.images import encoded, noisy_png, png_bomb

from .conftest import running

ANALYZE = "/api/v1/image/analyze"


@pytest.fixture
async def vision() -> AsyncIterator[httpx.AsyncClient]:
    settings = isolated_settings(max_image_size_mb=2, rate_limit_per_minute=100000)
    async with running(settings, engine_set(avision=FakeEngine("avision"))) as (_, client):
        yield client


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def assert_error(r: httpx.Response, status: int, code: str, fragment: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and body["request_id"] == r.headers["x-request-id"]
    assert fragment in body["message"]


async def test_image_over_limit_is_413(vision: httpx.AsyncClient) -> None:
    big = noisy_png(2.2)  # MAX_IMAGE_SIZE_MB=2 here
    r = await vision.post(ANALYZE, files={"image": ("a.png", big)})
    assert_error(r, 413, "payload_too_large", "Maximum size: 2 MB")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"%PDF-1.7 not an image", "Unsupported image type"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "Unsupported image type"),
        (encoded("BMP"), "Unsupported image type"),
        (encoded("PNG")[:60], "corrupt or truncated"),
        (encoded("JPEG")[:200], "corrupt or truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "corrupt or truncated"),
    ],
    ids=["empty", "pdf", "svg", "bmp", "png-cut", "jpeg-cut", "png-garbage"],
)
async def test_bad_images_are_400(vision: httpx.AsyncClient, data: bytes, fragment: str) -> None:
    r = await vision.post(ANALYZE, files={"image": ("x.png", data)})
    assert_error(r, 400, "validation_error", fragment)


async def test_decompression_bomb_is_refused_quickly(vision: httpx.AsyncClient) -> None:
    import psutil

    proc = psutil.Process()  # the app runs in this process
    before = proc.memory_info().rss
    started = time.monotonic()
    r = await vision.post(ANALYZE, files={"image": ("b.png", png_bomb())})
    elapsed = time.monotonic() - started
    assert_error(r, 400, "validation_error", "exceed")
    assert elapsed < 5
    assert proc.memory_info().rss - before < 100 * 1024 * 1024


async def test_image_checks_also_apply_to_base64(vision: httpx.AsyncClient) -> None:
    r = await vision.post(ANALYZE, json={"image": "!!!not base64!!!", "prompt": "x"})
    assert_error(r, 400, "validation_error", "base64")
    r = await vision.post(ANALYZE, json={"image": data_uri(png_bomb()), "prompt": "x"})
    assert_error(r, 400, "validation_error", "exceed")


async def test_missing_image_field(vision: httpx.AsyncClient) -> None:
    r = await vision.post(ANALYZE, files={"other": ("a.png", encoded())})
    assert_error(r, 400, "validation_error", "image")


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("max_tokens", "ten", "max_tokens: must be an integer"),
        ("top_p", "x", "top_p: must be a number"),
    ],
)
async def test_multipart_fields_are_parsed_and_named(
    vision: httpx.AsyncClient, field: str, value: str, fragment: str
) -> None:
    r = await vision.post(
        ANALYZE, files={"image": ("a.png", encoded())}, data={"prompt": "x", field: value}
    )
    assert_error(r, 400, "validation_error", fragment)


async def test_form_errors_render_in_the_page(vision: httpx.AsyncClient) -> None:
    r = await vision.post("/avibe", data={"prompt": "x" * 2001})
    assert r.status_code == 400
    assert "Prompt too long. Maximum length: 2000 characters" in r.text
    assert r.headers["x-request-id"] in r.text
    r = await vision.post("/avision", files={"image": ("a.png", b"not an image", "image/png")})
    assert r.status_code == 400 and "Unsupported image type" in r.text
