"""deploy/nginx.conf with Debian's nginx in front of a real server.

The shipped file is used as it is, but for its ports and two timeouts shortened (10 s and
30 s would make slow tests): streams arrive unbuffered, the client's address is the one
nginx saw (a forged X-Forwarded-For changes nothing), bodies over client_max_body_size and
clients that stall are stopped by nginx. Mounted under a prefix (`location /ai/`, the
prefix stripped, the service told its root path), the console's pages, assets and API
calls stay under it, in a real browser too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import browser, open_tab, wait_in_page
from tests.servers import ROOT, ServerProcess, dev_server, free_port, gunicorn_server, serving
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
__all__ = ["browser"]  # the fixture, imported

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SHORT_TIMEOUT_S = 2

ENV = {
    "AVIBE_BACKEND": "fake",
    "FAKE_TOKEN_DELAY": "0.25",
    "RATE_LIMIT_PER_MINUTE": "5",
    "RATE_LIMIT_PER_HOUR": "1000",
}


def site_config(listen: int, upstream: int, prefix: str = "") -> str:
    """deploy/nginx.conf for these ports; with `prefix`, its service mounted under it
    (`location /ai/` and proxy_pass to `/`: nginx strips the prefix)."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    replaced = {
        "listen 80;": f"listen 127.0.0.1:{listen};",
        "server 127.0.0.1:8085;": f"server 127.0.0.1:{upstream};",
        "client_header_timeout 10s;": f"client_header_timeout {SHORT_TIMEOUT_S}s;",
        "client_body_timeout 30s;": f"client_body_timeout {SHORT_TIMEOUT_S}s;",
    }
    if prefix:
        replaced["location / {"] = f"location {prefix}/ {{"
        replaced["proxy_pass http://avito_ai;"] = "proxy_pass http://avito_ai/;"
    for old, new in replaced.items():
        assert old in text, f"deploy/nginx.conf no longer has {old!r}"
        text = text.replace(old, new)
    return text


class Nginx:
    def __init__(self, folder: Path, upstream: int, prefix: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        (folder / "site.conf").write_text(site_config(self.port, upstream, prefix))
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach folder
        (folder / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\n"
            f"error_log {folder}/error.log info;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n  access_log {folder}/access.log;\n"
            f"  client_body_temp_path {folder}/body;\n  proxy_temp_path {folder}/proxy;\n"
            f"  fastcgi_temp_path {folder}/fastcgi;\n  uwsgi_temp_path {folder}/uwsgi;\n"
            f"  scgi_temp_path {folder}/scgi;\n  include {folder}/site.conf;\n}}\n"
        )
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", "stderr"],
            stdout=subprocess.DEVNULL,
            stderr=open(folder / "stderr.log", "wb"),  # noqa: SIM115 - lives with the process
        )

    def wait_up(self) -> None:
        def listening() -> bool:
            assert self.proc.poll() is None, (self.folder / "stderr.log").read_text()
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_until(listening, 20, "nginx listening", ignoring=(OSError,))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextlib.contextmanager
def in_front(folder: Path, service: ServerProcess, prefix: str = "") -> Iterator[Nginx]:
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed: `make nginx` (make test does it)")
    nginx = Nginx(folder, service.port, prefix)
    try:
        nginx.wait_up()
        yield nginx
    finally:
        nginx.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Nginx, ServerProcess]]:
    folder = tmp_path_factory.mktemp("nginx")
    with (
        serving(dev_server(ENV, folder / "service.log")) as service,
        in_front(folder, service) as nginx,
    ):
        yield nginx, service


PREFIX = "/ai"


@pytest.fixture(scope="module")
def prefixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx serving the service under PREFIX (stripping it); the service, under gunicorn,
    told so by ROOT_PATH."""
    folder = tmp_path_factory.mktemp("nginx-prefixed")
    env = {
        **ENV,
        "FAKE_TOKEN_DELAY": "0.01",
        "RATE_LIMIT_PER_MINUTE": "1000",
        "ROOT_PATH": PREFIX,
    }
    with (
        serving(gunicorn_server(env, folder / "service.log")) as service,
        in_front(folder, service, PREFIX) as nginx,
    ):
        yield nginx


def test_the_config_file_passes_nginx_t(stack: tuple[Nginx, ServerProcess]) -> None:
    nginx, _ = stack
    check = subprocess.run(
        [
            NGINX,
            "-t",
            "-p",
            str(nginx.folder),
            "-c",
            str(nginx.folder / "nginx.conf"),
            "-e",
            "stderr",
        ],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_a_stream_arrives_token_by_token(stack: tuple[Nginx, ServerProcess]) -> None:
    nginx, _ = stack
    arrivals: list[tuple[float, str]] = []
    body = {"prompt": "раз два три", "stream": True}
    with httpx.stream("POST", nginx.url + "/api/v1/text/generate", json=body, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("event: "):
                arrivals.append((time.monotonic(), line))
    deltas = [t for t, line in arrivals if line == "event: delta"]
    done = [t for t, line in arrivals if line == "event: done"]
    assert len(deltas) >= 3 and done
    # Buffered, every event would arrive together at the end; here they are ~0.25 s apart.
    assert done[0] - deltas[0] > 0.4, arrivals


def test_the_client_address_is_the_one_nginx_saw(stack: tuple[Nginx, ServerProcess]) -> None:
    """A forged X-Forwarded-For neither dodges the limit nor reaches the logs."""
    nginx, service = stack
    statuses = []
    for i in range(8):
        r = httpx.get(
            nginx.url + "/api/health",
            headers={"X-Forwarded-For": f"203.0.113.{i}", "X-Request-ID": f"xff-{i}"},
            timeout=10,
        )
        statuses.append(r.status_code)
        assert r.headers["X-Request-ID"] == f"xff-{i}"
    assert 429 in statuses  # one client (127.0.0.1), whatever the header said
    lines = [line for line in service.output().splitlines() if "[xff-" in line]
    assert lines and all("203.0.113." not in line for line in lines), lines
    assert all("127.0.0.1" in line for line in lines), lines


def test_a_body_over_client_max_body_size_is_refused_by_nginx(
    stack: tuple[Nginx, ServerProcess],
) -> None:
    nginx, _ = stack
    r = httpx.post(
        nginx.url + "/api/v1/image/analyze",
        content=b"x" * (25 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413


def read_until_closed(sock: socket.socket, seconds: float) -> bytes | None:
    """What the peer sent before closing, or None if it kept the connection open."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return data


def test_a_client_that_stalls_its_head_or_body_is_dropped(
    stack: tuple[Nginx, ServerProcess],
) -> None:
    nginx, _ = stack
    head = socket.create_connection(("127.0.0.1", nginx.port))
    head.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")  # never finished
    body = socket.create_connection(("127.0.0.1", nginx.port))
    body.sendall(
        b"POST /api/v1/text/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"prompt":'
    )
    assert read_until_closed(head, SHORT_TIMEOUT_S + 5) == b""  # closed without an answer
    answer = read_until_closed(body, SHORT_TIMEOUT_S + 5)
    assert answer is not None, "nginx kept a stalled upload open"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    head.close()
    body.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Big": "a" * 20_000},  # over nginx's 16 kB line: refused by nginx
        {f"X-H{i}": "v" * 12_000 for i in range(3)},  # through nginx, over the service's 32 kB
        {f"X-H{i}": "v" for i in range(150)},  # through nginx, over the service's 100 fields
    ],
    ids=["nginx-line", "service-bytes", "service-count"],
)
def test_an_oversized_head_is_431_through_nginx(
    stack: tuple[Nginx, ServerProcess], headers: dict[str, str]
) -> None:
    nginx, _ = stack
    r = httpx.get(nginx.url + "/api/health", headers=headers, timeout=10)
    assert r.status_code == 431
    assert r.json()["error"] == "request_header_fields_too_large"
    assert r.json()["request_id"] == r.headers["x-request-id"]


def service_urls(html: str) -> list[str]:
    """Every href, src and action of a page."""
    return re.findall(r'(?:href|src|action)="([^"]*)"', html)


def test_under_a_prefix_the_pages_assets_and_api_calls_stay_under_it(prefixed: Nginx) -> None:
    for page, api in (("/", "/api/health/models"), ("/dashboard", "/api/metrics/dashboard")):
        r = httpx.get(prefixed.url + PREFIX + page, timeout=10)
        assert r.status_code == 200, r.text
        assert f'data-root="{PREFIX}"' in r.text
        urls = service_urls(r.text)
        assert urls
        for url in urls:
            assert url.startswith(PREFIX + "/"), url
            if "/static/" in url:
                assert httpx.get(prefixed.url + url, timeout=10).status_code == 200, url
        assert httpx.get(prefixed.url + PREFIX + api, timeout=10).status_code == 200
    # Outside the prefix there is nothing: the proxy serves the service under it only.
    assert httpx.get(prefixed.url + "/static/app.js", timeout=10).status_code == 404


def test_the_console_under_a_prefix_in_a_browser(browser: Any, prefixed: Nginx) -> None:
    """Every request the pages make outside the prefix is blocked and recorded."""
    base = prefixed.url + PREFIX
    tab = open_tab(browser, base, "/")
    page = tab.page
    # The badges polled from the page's script (server-rendered they read "ready").
    wait_in_page(
        tab, "document.querySelector('.model[data-role=avibe]').textContent.includes('готова')"
    )
    page.fill("#prompt", "привет из-под префикса")
    page.click("#avibe-send")
    wait_in_page(
        tab,
        "document.querySelector('.message.assistant .meta:not(:empty)') !== null"
        " || document.getElementById('avibe-status').classList.contains('error')",
    )
    assert tab.outside == [], tab.outside
    answer = page.locator(".message.assistant .body").last.inner_text()
    assert "привет из-под префикса" in answer, answer

    dashboard = open_tab(browser, base, "/dashboard")
    wait_in_page(
        dashboard, "document.getElementById('dash-status').textContent.startsWith('Обновлено')"
    )
    for opened in (tab, dashboard):
        assert opened.outside == [] and opened.errors == [], (opened.outside, opened.errors)
