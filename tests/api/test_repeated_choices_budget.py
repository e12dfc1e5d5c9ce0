"""n > 1 at temperature 0: one greedy generation given n times. Usage reports n answers'
tokens, and the client's token budget is charged what usage reports (and reserves n times
max_tokens up front, so a burst of such requests cannot overspend it)."""

from __future__ import annotations

from pathlib import Path

from avito_ai.config import Settings
from tests.conftest import isolated_settings

from .conftest import running


def settings(tmp_path: Path, per_minute: int) -> Settings:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"sk-a name=repeat-n tokens_per_minute={per_minute}\n")
    return isolated_settings(api_keys_file=keys, rate_limit_per_minute=1000)


BODY = {
    "model": "avibe",
    "messages": [{"role": "user", "content": "one two three four"}],
    "temperature": 0,
    "n": 3,
    "max_tokens": 8,
}
KEY = {"Authorization": "Bearer sk-a"}


async def test_the_budget_is_charged_what_usage_reports(tmp_path: Path) -> None:
    async with running(settings(tmp_path, 10_000)) as (_, client):
        r = await client.post("/v1/chat/completions", json=BODY, headers=KEY)
        assert r.status_code == 200, r.text
        body = r.json()
        texts = {c["message"]["content"] for c in body["choices"]}
        assert len(body["choices"]) == 3 and len(texts) == 1  # one answer, three times
        usage = body["usage"]
        assert usage["completion_tokens"] > 0
        mine = (await client.get("/api/metrics", headers=KEY)).json()["client"]
        assert mine["tokens_per_minute"]["used"] == usage["total_tokens"]
        prometheus = (await client.get("/metrics")).text
        line = f'avito_client_tokens_total{{client="repeat-n"}} {float(usage["total_tokens"])}'
        assert line in prometheus


async def test_n_answers_reserve_n_times_max_tokens(tmp_path: Path) -> None:
    """What is left of the budget holds one answer's prompt and max_tokens, not three
    answers': the request is refused before it runs (one answer still fits)."""
    async with running(settings(tmp_path, 30)) as (_, client):
        first = await client.post("/v1/chat/completions", json={**BODY, "n": 1}, headers=KEY)
        assert first.status_code == 200 and first.json()["usage"]["total_tokens"] == 10
        r = await client.post("/v1/chat/completions", json=BODY, headers=KEY)  # 5 + 3 x 8
        assert r.status_code == 429, r.text
        assert "Token budget exceeded: 30 tokens per minute" in r.json()["error"]["message"]
        one = await client.post("/v1/chat/completions", json={**BODY, "n": 1}, headers=KEY)
        assert one.status_code == 200, one.text  # 5 + 8 fits the 20 left
