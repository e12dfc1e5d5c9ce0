"""Answers that take longer than BODY_READ_TIMEOUT, on the dev server and gunicorn: only
waiting for body bytes may time out; once the body is in, a request runs until it is done
(REQUEST_TIMEOUT bounds it), streamed or whole."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import ServerProcess, dev_server, gunicorn_server, serving

pytestmark = pytest.mark.integration

WORDS = 30  # at 0.1 s a token: about 3 s, three times BODY_READ_TIMEOUT
ENV = {
    "AVIBE_BACKEND": "fake",
    "FAKE_TOKEN_DELAY": "0.1",
    "BODY_READ_TIMEOUT": "1",
    "RATE_LIMIT_PER_MINUTE": "100000",
    "RATE_LIMIT_PER_HOUR": "100000",
}
PROMPT = " ".join(f"w{i}" for i in range(WORDS - 1))  # the fake answers "Echo:" + these


@pytest.fixture(scope="module", params=["dev", "gunicorn"])
def server(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[ServerProcess]:
    tmp: Path = tmp_path_factory.mktemp(f"long-{request.param}")
    if request.param == "dev":
        srv = dev_server(ENV, tmp / "server.log")
    else:
        srv = gunicorn_server({**ENV, "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom")}, tmp / "log")
    with serving(srv):
        yield srv


def test_a_whole_answer_longer_than_the_body_timeout_arrives(server: ServerProcess) -> None:
    started = time.monotonic()
    r = httpx.post(
        server.url + "/api/v1/text/generate",
        json={"prompt": PROMPT, "max_tokens": WORDS},
        timeout=60,
    )
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert r.json()["data"]["generated_tokens"] == WORDS
    assert took > 2  # it did outlive BODY_READ_TIMEOUT
    assert "No request body" not in server.output()


def test_a_stream_longer_than_the_body_timeout_ends_with_done(server: ServerProcess) -> None:
    chunks: list[str] = []
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json={
            "model": "avibe",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": WORDS,
            "stream": True,
        },
        timeout=60,
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        choice = json.loads(line[6:])["choices"][0]
        chunks.append(choice["delta"].get("content") or "")
        finish = choice["finish_reason"]
    assert finish == "stop"
    assert "".join(chunks).split() == ["Echo:", *PROMPT.split()]


def test_a_native_stream_longer_than_the_body_timeout_ends_with_done(
    server: ServerProcess,
) -> None:
    with httpx.stream(
        "POST",
        server.url + "/api/v1/text/generate",
        json={"prompt": PROMPT, "max_tokens": WORDS, "stream": True},
        timeout=60,
    ) as r:
        events = [line for line in r.iter_lines() if line.startswith("event: ")]
    assert events[-1] == "event: done"
    assert events.count("event: delta") == WORDS


def test_a_stalled_upload_still_gets_408(server: ServerProcess) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/text/generate HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt"'
        )
        sock.settimeout(10)
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 408"), head
