"""Fair admission against real servers: token budgets shared by gunicorn workers through
Redis and kept across a restart; keys and budgets from API_KEYS_FILE reloaded on HUP."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import ServerProcess, dev_server, gunicorn_server, serving, wait_workers

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


def test_token_budgets_hold_across_workers_and_a_restart(redis_server, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"sk-team name=team tokens_per_minute={BUDGET}\n")
    env = {
        "AVIBE_BACKEND": "fake",
        "API_KEYS_FILE": str(keys),
        "RATE_LIMIT_STORAGE_URI": redis_server.uri,
        "RATE_LIMIT_PER_MINUTE": "1000",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    import redis

    redis.Redis(port=redis_server.port).flushall()
    srv = gunicorn_server(env, tmp_path / "first.log", workers=3)
    try:
        srv.wait_ready()
        wait_workers(srv, 3)
        answers, tokens, refusal = spend_until_refused(srv, "sk-team")
        per_answer = tokens // answers
        # Exactly the budget, whichever worker counted them: each answer reserved what it
        # may use as it was admitted, and the one that would not fit was refused.
        assert BUDGET - per_answer < tokens <= BUDGET, (answers, tokens)
        assert f"{BUDGET} tokens per minute" in refusal.json()["message"]
        assert len(set(wait_workers(srv, 0))) == 3
    finally:
        srv.stop()
    again = gunicorn_server(env, tmp_path / "second.log", workers=1)
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
        deadline = time.monotonic() + 20
        while srv.output().count("Application startup complete") < 2:  # both have the keys
            assert time.monotonic() < deadline, srv.output()
            time.sleep(0.1)
        assert ask(srv, "sk-old").status_code == 200

        keys.write_text("sk-old name=old\nsk-new name=new tokens_per_minute=lots\n")
        srv.signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while srv.output().count("Reload refused") < 1:
            assert time.monotonic() < deadline, srv.output()
            time.sleep(0.1)
        refusal = [line for line in srv.output().splitlines() if "Reload refused" in line]
        assert len(refusal) == 1
        assert f"{keys} line 2: tokens_per_minute must be a whole number" in refusal[0]
        assert "got '" not in refusal[0]

        keys.unlink()  # deleted: refused too
        srv.signal(signal.SIGHUP)
        while srv.output().count("Reload refused") < 2:
            assert time.monotonic() < deadline, srv.output()
            time.sleep(0.1)
        refusal = [line for line in srv.output().splitlines() if "Reload refused" in line]
        assert f"file {keys} does not exist" in refusal[1]
        time.sleep(1)
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
        for _ in range(50):  # until the old workers have gone
            if ask(srv, "sk-old").status_code == 401:
                break
            time.sleep(0.1)
        assert ask(srv, "sk-old").status_code == 401
        assert ask(srv, "sk-new").status_code == 200
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def slow_request(srv: ServerProcess, key: str | None, words: int = 10) -> httpx.Response:
    """About words x 50 ms of generation with FAKE_TOKEN_DELAY=0.05."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        srv.url + "/api/v1/text/generate",
        json={"prompt": " ".join(["w"] * (words - 1)), "max_tokens": words},
        headers=headers,
        timeout=120,
    )


def figures(srv: ServerProcess) -> dict[str, int]:
    body = httpx.get(srv.url + "/api/metrics/dashboard").json()
    return {"running": body["running"], "waiting": body["waiting"]}


def until(srv: ServerProcess, check, within: float = 20.0) -> dict[str, int]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        now = figures(srv)
        if check(now):
            return now
        time.sleep(0.02)
    raise AssertionError(f"not reached: {figures(srv)}")


def one_at_a_time(tmp_path: Path, **extra: str):  # type: ignore[no-untyped-def]
    """A server whose model generates one request at a time (AVIBE_MAX_CONCURRENCY=1,
    unless `extra` says otherwise), at 50 ms a token."""
    keys = tmp_path / "keys.txt"
    keys.write_text(
        "sk-night name=nightly priority=batch\nsk-ui name=console\nsk-two name=two concurrency=2\n"
        "sk-flood name=flood\nsk-one name=one\n"
    )
    env = {
        "AVIBE_BACKEND": "fake",
        "FAKE_TOKEN_DELAY": "0.05",
        "API_KEYS_FILE": str(keys),
        "RATE_LIMIT_PER_MINUTE": "1000",
        "AVIBE_MAX_CONCURRENCY": "1",
        **extra,
    }
    return serving(dev_server(env, tmp_path / "server.log"))


def test_a_flooding_client_does_not_starve_another_on_a_running_server(tmp_path: Path) -> None:
    # (CLIENT_MAX_WAITING raised: the flood is meant to queue, to test the queue's order)
    with one_at_a_time(tmp_path, AVIBE_MAX_CONCURRENCY="4", CLIENT_MAX_WAITING="64") as srv:
        finished: list[str] = []

        def flood() -> None:  # about a second each: 20 tokens at 50 ms
            assert slow_request(srv, "sk-flood", 20).status_code == 200
            finished.append("flood")

        threads = [threading.Thread(target=flood) for _ in range(40)]
        for thread in threads:
            thread.start()
        # (nearly) all 40 in: 4 generating, the rest queued
        queued = until(srv, lambda f: f["running"] == 4 and f["waiting"] >= 30)["waiting"]
        assert queued >= 30
        done_before = len(finished)
        assert ask(srv, "sk-one").status_code == 200
        finished.append("one")
        for thread in threads:
            thread.join()
    # Its turn came after the four generating and at most one more of the flood's: it
    # finished with the next group of answers, long before the queued ones were through.
    assert finished.index("one") - done_before <= 4 + 4, (finished.index("one"), done_before)


def test_an_interactive_request_overtakes_queued_batch_work(tmp_path: Path) -> None:
    with one_at_a_time(tmp_path) as srv:
        finished: list[str] = []

        def run(key: str, name: str) -> None:
            assert slow_request(srv, key).status_code == 200
            finished.append(name)

        batch = [threading.Thread(target=run, args=("sk-night", "batch")) for _ in range(6)]
        for thread in batch:
            thread.start()
        until(srv, lambda f: f["running"] == 1 and f["waiting"] == 5)
        run("sk-ui", "interactive")
        for thread in batch:
            thread.join()
    assert finished.index("interactive") == 1, finished  # right after the one running


def test_one_client_generates_at_most_its_concurrency(tmp_path: Path) -> None:
    with one_at_a_time(tmp_path, AVIBE_MAX_CONCURRENCY="8") as srv:
        threads = [threading.Thread(target=slow_request, args=(srv, "sk-two")) for _ in range(6)]
        for thread in threads:
            thread.start()
        # ("waiting" also counts an admitted request until its first token)
        seen = until(srv, lambda f: f["running"] == 2 and f["waiting"] == 4)
        peak = seen["running"]
        while any(t.is_alive() for t in threads):
            peak = max(peak, figures(srv)["running"])
        for thread in threads:
            thread.join()
    assert seen == {"running": 2, "waiting": 4} and peak == 2


def test_a_waiting_client_that_disconnects_leaves_the_queue(tmp_path: Path) -> None:
    with one_at_a_time(tmp_path) as srv:
        busy = threading.Thread(target=slow_request, args=(srv, "sk-ui", 40))
        busy.start()
        until(srv, lambda f: f["running"] == 1)
        body = b'{"prompt": "x", "max_tokens": 2}'
        waiter = socket.create_connection(("127.0.0.1", srv.port))
        waiter.sendall(
            b"POST /api/v1/text/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-ui\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        until(srv, lambda f: f["waiting"] == 1)
        waiter.close()  # gone while queued
        until(srv, lambda f: f["waiting"] == 0, within=2.0)
        assert figures(srv)["running"] == 1  # the one generating goes on
        busy.join()


def test_one_client_cannot_fill_the_queue_for_everyone_else(tmp_path: Path) -> None:
    """6 requests of one key with 2 generating and a queue of 4: its excess is refused
    (429, its own bound), and another client still gets a place."""
    with one_at_a_time(tmp_path, AVIBE_MAX_CONCURRENCY="2", MAX_QUEUE_SIZE="4") as srv:
        results: list[httpx.Response] = []
        hog = [
            threading.Thread(target=lambda: results.append(slow_request(srv, "sk-flood", 20)))
            for _ in range(6)
        ]
        for thread in hog:
            thread.start()
        until(srv, lambda f: f["running"] == 2)
        time.sleep(0.3)  # the rest of the hog's requests have arrived
        other = slow_request(srv, "sk-one", 2)
        for thread in hog:
            thread.join()
    assert other.status_code == 200, other.text
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 200, 200, 429, 429, 429], codes  # 2 running + 1 waiting (4 // 4)
    refused = next(r for r in results if r.status_code == 429)
    assert "CLIENT_MAX_WAITING" in refused.json()["message"]
    assert refused.headers["retry-after"] == "1"


def client_usage(srv: ServerProcess, key: str) -> int:
    body = httpx.get(
        srv.url + "/api/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).json()
    return int(body["client"]["tokens_per_minute"]["used"])


def test_a_burst_of_concurrent_requests_stays_within_the_budget(
    redis_server, tmp_path: Path
) -> None:
    """12 requests at once from one key with 300 tokens a minute, over 3 gunicorn workers
    sharing Redis: each reserved its prompt plus max_tokens as it was admitted, so those
    that did not fit were refused at once, and what was served is within the budget."""
    import redis

    redis.Redis(port=redis_server.port).flushall()
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-team name=team tokens_per_minute=300\n")
    env = {
        "AVIBE_BACKEND": "fake",
        "FAKE_TOKEN_DELAY": "0.05",
        "API_KEYS_FILE": str(keys),
        "RATE_LIMIT_STORAGE_URI": redis_server.uri,
        "RATE_LIMIT_PER_MINUTE": "1000",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    srv = gunicorn_server(env, tmp_path / "server.log", workers=3)
    try:
        srv.wait_ready()
        wait_workers(srv, 3)
        results: list[httpx.Response] = []

        def burst() -> None:
            results.append(
                httpx.post(
                    srv.url + "/api/v1/text/generate",
                    json={"prompt": " ".join(["word"] * 20), "max_tokens": 40},
                    headers={"Authorization": "Bearer sk-team", "Connection": "close"},
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
        assert client_usage(srv, "sk-team") == used
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
        deadline = time.monotonic() + 10
        while (used := client_usage(srv, "sk-team")) < 5 * 1001:
            assert time.monotonic() < deadline, used
            time.sleep(0.1)
        time.sleep(0.5)
        used = client_usage(srv, "sk-team")
        assert 5 * 1002 <= used <= 5 * (1001 + 20), used


def test_budget_storage_errors_are_logged_once_per_interval(tmp_path: Path) -> None:
    from tests.servers import free_port

    keys = tmp_path / "keys.txt"
    keys.write_text("sk-team name=team tokens_per_minute=100000\n")
    env = {
        "AVIBE_BACKEND": "fake",
        "API_KEYS_FILE": str(keys),
        "RATE_LIMIT_STORAGE_URI": f"redis://127.0.0.1:{free_port()}/0",  # nothing there
        "RATE_LIMIT_FAIL_MODE": "open",
        "RATE_LIMIT_PER_MINUTE": "1000",
    }
    with serving(dev_server(env, tmp_path / "server.log")) as srv:
        with httpx.Client(headers={"Authorization": "Bearer sk-team"}, timeout=30) as http:
            for _ in range(50):
                r = http.post(
                    srv.url + "/api/v1/text/generate", json={"prompt": "a b", "max_tokens": 2}
                )
                assert r.status_code == 200
        errors = [line for line in srv.output().splitlines() if "[ERROR]" in line]
    budget = [line for line in errors if "Token budget storage" in line]
    assert len(budget) == 1, budget
    assert len(errors) <= 2, errors  # that one and the request limits' own
