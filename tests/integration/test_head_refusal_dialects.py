"""A 431 (request head too large) comes in the shape of the API asked, like every other
refusal: Anthropic's on /v1/messages, OpenAI's on /v1/chat/completions, native elsewhere;
for a head that never ends (cut off by the server's protocol) as for one that ends."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator

import pytest

from tests.integration.test_slow_clients import answer_of, head_with
from tests.servers import ServerProcess, dev_server, serving

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("heads") / "server.log"
    with serving(dev_server({"AVIBE_BACKEND": "fake"}, log)) as srv:
        yield srv


def endless_head(srv: ServerProcess, path: str, method: str = "POST") -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(f"{method} {path}?beta=true HTTP/1.1\r\nHost: x\r\nX-Endless: ".encode())
        with contextlib.suppress(ConnectionError):  # the server closes it under our feet
            for _ in range(1024):  # up to 64 MB; the server cuts it off at 33 kB
                sock.sendall(b"a" * 65536)
        return answer_of(sock)


def too_many_fields(srv: ServerProcess, path: str) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(head_with([(f"X-H{i}", "v") for i in range(300)], path))
        return answer_of(sock)


@pytest.mark.parametrize("send", [endless_head, too_many_fields], ids=["endless", "fields"])
def test_a_431_on_messages_is_in_anthropics_shape(server: ServerProcess, send) -> None:
    status, fields, body = send(server, "/v1/messages")
    assert status == 431
    error = json.loads(body)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "MAX_HEADER" in error["error"]["message"]
    assert error["request_id"] == fields["request-id"] == fields["x-request-id"]


@pytest.mark.parametrize("send", [endless_head, too_many_fields], ids=["endless", "fields"])
def test_a_431_elsewhere_keeps_its_own_dialect(server: ServerProcess, send) -> None:
    status, _, body = send(server, "/v1/chat/completions")
    assert status == 431
    assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"
    status, fields, body = send(server, "/api/v1/text/generate")
    assert status == 431
    native = json.loads(body)
    assert native["error"] == "request_header_fields_too_large"
    assert native["request_id"] == fields["x-request-id"]
