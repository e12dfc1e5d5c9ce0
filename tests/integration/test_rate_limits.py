"""Rate limits against real processes: gunicorn workers sharing Redis, trusted proxies,
memory storage in one process, and Redis going away mid-run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from tests.servers import ServerProcess, dev_server, gunicorn_server, wait_workers

pytestmark = pytest.mark.integration

BASE = {"AVIBE_BACKEND": "fake"}


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


@pytest.mark.parametrize(
    ("minute", "hour", "expected", "wording"),
    [
        (4, 100, [200] * 4 + [429] * 2, "4 requests per minute"),
        (50, 3, [200] * 3 + [429] * 3, "3 requests per hour"),
    ],
)
def test_memory_storage_enforces_both_windows(tmp_path, minute, hour, expected, wording) -> None:
    env = {"RATE_LIMIT_PER_MINUTE": str(minute), "RATE_LIMIT_PER_HOUR": str(hour)}
    with started("dev", env, tmp_path) as srv:
        assert statuses(srv.url + "/api/health", 6) == expected
        assert (
            httpx.get(srv.url + "/api/health").json()["message"]
            == f"Rate limit exceeded: {wording}"
        )


def test_untrusted_peer_cannot_dodge_the_limit_with_x_forwarded_for(tmp_path) -> None:
    # Only 192.0.2.1 (a documentation address nobody connects from) is a trusted proxy.
    env = {"RATE_LIMIT_PER_MINUTE": "3", "FORWARDED_ALLOW_IPS": "192.0.2.1"}
    with started("dev", env, tmp_path) as srv, httpx.Client() as client:
        codes = [
            client.get(
                srv.url + "/api/health", headers={"X-Forwarded-For": f"203.0.113.{i}"}
            ).status_code
            for i in range(6)
        ]
        assert codes == [200, 200, 200, 429, 429, 429]


@pytest.mark.parametrize("kind", ["dev", "gunicorn"])
def test_trusted_proxy_clients_are_limited_separately(tmp_path, kind) -> None:
    env = {"RATE_LIMIT_PER_MINUTE": "3", "FORWARDED_ALLOW_IPS": "127.0.0.1"}
    with started(kind, env, tmp_path) as srv:
        alice = {"X-Forwarded-For": "198.51.100.7"}
        bob = {"X-Forwarded-For": "198.51.100.8"}
        assert statuses(srv.url + "/api/health", 4, alice) == [200, 200, 200, 429]
        assert statuses(srv.url + "/api/health", 4, bob) == [200, 200, 200, 429]
        log_line = next(line for line in srv.output().splitlines() if "198.51.100.8" in line)
        assert '"GET /api/health"' in log_line


def test_api_keys_on_the_running_server(tmp_path) -> None:
    env = {"API_KEYS": "sekret-1", "RATE_LIMIT_PER_MINUTE": "100"}
    with started("dev", env, tmp_path) as srv:
        body = {"prompt": "hi"}
        assert httpx.post(srv.url + "/api/v1/text/generate", json=body).status_code == 401
        ok = httpx.post(
            srv.url + "/api/v1/text/generate",
            json=body,
            headers={"Authorization": "Bearer sekret-1"},
        )
        assert ok.status_code == 200
        assert httpx.get(srv.url + "/api/health").status_code == 200
        assert "sekret-1" not in srv.output()


@pytest.mark.parametrize(("mode", "status"), [("open", 200), ("closed", 503)])
def test_redis_stopped_mid_run(redis_server, tmp_path, mode, status) -> None:
    env = {
        "RATE_LIMIT_STORAGE_URI": redis_server.uri,
        "RATE_LIMIT_FAIL_MODE": mode,
        "RATE_LIMIT_PER_MINUTE": "1000",
    }
    with started("dev", env, tmp_path) as srv:
        assert httpx.get(srv.url + "/api/health").status_code == 200
        redis_server.stop()
        try:
            started_at = time.monotonic()
            codes = statuses(srv.url + "/api/health", 5)
            elapsed = time.monotonic() - started_at
            assert codes == [status] * 5
            assert elapsed < 5  # fast answers, no hang
            assert httpx.get(srv.url + "/api/health/live").status_code == 200
            assert "Rate-limit storage unreachable" in srv.output()
            if mode == "closed":
                r = httpx.get(srv.url + "/api/health")
                assert r.json()["error"] == "rate_limit_unavailable"
                assert r.headers["Retry-After"] == "1"
        finally:
            redis_server.start()
        # Back to normal once Redis returns.
        assert httpx.get(srv.url + "/api/health").status_code == 200
