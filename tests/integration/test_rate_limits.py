"""Rate limits against real processes: gunicorn workers sharing Redis, and trusted proxies
(X-Forwarded-For is uvicorn's and gunicorn's to honour); and Redis going away mid-run.
The windows themselves are tested in process (tests/api/test_rate_limit_and_keys.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from tests.api.conftest import running
from tests.conftest import isolated_settings
from tests.servers import ServerProcess, dev_server, gunicorn_server, wait_workers

pytestmark = pytest.mark.integration

BASE = {"AVIBE_BACKEND": "fake"}
# Only 127.0.0.1 is a trusted proxy: a client connecting from 127.0.0.2 is not.
PROXIED = {"RATE_LIMIT_PER_MINUTE": "3", "FORWARDED_ALLOW_IPS": "127.0.0.1"}


@contextmanager
def started(kind: str, env: dict[str, str], tmp_path, workers: int = 1) -> Iterator[ServerProcess]:
    log = tmp_path / f"{kind}-{time.monotonic_ns()}.log"
    srv = (
        gunicorn_server({**BASE, **env}, log, workers)
        if kind == "gunicorn"
        else dev_server({**BASE, **env}, log)
    )
    try:
        srv.wait_ready(60)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> Iterator[ServerProcess]:
    """One dev server for the tests below: each uses its own clients (addresses, keys),
    so their limits do not mix."""
    env = {**PROXIED, "API_KEYS": "sekret-1"}
    with started("dev", env, tmp_path_factory.mktemp("limits")) as srv:
        yield srv


@pytest.fixture
def proxy_server(request, tmp_path) -> Iterator[ServerProcess]:
    if request.param == "dev":
        yield request.getfixturevalue("dev")
    else:
        with started(request.param, PROXIED, tmp_path) as srv:
            yield srv


def statuses(url: str, n: int, headers: dict[str, str] | None = None) -> list[int]:
    with httpx.Client() as client:
        return [client.get(url, headers=headers).status_code for _ in range(n)]


def burst(url: str, n: int = 15) -> list[int]:
    def one(_: int) -> int:
        # A new connection per request, so the kernel spreads them over the workers.
        return httpx.get(url, headers={"Connection": "close"}).status_code

    with ThreadPoolExecutor(5) as pool:
        return sorted(pool.map(one, range(n)))


def test_gunicorn_three_workers_share_limits_in_redis(redis_server, tmp_path) -> None:
    env = {"RATE_LIMIT_STORAGE_URI": redis_server.uri}
    with started("gunicorn", env, tmp_path, workers=3) as srv:
        assert len(wait_workers(srv, 3)) == 3
        assert burst(srv.url + "/api/health") == [200] * 10 + [429] * 5


def test_untrusted_peer_cannot_dodge_the_limit_with_x_forwarded_for(dev: ServerProcess) -> None:
    untrusted = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=untrusted) as client:
        codes = [
            client.get(
                dev.url + "/api/health", headers={"X-Forwarded-For": f"203.0.113.{i}"}
            ).status_code
            for i in range(6)
        ]
        assert codes == [200, 200, 200, 429, 429, 429]


@pytest.mark.parametrize("proxy_server", ["dev", "gunicorn"], indirect=True)
def test_trusted_proxy_clients_are_limited_separately(proxy_server: ServerProcess) -> None:
    srv = proxy_server
    alice = {"X-Forwarded-For": "198.51.100.7"}
    bob = {"X-Forwarded-For": "198.51.100.8"}
    assert statuses(srv.url + "/api/health", 4, alice) == [200, 200, 200, 429]
    assert statuses(srv.url + "/api/health", 4, bob) == [200, 200, 200, 429]
    log_line = next(line for line in srv.output().splitlines() if "198.51.100.8" in line)
    assert '"GET /api/health"' in log_line


def test_api_keys_on_the_running_server(dev: ServerProcess) -> None:
    body = {"prompt": "hi"}
    assert httpx.post(dev.url + "/api/v1/text/generate", json=body).status_code == 401
    ok = httpx.post(
        dev.url + "/api/v1/text/generate",
        json=body,
        headers={"Authorization": "Bearer sekret-1"},
    )
    assert ok.status_code == 200
    assert httpx.get(dev.url + "/api/health").status_code == 200
    assert "sekret-1" not in dev.output()  # not at start-up, not in any request's line


@pytest.mark.parametrize(("mode", "status"), [("open", 200), ("closed", 503)])
async def test_redis_stopped_mid_run(redis_server, caplog, mode, status) -> None:
    """In process (one real Redis is all it needs): the limits' storage goes away."""
    settings = isolated_settings(
        rate_limit_storage_uri=redis_server.uri,
        rate_limit_fail_mode=mode,
        rate_limit_per_minute=1000,
    )
    async with running(settings) as (_, client):
        assert (await client.get("/api/health")).status_code == 200
        redis_server.stop()
        try:
            with caplog.at_level("WARNING"):
                started_at = time.monotonic()
                codes = [(await client.get("/api/health")).status_code for _ in range(5)]
                elapsed = time.monotonic() - started_at
            assert codes == [status] * 5
            assert elapsed < 5  # fast answers, no hang
            assert (await client.get("/api/health/live")).status_code == 200
            assert "Rate-limit storage unreachable" in caplog.text
            if mode == "closed":
                r = await client.get("/api/health")
                assert r.json()["error"] == "rate_limit_unavailable"
                assert r.headers["Retry-After"] == "1"
        finally:
            redis_server.start()
        # Back to normal once Redis returns.
        assert (await client.get("/api/health")).status_code == 200
