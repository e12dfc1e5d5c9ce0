"""The real server as a process: `python app_production.py` and gunicorn, fake engine."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import ServerProcess, dev_server, gunicorn_server, wait_dashboard, wait_logged

pytestmark = pytest.mark.integration

FAKE_ENV = {
    "AVIBE_BACKEND": "fake",
    "ALLOWED_ORIGINS": "https://ok.example",
    "LOG_FORMAT": "text",
    "RATE_LIMIT_PER_MINUTE": "100000",
    "RATE_LIMIT_PER_HOUR": "100000",
    # 0.3 s a token: a request is still in flight when the last test sends SIGTERM.
    "FAKE_TOKEN_DELAY": "0.3",
    "GRACEFUL_TIMEOUT": "20",
}
STARTERS = {"dev": dev_server, "gunicorn": gunicorn_server}


@pytest.fixture(scope="module", params=["dev", "gunicorn"])
def server(request, tmp_path_factory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp(request.param)
    env = {**FAKE_ENV, "LOG_FILE": str(tmp / "app.log")}
    srv = STARTERS[request.param](env, tmp / "stdout.log")
    try:
        srv.wait_ready(60)
        yield srv
    finally:
        srv.stop()


def test_health_endpoints(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/api/health/live").json() == {"status": "alive"}
    ready = httpx.get(server.url + "/api/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    health = httpx.get(server.url + "/api/health").json()
    assert health["status"] == "healthy"
    assert health["models"]["avibe"]["state"] == "ready"
    assert health["models"]["avision"]["state"] == "not_configured"


def test_request_ids_and_log_file(server: ServerProcess) -> None:
    rid = f"it-{uuid.uuid4().hex[:8]}"
    r = httpx.get(server.url + "/api/health", headers={"X-Request-ID": rid})
    assert r.headers["X-Request-ID"] == rid
    assert r.headers["X-Response-Time"].endswith("s")
    generated = httpx.get(server.url + "/api/health", headers={"X-Request-ID": "bad id!"})
    assert uuid.UUID(generated.headers["X-Request-ID"]).version == 4
    logged = wait_logged(server.log_path.parent / "app.log", rid, timeout=5)
    line = next(line for line in logged.splitlines() if rid in line)
    assert f"[{rid}]" in line and '"GET /api/health" 200' in line and "127.0.0.1" in line


def test_a_url_cannot_forge_log_lines_or_paint_the_terminal(server: ServerProcess) -> None:
    marker = uuid.uuid4().hex[:8]
    forged = f"2026-01-01 00:00:00,000 [INFO] [-] avito_ai.fake: {marker}"
    for path in (f"/api/health%0a{forged}", f"/api/health%0d%0a{forged}", "/x%1b[31mred"):
        with httpx.Client() as http:  # the raw path, as a client would send it
            http.send(http.build_request("GET", server.url + path))
    # until all three access lines are written
    text = wait_logged(server.log_path.parent / "app.log", marker, "x1b[31m")
    assert marker in text  # logged, escaped, on the access line itself
    assert not any(line.startswith("2026-01-01") for line in text.splitlines())
    assert "\x1b" not in text and "\\x1b[31m" in text


def test_error_bodies(server: ServerProcess) -> None:
    r = httpx.post(
        server.url + "/api/v1/text/generate",
        content=b"{not json",
        headers={"Content-Type": "application/json", "X-Request-ID": "err-1"},
    )
    assert r.status_code == 400
    assert r.json() == {
        "error": "validation_error",
        "message": r.json()["message"],
        "request_id": "err-1",
    }
    assert httpx.get(server.url + "/missing").json()["error"] == "not_found"
    assert httpx.put(server.url + "/api/health/live").status_code == 405
    long = httpx.post(server.url + "/api/v1/text/generate", json={"prompt": "я" * 2001})
    assert long.json()["message"] == "Prompt too long. Maximum length: 2000 characters"


def test_text_generation(server: ServerProcess) -> None:
    r = httpx.post(server.url + "/api/v1/text/generate", json={"prompt": "Привет"})
    assert r.status_code == 200
    assert r.json()["data"]["text"] == "Echo: Привет"


def test_cors(server: ServerProcess) -> None:
    ok = httpx.get(server.url + "/api/health", headers={"Origin": "https://ok.example"})
    assert ok.headers["access-control-allow-origin"] == "https://ok.example"
    bad = httpx.get(server.url + "/api/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in bad.headers


def test_log_file_keeps_receiving_lines_after_logrotate_renames_it(server: ServerProcess) -> None:
    log_file = server.log_path.parent / "app.log"
    rotated = server.log_path.parent / "app.log.1"
    httpx.get(server.url + "/api/health", headers={"X-Request-ID": "before-rotation"})
    wait_logged(log_file, "before-rotation", timeout=5)
    log_file.rename(rotated)  # what logrotate does without copytruncate
    httpx.get(server.url + "/api/health", headers={"X-Request-ID": "after-rotation"})
    wait_logged(log_file, "after-rotation", timeout=5)  # a line reached the new log file
    assert "before-rotation" in rotated.read_text()
    assert "after-rotation" not in rotated.read_text()


def test_sigterm_lets_a_slow_request_finish_and_exits_0(server: ServerProcess) -> None:
    """Last in the module: it stops the server (each kind's, after that kind's tests)."""
    srv = server
    result: dict[str, httpx.Response] = {}

    def slow_request() -> None:
        result["r"] = httpx.post(
            srv.url + "/api/v1/text/generate",
            json={"prompt": "one two three four five six seven"},
            timeout=30,
        )

    worker = threading.Thread(target=slow_request)
    worker.start()
    # SIGTERM once the request is generating (8 tokens x 0.3 s: it has seconds to go)
    wait_dashboard(srv, lambda now: now["running"] == 1, "the slow request generating")
    srv.signal(signal.SIGTERM)
    worker.join(30)
    assert srv.proc.wait(30) == 0, srv.output()
    r = result["r"]
    assert r.status_code == 200
    assert r.json()["data"]["text"] == "Echo: one two three four five six seven"
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/api/health/live", timeout=2)
    assert "Models released" in srv.output()
