"""The API surface against a running server (fake engines): the original specification's
JSON API, the OpenAI API through the official `openai` package, the web forms, and body
limits as they arrive on the wire. The input checks themselves are tested in process
(tests/api/test_errors.py, tests/api/test_image_checks.py, tests/unit/test_images.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.images import encoded
from tests.servers import ServerProcess, dev_server, openai_client, serving

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("api")
    env = {
        "AVIBE_BACKEND": "fake",
        "AVISION_BACKEND": "fake",
        "MAX_IMAGE_SIZE_MB": "2",
        "RATE_LIMIT_PER_MINUTE": "100000",
        "RATE_LIMIT_PER_HOUR": "100000",
    }
    with serving(dev_server(env, tmp / "stdout.log")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai_client(server)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines.get("event", "message"), json.loads(lines["data"])))
    return events


# --- native JSON API -------------------------------------------------------------------


def test_seed_text_example(server: ServerProcess) -> None:
    r = httpx.post(
        server.url + "/api/v1/text/generate",
        json={"prompt": "Привет, подскажи рецепт борща", "max_tokens": 256, "temperature": 0.7},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True
    assert set(body["data"]) >= {"text", "generated_tokens", "input_tokens"}
    assert set(body["metrics"]) >= {"generation_time", "total_time", "tokens_per_second"}
    assert body["request_id"] == r.headers["x-request-id"]


def test_native_stream_joins_to_the_final_text(server: ServerProcess) -> None:
    r = httpx.post(
        server.url + "/api/v1/text/generate",
        json={"prompt": "Съешь же ещё этих булок", "stream": True},
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    deltas = "".join(d["text"] for name, d in events if name == "delta")
    name, final = events[-1]
    assert name == "done"
    assert final["data"]["text"] == deltas == "Echo: Съешь же ещё этих булок"
    assert final["request_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_image_analyze_multipart(server: ServerProcess, fmt: str) -> None:
    # The file name and Content-Type lie: the type is decided by the bytes.
    r = httpx.post(
        server.url + "/api/v1/image/analyze",
        files={"image": ("photo.txt", encoded(fmt), "text/plain")},
        data={"prompt": "Что на фото?", "max_tokens": "20"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"]["text"] == "Echo: Что на фото? [1 image(s)]"


def test_image_analyze_json_base64(server: ServerProcess) -> None:
    for image in (data_uri(encoded("JPEG"), "image/jpeg"), base64.b64encode(encoded()).decode()):
        r = httpx.post(
            server.url + "/api/v1/image/analyze", json={"image": image, "prompt": "Опиши"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["data"]["text"].endswith("[1 image(s)]")


# --- OpenAI API with the official client -------------------------------------------------


def test_openai_models(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"avibe", "avision"} <= ids


def test_openai_chat(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="avibe",
        messages=[
            {"role": "system", "content": "Ты помощник."},
            {"role": "user", "content": "Привет"},
            {"role": "assistant", "content": "Здравствуйте!"},
            {"role": "user", "content": [{"type": "text", "text": "Как дела?"}]},
        ],
        max_tokens=50,
    )
    assert r.choices[0].message.content == "Echo: Как дела?"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 3
    assert r.usage.total_tokens == r.usage.prompt_tokens + 3


def test_openai_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="avibe",
        messages=[{"role": "user", "content": "раз два три"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: раз два три"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_openai_image_chat(client: openai.OpenAI) -> None:
    content = [
        {"type": "text", "text": "Что здесь?"},
        {"type": "image_url", "image_url": {"url": data_uri(encoded())}},
    ]
    r = client.chat.completions.create(
        model="avision", messages=[{"role": "user", "content": content}]
    )
    assert r.choices[0].message.content == "Echo: Что здесь? [1 image(s)]"
    stream = client.chat.completions.create(
        model="avision", messages=[{"role": "user", "content": content}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == r.choices[0].message.content


def test_openai_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(model="avibe", prompt="Жили-были", max_tokens=10)
    assert r.choices[0].text == "Echo: Жили-были"
    stream = client.completions.create(model="avibe", prompt="Жили-были", stream=True)
    assert "".join(c.choices[0].text for c in stream) == r.choices[0].text
    echoed = client.completions.create(model="avibe", prompt="Жили-были", echo=True)
    assert echoed.choices[0].text == "Жили-были" + r.choices[0].text
    stream = client.completions.create(model="avibe", prompt="Жили-были", echo=True, stream=True)
    assert "".join(c.choices[0].text for c in stream) == echoed.choices[0].text


def test_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="avision",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                }
            ],
        )
    assert "data: URI" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="avibe", messages=[{"role": "user", "content": "x"}], temperature=3
        )
    assert exc.value.body["param"] == "temperature"


# --- web forms ---------------------------------------------------------------------------


def test_web_page_and_forms(server: ServerProcess) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200
    assert '<form method="post" action="/avibe"' in page.text
    assert 'action="/avision" enctype="multipart/form-data"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    css = httpx.get(server.url + "/static/style.css")
    assert css.status_code == 200

    r = httpx.post(server.url + "/avibe", data={"prompt": "<b>жирный</b> & <script>x()</script>"})
    assert r.status_code == 200
    assert "&lt;script&gt;x()&lt;/script&gt;" in r.text and "<script>x()" not in r.text
    assert "Echo: &lt;b&gt;жирный&lt;/b&gt; &amp;" in r.text

    r = httpx.post(
        server.url + "/avision",
        files={"image": ("a.png", encoded(), "image/png")},
        data={"question": "Что это?"},
    )
    assert r.status_code == 200 and "Echo: Что это? [1 image(s)]" in r.text


# --- body limits on the wire -------------------------------------------------------------


def assert_error(r: httpx.Response, status: int, code: str, fragment: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and body["request_id"] == r.headers["x-request-id"]
    assert fragment in body["message"]


def test_chunked_upload_without_content_length_is_cut_at_the_limit(server: ServerProcess) -> None:
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(200):  # would be 12.8 MB; the server stops reading long before
            sent += 64 * 1024
            yield b"\0" * (64 * 1024)
        yield b"\r\n--b--\r\n"

    r = httpx.post(
        server.url + "/api/v1/image/analyze",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert_error(r, 413, "payload_too_large")


def test_declared_content_length_over_limit_is_refused_before_reading(
    server: ServerProcess,
) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/v1/image/analyze HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 500000000\r\n\r\n"
        )
        reply = b""
        while b"payload_too_large" not in reply:
            data = sock.recv(4096)
            if not data:
                break
            reply += data
        reply_text = reply.decode()
    assert reply_text.startswith("HTTP/1.1 413") and "payload_too_large" in reply_text
