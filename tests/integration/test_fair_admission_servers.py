"""Fair admission against real servers: token budgets shared by gunicorn workers through
Redis and kept across a restart; keys and budgets from API_KEYS_FILE reloaded on HUP; a
stream whose client leaves is charged what it used. The queue's order and bounds are
tested in process (tests/api/test_fair_admission.py, tests/unit/test_admission_queue.py)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import (
    ServerProcess,
    dev_server,
    gunicorn_server,
    metric,
    serving,
    wait_workers,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

BUDGET = 60


def ask(srv: ServerProcess, key: str) -> httpx.Response:
    """One request on its own connection, so consecutive ones reach different workers."""
    return httpx.post(
        srv.url + "/api/v1/text/generate",
        json={"prompt": "one two three", "max_tokens": 3},
        headers={"Authorization": f"Bearer {key}", "Connection": "close"},
        timeout=30,
    )


def spend_until_refused(srv: ServerProcess, key: str) -> tuple[int, int, httpx.Response]:
    """(answers, tokens they used, the refusal)."""
    tokens = 0
    for answers in range(50):
        r = ask(srv, key)
        if r.status_code == 429:
            return answers, tokens, r
        assert r.status_code == 200, r.text
        tokens += r.json()["data"]["input_tokens"] + r.json()["data"]["generated_tokens"]
    raise AssertionError("the budget was never enforced")


def client_usage(srv: ServerProcess, key: str) -> int:
    body = httpx.get(
        srv.url + "/api/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).json()
    return int(body["client"]["tokens_per_minute"]["used"])


class Cluster:
    """3 gunicorn workers on the fake engine (50 ms a token) sharing a Redis, one key per
    test: started when a test first asks for it, and again if a test has stopped it."""

    def __init__(self, redis_port: int, env: dict[str, str], tmp: Path) -> None:
        self.redis_port, self.env, self.tmp = redis_port, env, tmp
        self.srv: ServerProcess | None = None
        self.starts = 0

    def get(self) -> ServerProcess:
        if self.srv is None or self.srv.proc.poll() is not None:
            if self.starts == 0:
                import redis

                redis.Redis(port=self.redis_port).flushall()
            self.starts += 1
            self.srv = gunicorn_server(self.env, self.tmp / f"cluster-{self.starts}.log", 3)
            self.srv.wait_ready()
            wait_workers(self.srv, 3)
        return self.srv

    def stop(self) -> None:
        if self.srv is not None:
            self.srv.stop()


@pytest.fixture(scope="module")
def cluster(redis_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    keys = tmp / "keys.txt"
    keys.write_text(
        f"sk-team name=team tokens_per_minute={BUDGET}\nsk-burst name=burst tokens_per_minute=300\n"
    )
    env = {
        "AVIBE_BACKEND": "fake",
        "FAKE_TOKEN_DELAY": "0.05",
        "API_KEYS_FILE": str(keys),
        "RATE_LIMIT_STORAGE_URI": redis_server.uri,
        "RATE_LIMIT_PER_MINUTE": "1000",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom"),
    }
    shared = Cluster(redis_server.port, env, tmp)
    try:
        yield shared
    finally:
        shared.stop()


def test_a_burst_of_concurrent_requests_stays_within_the_budget(cluster: Cluster) -> None:
    """12 requests at once from one key with 300 tokens a minute, over 3 gunicorn workers
    sharing Redis: each reserved its prompt plus max_tokens as it was admitted, so those
    that did not fit were refused at once, and what was served is within the budget."""
    srv = cluster.get()
    results: list[httpx.Response] = []

    def burst() -> None:
        results.append(
            httpx.post(
                srv.url + "/api/v1/text/generate",
                json={"prompt": " ".join(["word"] * 20), "max_tokens": 40},
                headers={"Authorization": "Bearer sk-burst", "Connection": "close"},
                timeout=60,
            )
        )

    threads = [threading.Thread(target=burst) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    served = [r.json()["data"] for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code != 200]
    used = sum(d["input_tokens"] + d["generated_tokens"] for d in served)
    reservation = served[0]["input_tokens"] + 40
    assert served and refused
    assert len(served) == 300 // reservation, (len(served), reservation)
    assert used <= 300
    for r in refused:
        assert r.status_code == 429
        assert "300 tokens per minute" in r.json()["message"]
    # Settled: the budget holds what was used, the unused reservations given back.
    assert client_usage(srv, "sk-burst") == used


def test_token_budgets_hold_across_workers_and_a_restart(cluster: Cluster, tmp_path: Path) -> None:
    srv = cluster.get()
    answers, tokens, refusal = spend_until_refused(srv, "sk-team")
    per_answer = tokens // answers
    # Exactly the budget, whichever worker counted them: each answer reserved what it
    # may use as it was admitted, and the one that would not fit was refused.
    assert BUDGET - per_answer < tokens <= BUDGET, (answers, tokens)
    assert f"{BUDGET} tokens per minute" in refusal.json()["message"]
    assert len(set(wait_workers(srv, 0))) == 3
    cluster.stop()
    again = gunicorn_server(cluster.env, tmp_path / "second.log", workers=1)
    try:
        again.wait_ready()
        r = ask(again, "sk-team")  # a restart forgets nothing: the budget is in Redis
        assert r.status_code == 429 and "tokens per minute" in r.json()["message"]
    finally:
        again.stop()


def keyed_gunicorn(tmp_path: Path, workers: int) -> tuple[Path, ServerProcess]:
    """gunicorn on the fake engine with an API_KEYS_FILE holding the key sk-old."""
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-old name=old\n")
    env = {
        "AVIBE_BACKEND": "fake",
        "API_KEYS_FILE": str(keys),
        "RATE_LIMIT_PER_MINUTE": "1000",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    return keys, gunicorn_server(env, tmp_path / "server.log", workers=workers)


def test_keys_and_budgets_reload_on_hup(tmp_path: Path) -> None:
    keys, srv = keyed_gunicorn(tmp_path, workers=1)
    try:
        srv.wait_ready()
        assert ask(srv, "sk-old").status_code == 200
        assert ask(srv, "sk-new").status_code == 401
        keys.write_text("sk-new name=new tokens_per_minute=1\n")
        booted = len(wait_workers(srv, 0))
        srv.signal(signal.SIGHUP)
        wait_workers(srv, booted + 1)
        srv.wait_ready()
        for _ in range(50):  # until the old worker has gone
            if ask(srv, "sk-old").status_code == 401:
                break
        assert ask(srv, "sk-old").status_code == 401
        assert ask(srv, "sk-new").status_code == 200  # its first tokens
        refused = ask(srv, "sk-new")  # its new budget: 1 token a minute
        assert refused.status_code == 429 and "1 tokens per minute" in refused.json()["message"]
    finally:
        srv.stop()


def reload_failures(srv: ServerProcess) -> float:
    for line in httpx.get(srv.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("avito_config_reload_failures_total "):
            return float(line.split()[1])
    return 0.0


def test_a_reload_with_a_bad_keys_file_is_refused_and_the_next_good_one_works(
    tmp_path: Path,
) -> None:
    keys, srv = keyed_gunicorn(tmp_path, workers=2)
    try:
        srv.wait_ready()
        workers = wait_workers(srv, 2)
        wait_until(  # both have the keys
            lambda: srv.output().count("Application startup complete") >= 2,
            20,
            srv.output,
        )
        assert ask(srv, "sk-old").status_code == 200

        keys.write_text("sk-old name=old\nsk-new name=new tokens_per_minute=lots\n")
        srv.signal(signal.SIGHUP)
        wait_until(lambda: srv.output().count("Reload refused") >= 1, 20, srv.output)
        refusal = [line for line in srv.output().splitlines() if "Reload refused" in line]
        assert len(refusal) == 1
        assert f"{keys} line 2: tokens_per_minute must be a whole number" in refusal[0]
        assert "got '" not in refusal[0]

        keys.unlink()  # deleted: refused too
        srv.signal(signal.SIGHUP)
        wait_until(lambda: srv.output().count("Reload refused") >= 2, 20, srv.output)
        refusal = [line for line in srv.output().splitlines() if "Reload refused" in line]
        assert f"file {keys} does not exist" in refusal[1]
        # The master handles signals one after another: once it has handled a SIGWINCH (a
        # no-op without daemon mode) sent now, whatever the refused HUP did is done.
        srv.signal(signal.SIGWINCH)
        wait_until(lambda: "Handling signal: winch" in srv.output(), 20, srv.output)
        # The master lives, its workers are the same ones and keep the keys they had.
        assert srv.proc.poll() is None
        assert wait_workers(srv, 0) == workers
        assert ask(srv, "sk-old").status_code == 200
        assert ask(srv, "sk-new").status_code == 401
        assert reload_failures(srv) == 2
        # A worker that dies now is replaced by one with the configuration the others
        # have (the files on disk are still invalid).
        os.kill(int(min(workers)), signal.SIGKILL)
        wait_workers(srv, len(workers) + 1)
        srv.wait_ready()
        for _ in range(6):
            assert ask(srv, "sk-old").status_code == 200
        assert "exited with code 2" not in srv.output()

        keys.write_text("sk-new name=new\n")  # valid again: the next HUP reloads
        srv.signal(signal.SIGHUP)
        wait_workers(srv, len(workers) + 3)
        # until the old workers have gone
        wait_until(lambda: ask(srv, "sk-old").status_code == 401, 20, "sk-old refused")
        assert ask(srv, "sk-old").status_code == 401
        assert ask(srv, "sk-new").status_code == 200
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def test_a_cancelled_stream_is_charged_its_prompt_and_what_was_generated(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-team name=team tokens_per_minute=1000000\n")
    env = {
        "AVIBE_BACKEND": "fake",
        "FAKE_TOKEN_DELAY": "0.05",
        "API_KEYS_FILE": str(keys),
        "RATE_LIMIT_PER_MINUTE": "1000",
        "MAX_PROMPT_LENGTH": "20000",
    }
    prompt = " ".join(["word"] * 1000)  # the fake counts 1,001 prompt tokens
    with serving(dev_server(env, tmp_path / "server.log")) as srv:
        for _ in range(5):
            with httpx.stream(
                "POST",
                srv.url + "/api/v1/text/generate",
                json={"prompt": prompt, "max_tokens": 200, "stream": True},
                headers={"Authorization": "Bearer sk-team"},
                timeout=30,
            ) as r:
                lines = r.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))
            # closed after the first delta
        # The server is done with all five (each counted once its stream ended): the
        # generated tokens of each are charged by then.
        wait_until(
            lambda: metric(srv, "avito_http_requests_total", route="/api/v1/text/generate") == 5,
            10,
            "the five streams ended in the server",
        )
        wait_until(lambda: client_usage(srv, "sk-team") >= 5 * 1001, 10, "the prompts charged")
        used = client_usage(srv, "sk-team")
        assert 5 * 1002 <= used <= 5 * (1001 + 20), used
