"""What one request brings cannot take the default engine down or stop the process.

Against the session's embedded server (OpenVINO GenAI on SmolLM2, tests/conftest.py):

* a schema `pattern` (what Pydantic's `Field(pattern=...)` writes) is written out as rules
  OpenVINO's older grammar parser reads, and holds the answer, from every door;
* a grammar OpenVINO's compiler would spend minutes on is refused by its own compiler in a
  process apart (engines/openvino/probe.py), while liveness answers and another client's
  stream goes on;

and in process, a step that fails nevertheless fails only its requests: the pipeline is
built again and the engine stays ready. The 135M model answers badly; the patterns hold
because decoding could produce nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from avito_ai.engines.base import EngineState, GenerationRequest, SamplingParams
from avito_ai.errors import ModelUnavailable
from tests.conftest import EMBEDDED_OPEN, isolated_settings
from tests.servers import ServerProcess, dev_server, serving
from tests.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.integration

CODE = "^[A-Z]{3}-[0-9]{2}$"
SCHEMA = {
    "type": "object",
    "properties": {"code": {"type": "string", "pattern": CODE}},
    "required": ["code"],
}
ASK = "Give the product code of a red bicycle as JSON."
# Forty copies of this took the process's liveness away for over six minutes.
FREEZER = "(.|a){1,3000}" * 40


def _ready(server: ServerProcess) -> str:
    health = httpx.get(server.url + "/api/health/ready", timeout=30).json()
    return str(health["models"]["avibe"]["state"])


def _code_from(door: str, server: ServerProcess) -> str:
    """Ask through `door` for an answer held to SCHEMA; return the code it holds."""
    url = server.url
    chat = {"model": "avibe", "messages": [{"role": "user", "content": ASK}], "max_tokens": 40}
    if door == "chat":
        body = {
            **chat,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "c", "schema": SCHEMA},
            },
        }
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        return str(json.loads(r.json()["choices"][0]["message"]["content"])["code"])
    if door == "tool":
        tool = {"type": "function", "function": {"name": "save", "parameters": SCHEMA}}
        body = {**chat, "tools": [tool], "tool_choice": "required"}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        call = r.json()["choices"][0]["message"]["tool_calls"][0]
        return str(json.loads(call["function"]["arguments"])["code"])
    if door == "responses":
        body = {
            "model": "avibe",
            "input": ASK,
            "max_output_tokens": 40,
            "text": {"format": {"type": "json_schema", "name": "c", "schema": SCHEMA}},
        }
        r = httpx.post(url + "/v1/responses", json=body, timeout=120)
        return str(json.loads(r.json()["output"][0]["content"][0]["text"])["code"])
    if door == "messages":
        body = {
            "model": "avibe",
            "max_tokens": 40,
            "messages": [{"role": "user", "content": ASK}],
            "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
        }
        r = httpx.post(url + "/v1/messages", json=body, timeout=120)
        return str(json.loads(r.json()["content"][0]["text"])["code"])
    if door == "native":
        body = {
            "prompt": ASK,
            "max_tokens": 40,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "c", "schema": SCHEMA},
            },
        }
        r = httpx.post(url + "/api/v1/text/generate", json=body, timeout=120)
        return str(json.loads(r.json()["data"]["text"])["code"])
    assert door == "form"
    page = httpx.post(
        url + "/avibe",
        data={"prompt": ASK, "max_tokens": "40", "json_schema": json.dumps(SCHEMA)},
        timeout=120,
    )
    assert page.status_code == 200, page.text[:500]
    found = re.search(
        r"&#34;code&#34;: &#34;([^&]*)&#34;|&quot;code&quot;: &quot;([^&]*)&quot;", page.text
    )
    assert found is not None, page.text[-2000:]
    return found.group(1) or found.group(2)


@pytest.mark.parametrize("door", ["chat", "tool", "responses", "messages", "native", "form"])
def test_a_schema_pattern_holds_the_answer_from_every_door(
    embedded_server: ServerProcess, door: str
) -> None:
    """Pydantic's `Field(pattern=...)`: before, "Rule Regex is not defined" inside the
    engine's step, a bare 500, and every request after it a 503."""
    assert re.fullmatch(CODE, _code_from(door, embedded_server))
    assert _ready(embedded_server) == "ready"


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedded model with a grammar limit of 3 s: the probe gives up on FREEZER after
    8 s of compiling, which a busy machine (the probe runs at a low priority) still gives
    it within the request's time."""
    log = tmp_path_factory.mktemp("strict") / "server.log"
    env = {**EMBEDDED_OPEN, "MAX_BATCH_SIZE": "8", "OPENVINO_GRAMMAR_LIMIT": "3"}
    with serving(dev_server(env, log), 120) as srv:
        yield srv


@pytest.fixture
def stream_beside(strict_server: ServerProcess) -> Iterator[dict[str, Any]]:
    """Another client's stream, running while the test sends its poison."""
    seen: dict[str, Any] = {"chunks": 0, "finish": None, "started": threading.Event()}

    def run() -> None:
        body = {
            "model": "avibe",
            "messages": [{"role": "user", "content": "Tell a long story about the sea."}],
            "max_tokens": 150,
            "stream": True,
            # Greedy: sampled, the 135M model sometimes ends its story before 150 tokens.
            "temperature": 0,
        }
        with httpx.stream(
            "POST", strict_server.url + "/v1/chat/completions", json=body, timeout=300
        ) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                seen["chunks"] += 1
                seen["started"].set()
                for choice in chunk["choices"]:
                    seen["finish"] = choice.get("finish_reason") or seen["finish"]

    thread = threading.Thread(target=run)
    thread.start()
    assert seen["started"].wait(120)
    yield seen
    thread.join(300)


def test_a_grammar_that_would_freeze_the_process_is_refused_while_it_lives(
    strict_server: ServerProcess, stream_beside: dict[str, Any]
) -> None:
    """OpenVINO compiles a grammar inside its step with the GIL held. The probe compiles it
    first in a process of its own and gives up at its time limit: a 400 naming why, while
    liveness answers and the other client's stream goes on to its end."""
    worst = 0.0
    done = threading.Event()

    def watch() -> None:
        nonlocal worst
        while not done.is_set():
            started = time.monotonic()
            httpx.get(strict_server.url + "/api/health/live", timeout=600)
            worst = max(worst, time.monotonic() - started)
            done.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        refused = httpx.post(
            strict_server.url + "/api/v1/text/generate",
            json={
                "prompt": "hi",
                "max_tokens": 5,
                "response_format": {"type": "regex", "regex": FREEZER},
            },
            timeout=600,
        )
    finally:
        done.set()
        watcher.join()
    assert refused.status_code == 400
    assert "too complex" in refused.json()["message"], refused.text
    # Before: over six minutes without an answer. A busy 2-core machine answers a probe in
    # milliseconds; 2 s leaves room for its noise, not for a step compiling the grammar.
    assert worst < 2.0
    assert _ready(strict_server) == "ready"
    # The other client's stream was not touched.
    wait_until(lambda: stream_beside["finish"] is not None, 300, "the stream beside finished")
    assert stream_beside["finish"] == "length"


def test_a_grammar_openvino_cannot_parse_is_refused_in_its_own_words() -> None:
    """The probe is OpenVINO's own parser: `x{2, -1}` (xgrammar 0.2.9's way of writing
    "two or more", which the service rewrites before it sends a grammar) is what the
    older parser inside OpenVINO refuses; the refusal quotes it, the probe carries on."""
    from avito_ai.engines.models import embedded_gguf_path
    from avito_ai.engines.openvino.probe import GrammarProbe
    from avito_ai.errors import ValidationFailed

    async def scenario() -> None:
        probe = GrammarProbe(str(embedded_gguf_path()))
        try:
            with pytest.raises(ValidationFailed, match="OpenVINO cannot use this grammar: EBNF"):
                await probe.check("root ::= [a-z]{2, -1}", 49152, "response_format")
            await probe.check("root ::= [a-z]{2, 2} [a-z]*", 49152, "response_format")
        finally:
            await probe.close()

    asyncio.run(scenario())


def test_a_check_whose_client_left_does_not_answer_the_next_one() -> None:
    """A check cancelled while the probe compiles (its client left, its deadline passed)
    must not leave that grammar's answer behind, to be read as the next grammar's verdict:
    here, an acceptance read for a grammar OpenVINO cannot parse."""
    from avito_ai.engines.models import embedded_gguf_path
    from avito_ai.engines.openvino.probe import GrammarProbe, _cpu_seconds
    from avito_ai.errors import ValidationFailed

    slow = "root ::= " + " | ".join(f'"listing-{i}"' for i in range(20000))

    async def scenario() -> None:
        probe = GrammarProbe(str(embedded_gguf_path()))
        try:
            await probe.check('root ::= "a"', 49152, "response_format")  # started
            process = probe._process
            assert process is not None
            base = _cpu_seconds(process.pid)
            left = asyncio.create_task(probe.check(slow, 49152, "response_format"))
            await wait_until_async(
                lambda: _cpu_seconds(process.pid) > base + 0.1, 60, "the probe compiling"
            )
            left.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await left
            assert left.cancelled()  # it was still compiling: the case under test
            with pytest.raises(ValidationFailed, match="OpenVINO cannot use this grammar"):
                await probe.check("root ::= [a-z]{2, -1}", 49152, "response_format")
        finally:
            await probe.close()

    asyncio.run(scenario())


def test_a_grammar_that_matches_nothing_is_a_400(embedded_server: ServerProcess) -> None:
    r = httpx.post(
        embedded_server.url + "/api/v1/text/generate",
        json={
            "prompt": "hi",
            "max_tokens": 5,
            "response_format": {"type": "grammar", "grammar": "root ::= root"},
        },
        timeout=120,
    )
    assert r.status_code == 400 and "matches no text" in r.json()["message"], r.text


# --------------------------------------------------------------- a step that fails anyway


class _FailingOnce:
    """The real pipeline, whose next step raises once: a fault the probe stands between
    the real pipeline and, so it cannot be made to show otherwise."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self.failed = False

    def step(self) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("Check 'x' failed at sampler.cpp")
        self._pipe.step()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


def test_a_failed_step_fails_its_requests_and_the_engine_rebuilds_its_pipeline() -> None:
    from avito_ai.engines.openvino.engine import OpenVINOTextEngine

    async def scenario() -> None:
        own = isolated_settings(max_batch_size=4)
        engine = OpenVINOTextEngine(
            own.avibe, own.in_process, own.openvino, max_queue_size=own.max_queue_size
        )
        await engine.start()
        assert engine.status().state is EngineState.READY
        engine._pipe = _FailingOnce(engine._pipe)

        def asked(n: int) -> GenerationRequest:
            return GenerationRequest(
                request_id=f"count-{n}",
                prompt=f"Count to {n}:",
                sampling=SamplingParams(max_tokens=8, temperature=0),
            )

        async def answer(request: GenerationRequest) -> str:
            return "".join([c.text async for c in engine.generate(request)])

        with pytest.raises(ModelUnavailable, match="restarted"):
            await answer(asked(3))
        # The next request gets a new pipeline and an answer; the engine is ready throughout
        # what follows, with no server restart.
        assert await answer(asked(4))
        assert engine.status().state is EngineState.READY
        assert not isinstance(engine._pipe, _FailingOnce)
        await engine.stop()

    asyncio.run(scenario())
