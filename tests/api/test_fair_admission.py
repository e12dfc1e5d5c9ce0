"""Fair admission, in process with the fake engine: the order requests are admitted in is
recorded, so these tests check who goes first, not how long anything took."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from avito_ai.services.admission import Admission
from tests.conftest import engine_set, isolated_settings
from tests.waiting import wait_until_async

from .conftest import running


def keys_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(text)
    return path


def admitted_order(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Client ids in the order they got a place (the fair queue's decisions)."""
    order: list[str] = []
    start = Admission._start

    def recording(self: Admission, client: str) -> None:
        order.append(client)
        start(self, client)

    monkeypatch.setattr(Admission, "_start", recording)
    return order


async def wait_for(predicate: Any, within: float = 5.0) -> None:
    await wait_until_async(predicate, within, "the admission queue's state")


def generate(client: httpx.AsyncClient, key: str, prompt: str = "a b c", **headers: str) -> Any:
    return client.post(
        "/api/v1/text/generate",
        json={"prompt": prompt, "max_tokens": 3},
        headers={"Authorization": f"Bearer {key}", **headers},
    )


async def test_a_flooding_client_does_not_starve_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = admitted_order(monkeypatch)
    settings = isolated_settings(
        api_keys_file=keys_file(tmp_path, "sk-flood name=flood\nsk-one name=one\n"),
        avibe_max_concurrency=4,
        client_max_waiting=64,  # (its own bound, tested below, would refuse most of them)
        rate_limit_per_minute=1000,
    )
    async with running(settings, engine_set(token_delay=0.02)) as (app, client):
        queue = app.state.avito.governor.admissions["avibe"]
        flood = [asyncio.create_task(generate(client, "sk-flood")) for _ in range(40)]
        await wait_for(lambda: queue.running == 4 and queue.waiting == 36)
        one = await generate(client, "sk-one")
        assert one.status_code == 200
        results = await asyncio.gather(*flood)
    assert all(r.status_code == 200 for r in results)
    ids = sorted(set(order), key=order.index)
    flood_id, one_id = ids[0], ids[1]
    assert order.count(flood_id) == 40
    # Four were running when it came; of the 36 waiting, at most one went before it.
    assert order.index(one_id) <= 4 + 1, order[:10]


async def test_a_higher_class_overtakes_waiting_batch_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = admitted_order(monkeypatch)
    settings = isolated_settings(
        api_keys_file=keys_file(
            tmp_path, "sk-night name=nightly priority=batch\nsk-ui name=console\n"
        ),
        avibe_max_concurrency=1,
        rate_limit_per_minute=1000,
    )
    async with running(settings, engine_set(token_delay=0.02)) as (app, client):
        queue = app.state.avito.governor.admissions["avibe"]
        batch = [asyncio.create_task(generate(client, "sk-night")) for _ in range(6)]
        await wait_for(lambda: queue.waiting == 5)
        assert (await generate(client, "sk-ui")).status_code == 200
        await asyncio.gather(*batch)
    _nightly, ui = sorted(set(order), key=order.index)
    assert order.index(ui) == 1  # right after the batch request that was running


async def test_x_priority_is_only_for_keys_allowed_to_use_it(tmp_path: Path) -> None:
    settings = isolated_settings(
        api_keys_file=keys_file(
            tmp_path, "sk-ops name=ops classes=interactive,batch\nsk-plain name=plain\n"
        ),
        rate_limit_per_minute=1000,
    )
    async with running(settings) as (_, client):
        ok = await generate(client, "sk-ops", **{"X-Priority": "batch"})
        assert ok.status_code == 200
        refused = await generate(client, "sk-plain", **{"X-Priority": "batch"})
        assert refused.status_code == 400 and "X-Priority" in refused.json()["message"]
        unknown = await generate(client, "sk-ops", **{"X-Priority": "urgent"})
        assert unknown.status_code == 400


async def test_one_client_runs_at_most_its_concurrency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peak: list[int] = []
    start = Admission._start

    def watching(self: Admission, client: str) -> None:
        start(self, client)
        peak.append(self.by_client[client])

    monkeypatch.setattr(Admission, "_start", watching)
    settings = isolated_settings(
        api_keys_file=keys_file(tmp_path, "sk-a name=a concurrency=2\n"),
        client_concurrency=5,
        avibe_max_concurrency=8,  # places to spare: only its own concurrency holds it
        rate_limit_per_minute=1000,
    )
    # Each answer (3 tokens) runs long enough for a busy machine's dashboard call to see
    # two of them between their first token and their end.
    async with running(settings, engine_set(token_delay=0.3)) as (_, client):
        tasks = [asyncio.create_task(generate(client, "sk-a")) for _ in range(6)]
        # What the dashboard shows meanwhile ("waiting" also counts an admitted request
        # until its first token).
        seen = await until_dashboard(client, lambda f: f == {"running": 2, "waiting": 4})
        dashboard_peak = seen["running"]
        while not all(t.done() for t in tasks):
            dashboard_peak = max(dashboard_peak, (await dashboard(client))["running"])
            await asyncio.wait(tasks, timeout=0.005)  # sampled until the requests are done
        results = await asyncio.gather(*tasks)
    assert all(r.status_code == 200 for r in results)
    assert max(peak) == 2 and len(peak) == 6
    assert seen == {"running": 2, "waiting": 4} and dashboard_peak == 2


async def dashboard(client: httpx.AsyncClient) -> dict[str, int]:
    body = (await client.get("/api/metrics/dashboard")).json()
    return {"running": body["running"], "waiting": body["waiting"]}


async def until_dashboard(client: httpx.AsyncClient, check: Any) -> dict[str, int]:
    shown: list[dict[str, int]] = []

    async def reached() -> dict[str, int] | None:
        now = await dashboard(client)
        shown.append(now)
        return now if check(now) else None

    seen: dict[str, int] = await wait_until_async(
        reached, 30, lambda: f"the dashboard's counts (it showed {shown[-5:]})"
    )
    return seen


async def test_a_waiter_that_leaves_is_out_of_the_queue_at_once() -> None:
    settings = isolated_settings(avibe_max_concurrency=1, rate_limit_per_minute=1000)
    async with running(settings, engine_set(token_delay=0.05)) as (app, client):
        queue = app.state.avito.governor.admissions["avibe"]
        busy = asyncio.create_task(
            client.post("/api/v1/text/generate", json={"prompt": "x " * 20, "max_tokens": 20})
        )
        await wait_for(lambda: queue.running == 1)
        waiter = asyncio.create_task(client.post("/api/v1/text/generate", json={"prompt": "y"}))
        await wait_for(lambda: queue.waiting == 1)
        waiter.cancel()  # the client disconnects
        await wait_for(lambda: queue.waiting == 0, within=0.5)
        assert queue.running == 1
        assert (await busy).status_code == 200
        assert queue.running == 0


async def post_then_disconnect(app: Any, body: bytes, gone: asyncio.Event) -> list[Any]:
    """POST /api/v1/text/generate straight to the ASGI app; once `gone` is set the client
    closes its connection (`receive` answers http.disconnect, as a server does when the
    socket closes). Returns what the app sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/text/generate",
        "raw_path": b"/api/v1/text/generate",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 123),
        "server": ("testserver", 80),
    }
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_a_waiter_whose_client_disconnects_leaves_the_queue() -> None:
    """As on a server when the socket of a queued request closes: the app sees
    http.disconnect and the waiter leaves the queue at once, the one generating goes on."""
    settings = isolated_settings(avibe_max_concurrency=1, rate_limit_per_minute=1000)
    async with running(settings, engine_set(token_delay=0.05)) as (app, client):
        queue = app.state.avito.governor.admissions["avibe"]
        busy = asyncio.create_task(
            client.post("/api/v1/text/generate", json={"prompt": "x " * 20, "max_tokens": 20})
        )
        await wait_for(lambda: queue.running == 1)
        gone = asyncio.Event()
        waiter = asyncio.create_task(
            post_then_disconnect(app, b'{"prompt": "x", "max_tokens": 2}', gone)
        )
        await wait_for(lambda: queue.waiting == 1)
        gone.set()  # gone while queued
        await wait_for(lambda: queue.waiting == 0, within=2.0)
        assert queue.running == 1  # the one generating goes on
        assert not busy.done()
        await asyncio.wait_for(waiter, 2)  # the app is done with the gone client
        assert (await busy).status_code == 200
        assert queue.running == 0


async def test_one_client_cannot_fill_the_queue_for_everyone_else(tmp_path: Path) -> None:
    """6 requests of one key with 2 generating and a queue of 4: its excess is refused
    (429, its own bound), and another client still gets a place."""
    settings = isolated_settings(
        api_keys_file=keys_file(tmp_path, "sk-flood name=flood\nsk-one name=one\n"),
        avibe_max_concurrency=2,
        max_queue_size=4,  # CLIENT_MAX_WAITING unset: a quarter of it, 1
        rate_limit_per_minute=1000,
    )
    async with running(settings, engine_set(token_delay=0.02)) as (app, client):
        queue = app.state.avito.governor.admissions["avibe"]
        long = " ".join(["w"] * 19)
        hog = [
            asyncio.create_task(
                client.post(
                    "/api/v1/text/generate",
                    json={"prompt": long, "max_tokens": 20},
                    headers={"Authorization": "Bearer sk-flood"},
                )
            )
            for _ in range(6)
        ]
        await wait_for(lambda: queue.running == 2 and sum(t.done() for t in hog) == 3)
        assert queue.waiting == 1
        other = await generate(client, "sk-one", "w")
        results = await asyncio.gather(*hog)
    assert other.status_code == 200, other.text
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 200, 200, 429, 429, 429], codes  # 2 running + 1 waiting (4 // 4)
    refused = next(r for r in results if r.status_code == 429)
    assert refused.json()["error"] == "rate_limit_exceeded"
    assert "CLIENT_MAX_WAITING" in refused.json()["message"]
    assert refused.headers["retry-after"] == "1"


async def test_budget_storage_errors_are_logged_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.servers import free_port

    settings = isolated_settings(
        api_keys_file=keys_file(tmp_path, "sk-team name=team tokens_per_minute=100000\n"),
        rate_limit_storage_uri=f"redis://127.0.0.1:{free_port()}/0",  # nothing there
        rate_limit_fail_mode="open",
        rate_limit_per_minute=1000,
    )
    async with running(settings) as (_, client):
        with caplog.at_level("ERROR"):
            for _ in range(50):
                r = await client.post(
                    "/api/v1/text/generate",
                    json={"prompt": "a b", "max_tokens": 2},
                    headers={"Authorization": "Bearer sk-team"},
                )
                assert r.status_code == 200
    errors = [rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR"]
    budget = [line for line in errors if "Token budget storage" in line]
    assert len(budget) == 1, budget
    assert len(errors) <= 2, errors  # that one and the request limits' own


async def test_a_full_queue_answers_503_at_once() -> None:
    settings = isolated_settings(
        avibe_max_concurrency=1, max_queue_size=2, client_max_waiting=3, rate_limit_per_minute=1000
    )
    async with running(settings, engine_set(token_delay=0.05)) as (app, client):
        queue = app.state.avito.governor.admissions["avibe"]
        body = {"prompt": "x " * 10, "max_tokens": 10}
        held = [
            asyncio.create_task(client.post("/api/v1/text/generate", json=body)) for _ in range(3)
        ]
        await wait_for(lambda: queue.running == 1 and queue.waiting == 2)
        r = await client.post("/api/v1/text/generate", json=body)
        assert r.status_code == 503 and r.json()["error"] == "overloaded"
        assert int(r.headers["retry-after"]) >= 1
        assert all(x.status_code == 200 for x in await asyncio.gather(*held))


async def test_token_budget_refuses_with_which_budget_and_reports_what_is_left(
    tmp_path: Path,
) -> None:
    settings = isolated_settings(
        api_keys_file=keys_file(tmp_path, "sk-a name=team-a tokens_per_minute=40\n"),
        tokens_per_day=1000,
        rate_limit_per_minute=1000,
    )
    async with running(settings) as (_, client):
        left: list[int] = []
        spent = 0
        for _ in range(20):
            r = await generate(client, "sk-a")
            if r.status_code == 429:
                break
            assert r.status_code == 200
            left.append(int(r.headers["x-ratelimit-remaining-tokens"]))
            data = r.json()["data"]
            spent += data["input_tokens"] + data["generated_tokens"]
        else:
            raise AssertionError("never refused")
        assert "Token budget exceeded: 40 tokens per minute" in r.json()["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # Each answer reserved its prompt plus max_tokens (what it then used, here) as it
        # was admitted; the one that would not fit was refused: never over the budget.
        per_answer = spent // len(left)
        assert left == [40 - per_answer * n for n in range(1, len(left) + 1)]
        assert spent <= 40 < spent + per_answer
        mine = (await client.get("/api/metrics", headers={"X-API-Key": "sk-a"})).json()["client"]
        assert mine["client"] == "team-a"
        assert mine["tokens_per_minute"] == {"used": spent, "limit": 40}
        assert mine["tokens_per_day"] == {"used": spent, "limit": 1000}
        prometheus = (await client.get("/metrics")).text
        assert f'avito_client_tokens_total{{client="team-a"}} {float(spent)}' in prometheus
        refusals = 'avito_client_budget_refusals_total{client="team-a",window="minute"}'
        assert f"{refusals} 1.0" in prometheus  # (an alert rule's signal)
        assert "sk-a" not in prometheus


async def test_logs_name_the_key_never_show_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = isolated_settings(
        api_keys_file=keys_file(tmp_path, "sk-secret-123 name=search\n"),
        rate_limit_per_minute=1000,
    )
    async with running(settings) as (_, client):
        with caplog.at_level("INFO", logger="avito_ai.access"):
            assert (await generate(client, "sk-secret-123")).status_code == 200
            assert (
                await client.post("/api/v1/text/generate", json={"prompt": "x"})
            ).status_code == 401
    lines = [r for r in caplog.records if r.name == "avito_ai.access"]
    assert [getattr(r, "client_name", None) for r in lines] == ["search", "anonymous"]
    assert "sk-secret-123" not in caplog.text
