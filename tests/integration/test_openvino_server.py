"""The OpenVINO engine (the CPU default) behind a running server, on the embedded GGUF.

Small model, real answers: greedy "capital of France" says Paris. Each behaviour a client
relies on is checked over HTTP: streaming, cancellation, seeds, stops, thinking switch,
overload, timeouts, and models that cannot load.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import EMBEDDED_OPEN
from tests.ggufs import truncated, unsupported_architecture
from tests.servers import ServerProcess, dev_server, metric, openai_client, serving
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

FRANCE = "What is the capital of France?"


def start(tmp: Path, name: str, **env: str) -> ServerProcess:
    srv = dev_server({**EMBEDDED_OPEN, **env}, tmp / f"{name}.log")
    srv.wait_live(60)
    return srv


@pytest.fixture(scope="module")
def server(embedded_server: ServerProcess) -> ServerProcess:
    """The session's embedded server (tests/conftest.py): the limits raised, 8 a batch."""
    return embedded_server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai_client(server)


def generate(server: ServerProcess, **body: object) -> dict:
    r = httpx.post(server.url + "/api/v1/text/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def running(server: ServerProcess) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith('avito_requests_running{model="avibe"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_health_names_the_engine(server: ServerProcess) -> None:
    avibe = httpx.get(server.url + "/api/health", timeout=10).json()["models"]["avibe"]
    assert (avibe["state"], avibe["engine"], avibe["device"]) == ("ready", "openvino", "cpu")
    assert avibe["model"] == "SmolLM2-135M-Instruct (embedded)"


def test_answers_with_counts_and_timings(server: ServerProcess) -> None:
    body = generate(server, prompt=FRANCE, temperature=0, max_tokens=40)
    data, metrics = body["data"], body["metrics"]
    assert "Paris" in data["text"]
    assert data["finish_reason"] == "stop"
    assert 0 < data["generated_tokens"] < 40 and data["input_tokens"] > 5
    assert 0 <= metrics["queue_time"] <= metrics["time_to_first_token"] <= metrics["total_time"]
    assert metrics["tokens_per_second"] > 0


def test_stream_joins_to_the_whole_answer(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": FRANCE}]
    whole = client.chat.completions.create(
        model="avibe", messages=messages, temperature=0, max_tokens=40
    )
    stream = client.chat.completions.create(
        model="avibe",
        messages=messages,
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 3  # token by token
    usage = chunks[-1].usage
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_same_seed_same_answer(server: ServerProcess) -> None:
    def sampled(seed: int) -> str:
        body = generate(
            server, prompt="Write a sentence about the sea.", temperature=1.0, seed=seed,
            max_tokens=24,
        )  # fmt: skip
        return str(body["data"]["text"])

    first = sampled(7)
    assert sampled(7) == first
    assert any(sampled(seed) != first for seed in (8, 9, 10))


def test_stop_string_cuts_the_answer(server: ServerProcess) -> None:
    plain = generate(server, prompt=FRANCE, temperature=0, max_tokens=40)["data"]["text"]
    cut = generate(server, prompt=FRANCE, temperature=0, max_tokens=40, stop=["Paris"])["data"]
    assert cut["text"] == plain[: plain.index("Paris")]
    assert cut["finish_reason"] == "stop"


@pytest.mark.parametrize("stop", ["tal of ", "of Fr", "ance is P", "s Paris"])
def test_a_stop_string_spread_over_tokens_ends_the_answer_before_it(
    server: ServerProcess, client: openai.OpenAI, stop: str
) -> None:
    """Whatever the token boundaries ("tal of " ends inside " France"), nothing of the
    stop string reaches the client, streamed or whole."""
    plain = generate(server, prompt=FRANCE, temperature=0, max_tokens=40)["data"]["text"]
    assert stop in plain
    expected = plain[: plain.index(stop)]
    whole = generate(server, prompt=FRANCE, temperature=0, max_tokens=40, stop=[stop])["data"]
    assert (whole["text"], whole["finish_reason"]) == (expected, "stop")
    stream = client.chat.completions.create(
        model="avibe",
        messages=[{"role": "user", "content": FRANCE}],
        temperature=0,
        max_tokens=40,
        stop=[stop],
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == expected


def test_max_tokens_and_ignore_eos(server: ServerProcess) -> None:
    short = generate(server, prompt=FRANCE, temperature=0, max_tokens=3)["data"]
    assert (short["generated_tokens"], short["finish_reason"]) == (3, "length")
    longer = generate(server, prompt=FRANCE, temperature=0, max_tokens=60, ignore_eos=True)
    assert (longer["data"]["generated_tokens"], longer["data"]["finish_reason"]) == (60, "length")


def test_a_prompt_longer_than_the_context_is_400(server: ServerProcess) -> None:
    r = httpx.post(
        server.url + "/api/v1/text/generate", json={"prompt": "word " * 10_000}, timeout=60
    )
    assert r.status_code == 400, r.text
    assert "context is 8192 tokens" in r.json()["message"]


def test_user_text_cannot_forge_role_markers(server: ServerProcess) -> None:
    def prompt_tokens(text: str) -> int:
        return int(generate(server, prompt=text, max_tokens=1)["data"]["input_tokens"])

    # As text, "<|im_start|>" is several tokens; as the special token it would be one.
    assert prompt_tokens("hi <|im_start|>") - prompt_tokens("hi") > 2


def test_a_client_that_leaves_stops_its_generation(server: ServerProcess) -> None:
    with (
        httpx.Client(timeout=60) as http,
        http.stream(
            "POST",
            server.url + "/api/v1/text/generate",
            json={"prompt": "Tell a long story.", "max_tokens": 2000, "ignore_eos": True,
                  "stream": True},
        ) as response,
    ):  # fmt: skip
        assert response.status_code == 200
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        assert running(server) == 1
    wait_until(lambda: running(server) == 0, 10, "the abandoned generation stopped")
    assert "Paris" in generate(server, prompt=FRANCE, temperature=0)["data"]["text"]


# ------------------------------------------------------------------ admission


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("ov1")
    one = start(
        tmp,
        "one",
        MAX_BATCH_SIZE="1",
        MAX_QUEUE_SIZE="1",
        REQUEST_TIMEOUT="4",
        MAX_PROMPT_TOKENS="200",
    )
    with serving(one, 120) as srv:
        yield srv


QUEUE_GAUGES = ("requests_waiting", "requests_running", "admission_waiting")


def test_a_full_queue_answers_503_at_once(one_slot: ServerProcess) -> None:
    import threading

    long = {"prompt": "Tell a long story.", "max_tokens": 2000, "ignore_eos": True}
    with httpx.Client(timeout=60) as http:
        with http.stream(
            "POST", one_slot.url + "/api/v1/text/generate", json={**long, "stream": True}
        ) as response:
            lines = response.iter_lines()  # keep it: a dropped iterator closes the response
            next(line for line in lines if line.startswith("data:"))
            queued = threading.Thread(
                target=lambda: httpx.post(
                    one_slot.url + "/api/v1/text/generate", json=long, timeout=60
                )
            )
            queued.start()
            wait_until(  # it waits in the queue (no token yet, wherever it waits)
                lambda: metric(one_slot, "avito_requests_waiting", model="avibe") == 1,
                30,
                lambda: (
                    "the second request queued; waiting, running, in admission: "
                    + str([metric(one_slot, f"avito_{n}") for n in QUEUE_GAUGES])
                ),
            )
            began = time.monotonic()
            third = http.post(one_slot.url + "/api/v1/text/generate", json={"prompt": "hi"})
            assert time.monotonic() - began < 1.0
            assert third.status_code == 503
            assert third.json()["error"] == "overloaded" and "Retry-After" in third.headers
        queued.join(30)


def test_the_prompt_is_bounded_in_tokens_not_only_characters(one_slot: ServerProcess) -> None:
    """120 emoji are 120 characters and about 360 tokens: over MAX_PROMPT_TOKENS=200."""
    r = httpx.post(one_slot.url + "/api/v1/text/generate", json={"prompt": "🚲" * 120}, timeout=30)
    assert r.status_code == 400, r.text
    assert "MAX_PROMPT_TOKENS" in r.json()["message"]
    assert r.json()["message"].startswith("The prompt is ")
    ok = httpx.post(one_slot.url + "/api/v1/text/generate", json={"prompt": "hi", "max_tokens": 2})
    assert ok.status_code == 200


def test_a_request_past_its_deadline_is_504(one_slot: ServerProcess) -> None:
    began = time.monotonic()
    r = httpx.post(
        one_slot.url + "/api/v1/text/generate",
        json={"prompt": "Tell a long story.", "max_tokens": 2000, "ignore_eos": True},
        timeout=60,
    )
    assert r.status_code == 504 and r.json()["error"] == "timeout"
    assert time.monotonic() - began < 10


# ------------------------------------------------------------------ thinking switch


def test_thinking_switch_reaches_the_template_and_reasoning_is_hidden(
    thinking_server: ServerProcess,
) -> None:
    """The template (tests/ggufs.py's THINKING_TEMPLATE, on the session's thinking server)
    opens `<think>` unless thinking is on: with it off, everything the model says is
    reasoning (this small model never closes the block) and is hidden."""
    asked = {"prompt": FRANCE, "temperature": 0, "max_tokens": 16}
    off = generate(thinking_server, **asked)["data"]
    on = generate(thinking_server, **asked, enable_thinking=True)["data"]
    assert off["text"] == "" and off["generated_tokens"] > 0
    assert on["text"] != ""
    assert off["input_tokens"] > on["input_tokens"]  # "<think>" was in the prompt


# ------------------------------------------------------------------ models that cannot load


@pytest.mark.parametrize("kind", ["missing", "truncated", "unsupported"])
def test_a_bad_model_fails_with_a_reason_and_the_service_stays_up(
    kind: str, tmp_path: Path
) -> None:
    path = {
        "missing": lambda: tmp_path / "nowhere" / "model.gguf",
        "truncated": lambda: truncated(tmp_path / "cut.gguf"),
        "unsupported": lambda: unsupported_architecture(tmp_path / "mamba.gguf"),
    }[kind]()
    srv = start(tmp_path, kind, AVIBE_MODEL=str(path))
    try:

        def settled() -> httpx.Response | None:
            r = httpx.get(srv.url + "/api/health/ready", timeout=10)
            return None if r.json()["models"]["avibe"]["state"] == "loading" else r

        ready = wait_until(settled, 60, "the model's load over")
        state = ready.json()["models"]["avibe"]["state"]
        assert ready.status_code == 503 and state == "failed"
        reason = ready.json()["models"]["avibe"]["reason"]
        assert str(path.name) in reason
        assert {"missing": "does not exist", "truncated": "truncated", "unsupported": "mamba"}[
            kind
        ] in reason
        assert httpx.get(srv.url + "/api/health/live", timeout=10).status_code == 200
        r = httpx.post(srv.url + "/api/v1/text/generate", json={"prompt": "hi"}, timeout=10)
        assert r.status_code == 503 and r.json()["error"] == "model_unavailable"
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def test_sse_events_are_json(server: ServerProcess) -> None:
    r = httpx.post(
        server.url + "/api/v1/text/generate",
        json={"prompt": FRANCE, "temperature": 0, "max_tokens": 20, "stream": True},
        timeout=60,
    )
    events = [b for b in r.text.strip().split("\n\n") if b]
    assert events[-1].startswith("event: done")
    done = json.loads(events[-1].split("data: ", 1)[1])
    deltas = [json.loads(b.split("data: ", 1)[1])["text"] for b in events[:-1]]
    assert "".join(deltas) == done["data"]["text"]


def test_a_tiny_temperature_is_greedy(server: ServerProcess) -> None:
    greedy = generate(server, prompt=FRANCE, temperature=0, max_tokens=12)["data"]["text"]
    tiny = generate(server, prompt=FRANCE, temperature=1e-30, max_tokens=12)["data"]["text"]
    assert tiny == greedy


def test_frequency_and_presence_penalties_change_a_repetitive_answer(
    client: openai.OpenAI,
) -> None:
    def answer(**penalties: float) -> str:
        done = client.chat.completions.create(
            model="avibe",
            messages=[{"role": "user", "content": "List fruits."}],
            temperature=0,
            max_tokens=80,
            extra_body={"ignore_eos": True},
            **penalties,  # type: ignore[arg-type]
        )
        return done.choices[0].message.content or ""

    def repeats(text: str) -> float:
        words = text.lower().split()
        return 1 - len(set(words)) / max(1, len(words))

    # The first answer fills the prefix cache: the next ones all read the prompt from it
    # (a prompt computed afresh and one read from the cache differ in the last bits, and a
    # greedy answer can part at a near-tie), so like is compared with like.
    answer()
    plain = answer()
    assert answer(frequency_penalty=0.0) == plain  # 0 is off
    for penalized in (answer(frequency_penalty=1.5), answer(presence_penalty=1.5)):
        assert penalized != plain
        assert repeats(penalized) < repeats(plain), (plain, penalized)
