"""Slow and greedy clients against real server processes: a request head sent slowly is cut
off after HEADER_READ_TIMEOUT, and MAX_CONNECTIONS bounds what one process holds open."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import ServerProcess, dev_server, gunicorn_server, serving
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

ENV = {
    "AVIBE_BACKEND": "fake",
    "HEADER_READ_TIMEOUT": "2",
    "MAX_CONNECTIONS": "16",
    "RATE_LIMIT_PER_MINUTE": "100000",
    "RATE_LIMIT_PER_HOUR": "100000",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("slow") / "server.log"
    with serving(dev_server(ENV, log)) as srv:
        yield srv


def connect(srv: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_request_head_trickled_in_is_cut_off(server: ServerProcess) -> None:
    sock = connect(server)
    began = time.monotonic()
    sock.sendall(b"GET /api/health/live HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert closed_within(sock, 8)
    assert time.monotonic() - began < 8
    sock.close()


def test_a_silent_connection_is_cut_off(server: ServerProcess) -> None:
    sock = connect(server)
    assert closed_within(sock, 8)
    sock.close()


def test_a_kept_alive_connection_that_trickles_its_next_head_is_cut_off(
    server: ServerProcess,
) -> None:
    sock = connect(server)
    sock.sendall(b"GET /api/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in sock.recv(4096)
    for _ in range(3):  # a byte every half second keeps uvicorn's keep-alive timer off
        sock.sendall(b"G")
        time.sleep(0.5)  # the behaviour under test: a client trickling its head
    assert closed_within(sock, 8)
    sock.close()


def test_a_slow_but_honest_client_is_served(server: ServerProcess) -> None:
    sock = connect(server)
    for part in (b"GET /api/health/live HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
        sock.sendall(part)
        time.sleep(0.2)  # the behaviour under test: a slow client
    sock.settimeout(5)
    assert b"200 OK" in sock.recv(4096)
    sock.close()


def test_past_max_connections_new_requests_get_503(server: ServerProcess) -> None:
    held = [connect(server) for _ in range(16)]
    try:
        # Once the server has taken the 16 connections in, a 17th request is refused.
        r = wait_until(
            lambda: (
                (r := httpx.get(server.url + "/api/health/live", timeout=5)).status_code == 503
                and r
            ),
            10,
            "a request past the connections held refused",
        )
        assert r.status_code == 503
    finally:
        for sock in held:
            sock.close()
    wait_until(
        lambda: httpx.get(server.url + "/api/health/live", timeout=5).status_code == 200,
        10,
        "served again once they are closed",
    )


def test_gunicorn_workers_cut_off_slow_heads_too(tmp_path) -> None:
    srv = gunicorn_server(ENV, tmp_path / "gunicorn.log", 1)
    with serving(srv):
        sock = connect(srv)
        sock.sendall(b"GET /api/health/live HTTP/1.1\r\n")
        assert closed_within(sock, 8)
        sock.close()
        assert httpx.get(srv.url + "/api/health/live", timeout=5).status_code == 200


def test_a_client_refused_mid_upload_can_finish_sending_and_read_the_answer(
    server: ServerProcess,
) -> None:
    """A 413 answered from Content-Length before the body: the client keeps uploading past
    HEADER_READ_TIMEOUT without being reset, then reads its 413."""
    sock = connect(server)
    size = 3 * 1024 * 1024  # over the 1 MB JSON cap
    sock.sendall(
        b"POST /api/v1/text/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {size}\r\n\r\n".encode()
    )
    chunk = b"x" * 65536
    began = time.monotonic()
    sent = 0
    while time.monotonic() - began < 4 and sent < size:  # 4 s > HEADER_READ_TIMEOUT (2 s)
        sock.sendall(chunk)
        sent += len(chunk)
        time.sleep(0.1)  # the behaviour under test: a slow upload past HEADER_READ_TIMEOUT
    sock.settimeout(5)
    assert b" 413 " in sock.recv(65536).split(b"\r\n", 1)[0]
    sock.close()


def head_with(headers: list[tuple[str, str]], path: str = "/api/health") -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer_of(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    fields = {k.lower(): v for k, v in fields.items()}
    while len(body) < int(fields.get("content-length", 0)):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), fields, body


@pytest.fixture(scope="module", params=["dev", "gunicorn"])
def either(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp(f"heads-{request.param}") / "server.log"
    srv = dev_server(ENV, log) if request.param == "dev" else gunicorn_server(ENV, log, 1)
    with serving(srv) as running:
        yield running


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ([("X-Big", "a" * 200_000)], "/api/health"),  # one 200 kB header
        ([(f"X-H{i}", "v") for i in range(3000)], "/api/health"),  # 3,000 headers
        ([(f"X-H{i}", "v" * 400) for i in range(90)], "/v1/models"),  # 36 kB in all
    ],
    ids=["one-huge", "too-many", "too-much-in-all"],
)
def test_an_oversized_request_head_is_431(
    either: ServerProcess, headers: list[tuple[str, str]], path: str
) -> None:
    with connect(either) as sock:
        sock.sendall(head_with(headers, path))
        status, fields, body = answer_of(sock)
    assert status == 431
    error = json.loads(body)
    if path.startswith("/v1/"):
        assert error["error"]["code"] == "request_header_fields_too_large"
    else:
        assert error["error"] == "request_header_fields_too_large"
        assert error["request_id"] == fields["x-request-id"]
    assert "MAX_HEADER" in body.decode()


def test_a_head_that_never_ends_is_cut_off_at_the_limit(either: ServerProcess) -> None:
    """The server answers 431 and closes: the client's writes fail (reset, broken pipe) long
    before 64 MB, where a server that kept reading would take it all (the loopback buffers,
    which take what we send before the server reads it, hold a few MB at most)."""
    endless = 64 * 2**20
    with connect(either) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        with contextlib.suppress(ConnectionError):  # the server closes it under our feet
            while sent < endless:
                sock.sendall(b"a" * 65536)  # (a timeout would raise: the server hung)
                sent += 65536
        status, _, _ = answer_of(sock)
    assert status == 431
    assert sent < endless


def test_a_head_within_the_limits_is_served(either: ServerProcess) -> None:
    headers = {f"X-H{i}": "v" * 100 for i in range(60)}
    assert httpx.get(either.url + "/api/health", headers=headers).status_code == 200
