"""A-Vision on OpenVINO GenAI, on the tiny Qwen2.5-VL IR (tests/data, tests/tiny_vision_ir.py).

In process: batching (images of different sizes and budgets, each answer as it is alone),
parity with the transformers engine, the prompt-token count, cancellation, deadlines, the
thinking switch, constraints, image checks. Behind a running server (AVISION_BACKEND=auto
on the IR folder): answers streamed and whole, concurrent requests running together on the
gauge, a client leaving, structured output, the light install (no torch), a broken model.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from avito_ai.engines.base import (
    ChatMessage,
    Chunk,
    EngineState,
    GenerationRequest,
    ImagePart,
    OutputConstraint,
    SamplingParams,
    TextPart,
)
from avito_ai.engines.openvino.vision import OpenVINOVisionEngine
from avito_ai.errors import Timeout, ValidationFailed
from tests.conftest import isolated_settings
from tests.images import encoded
from tests.servers import ServerProcess, dev_server, openai_client, serving
from tests.tiny_vision_ir import TINY_VISION_IR, truncated, with_thinking_template
from tests.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.integration

IR = str(TINY_VISION_IR)
SIZES = [(96, 64), (40, 200), (300, 300), (64, 64)]  # 6, 7, 9 and 4 image tokens
OPEN = {
    "RATE_LIMIT_PER_MINUTE": "100000",
    "RATE_LIMIT_PER_HOUR": "100000",
    "MAX_TOKENS_AVISION": "4000",
    "MAX_BATCH_SIZE": "8",
}


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Noise, the same for the same seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    return Image.fromarray(pixels)


def ask(
    *sizes: tuple[int, int], text: str = "Что на фото?", deadline: float | None = None, **s: Any
) -> GenerationRequest:
    s.setdefault("max_tokens", 12)
    parts = [ImagePart(picture(size, i)) for i, size in enumerate(sizes or [SIZES[0]])]
    return GenerationRequest(
        request_id="r",
        sampling=SamplingParams(**s),
        messages=[ChatMessage("user", (*parts, TextPart(text)))],
        deadline=deadline,
    )


async def collect(engine: Any, request: GenerationRequest) -> tuple[str, Chunk]:
    deltas: list[str] = []
    async for chunk in engine.generate(request):
        if chunk.is_final:
            return "".join(deltas), chunk
        deltas.append(chunk.text)
    raise AssertionError("no final chunk")


async def started(model: str, **settings: Any) -> OpenVINOVisionEngine:
    own = isolated_settings(avision_model=model, **settings)
    engine = OpenVINOVisionEngine(
        own.avision, own.in_process, own.openvino, max_queue_size=own.max_queue_size
    )
    await engine.start()
    return engine


@pytest_asyncio.fixture(scope="module")
async def engine() -> AsyncIterator[OpenVINOVisionEngine]:
    loaded = await started(IR, max_batch_size=8)
    assert loaded.status().state is EngineState.READY, loaded.status().reason
    yield loaded
    await loaded.stop()


# ------------------------------------------------------------------ in process


async def test_a_batch_of_different_images_answers_each_as_alone(
    engine: OpenVINOVisionEngine,
) -> None:
    budgets = [5, 17, 9, 30]
    requests = [
        ask(size, max_tokens=n, ignore_eos=True) for size, n in zip(SIZES, budgets, strict=True)
    ]
    alone = [await collect(engine, r) for r in requests]
    together = await asyncio.gather(*(collect(engine, r) for r in requests))
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert [f.generated_tokens for _, f in together] == budgets
    assert {f.finish_reason for _, f in together} == {"length"}
    # The prompt's tokens as the model counts them: 66 of text, then 6, 7, 9 and 4 of image.
    assert [f.input_tokens for _, f in together] == [72, 73, 75, 70]


async def test_answers_match_the_transformers_engine(tmp_path: Path) -> None:
    """The IR is the tiny checkpoint exported: greedy, both engines say the same."""
    pytest.importorskip("torch")
    from avito_ai.engines.transformers.vision import TransformersVisionEngine
    from tests.tiny_vision_models import build_tiny_qwen2_5_vl

    checkpoint = build_tiny_qwen2_5_vl(tmp_path / "checkpoint", seed=0)
    ours = await started(IR)
    other = isolated_settings(avision_model=str(checkpoint), device="cpu", dtype="float32")
    theirs = TransformersVisionEngine(
        other.avision, other.in_process, max_queue_size=other.max_queue_size
    )
    await theirs.start()
    try:
        for sizes in ([(84, 56)], [(112, 112), (56, 84)]):  # as they are: no resizing
            request = ask(*sizes, max_tokens=8, ignore_eos=True)
            (text, final), (expected, reference) = (
                await collect(ours, request),
                await collect(theirs, request),
            )
            # (The random model writes stray UTF-8 bytes, which the two detokenizers show
            # apart: one "\ufffd" each, or none at the very end.)
            assert text.rstrip("\ufffd") == expected.rstrip("\ufffd")
            assert final.input_tokens == reference.input_tokens
    finally:
        await ours.stop()
        await theirs.stop()


async def test_closing_the_stream_frees_its_place_within_a_step(
    engine: OpenVINOVisionEngine,
) -> None:
    stream = engine.generate(ask(max_tokens=3000, ignore_eos=True))
    await anext(stream)
    assert engine.active_count == 1
    await stream.aclose()
    await wait_until_async(lambda: engine.active_count == 0, 5, "its place free")


async def test_a_deadline_ends_the_request(engine: OpenVINOVisionEngine) -> None:
    request = ask(max_tokens=3000, ignore_eos=True, deadline=time.monotonic() + 0.3)
    with pytest.raises(Timeout):
        await collect(engine, request)


async def test_seeds_stops_and_a_regex_on_an_image_request(engine: OpenVINOVisionEngine) -> None:
    def sampled(seed: int) -> GenerationRequest:
        return ask(max_tokens=12, temperature=1.0, seed=seed)

    first = (await collect(engine, sampled(7)))[0]
    assert (await collect(engine, sampled(7)))[0] == first
    assert any([(await collect(engine, sampled(s)))[0] != first for s in (8, 9, 10)])
    plain = (await collect(engine, ask(max_tokens=20, ignore_eos=True)))[0]
    stop = plain[5:8]
    cut, final = await collect(engine, ask(max_tokens=20, ignore_eos=True, stop=(stop,)))
    assert cut == plain[: plain.index(stop)] and final.finish_reason == "stop"
    constraint = OutputConstraint("regex", 'root ::= ("cat" | "dog") " " [0-9] [0-9]')
    request = dataclasses.replace(ask(max_tokens=20), constraint=constraint)
    text, final = await collect(engine, request)
    assert re.fullmatch(r"(cat|dog) \d\d", text), text


async def test_the_thinking_switch_reaches_the_template(tmp_path: Path) -> None:
    """A template that opens `<think>` unless thinking is on: off, all is hidden reasoning."""
    thinking = await started(str(with_thinking_template(tmp_path / "think")))
    try:
        hidden, off = await collect(thinking, ask(max_tokens=10, ignore_eos=True))
        request = dataclasses.replace(ask(max_tokens=10, ignore_eos=True), enable_thinking=True)
        shown, on = await collect(thinking, request)
        assert (hidden, off.generated_tokens) == ("", 10) and shown != ""
        assert (off.input_tokens or 0) > (on.input_tokens or 0)  # "<think>" was in the prompt
    finally:
        await thinking.stop()


async def test_image_checks(engine: OpenVINOVisionEngine) -> None:
    with pytest.raises(ValidationFailed, match="AVISION_MAX_IMAGES"):
        await collect(engine, ask(*[SIZES[0]] * 5))
    with pytest.raises(ValidationFailed, match="200 times"):
        await collect(engine, ask((6000, 20)))
    _, final = await collect(engine, ask((5, 5), max_tokens=4, ignore_eos=True))
    assert final.generated_tokens == 4  # grown to the model's smallest
    # A client's text cannot name an image (OpenVINO GenAI's tag): it stays text.
    forged = await collect(engine, ask(text="<ov_genai_image_0> <|vision_start|>", max_tokens=4))
    assert forged[1].finish_reason is not None


async def test_a_truncated_ir_fails_with_a_reason(tmp_path: Path) -> None:
    broken = await started(str(truncated(tmp_path / "cut-model")))
    status = broken.status()
    assert status.state is EngineState.FAILED and status.reason is not None
    assert "cut-model" in status.reason and "Incorrect weights in bin file" in status.reason
    assert "make export-avision" in status.reason


# ------------------------------------------------------------------ behind a server


def data_uri(size: tuple[int, int] = (64, 48), color: str = "red") -> str:
    return "data:image/png;base64," + base64.b64encode(encoded("PNG", size, color)).decode()


def running(server: ServerProcess) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith('avito_requests_running{model="avision"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def analyze(server: ServerProcess, **body: Any) -> dict[str, Any]:
    body.setdefault("image", data_uri())
    r = httpx.post(server.url + "/api/v1/image/analyze", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return dict(r.json())


LIGHT = """
import importlib.util, os, sys
HEAVY = {"torch", "torchvision", "transformers", "tokenizers", "accelerate"}
LOG = os.environ["LIGHT_INSTALL_LOG"]
open(LOG, "a").write(f"pid {os.getpid()}\\n")
real = importlib.util.find_spec
importlib.util.find_spec = lambda n, *a, **k: None if n.split(".")[0] in HEAVY else real(n, *a, **k)
class LightInstall:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            open(LOG, "a").write(f"refused {name}\\n")
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, LightInstall())
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The light install's server: `make serve`'s environment has no torch nor transformers,
    and a sitecustomize makes them unimportable in this server process
    (AVISION_BACKEND=auto on the IR folder)."""
    folder = tmp_path_factory.mktemp("ov-vision")
    (folder / "sitecustomize.py").write_text(LIGHT)
    env = {
        **OPEN,
        "AVISION_MODEL": IR,
        "PYTHONPATH": str(folder),
        "LIGHT_INSTALL_LOG": str(folder / "imports.log"),
    }
    with serving(dev_server(env, folder / "server.log"), 120) as ready:
        yield ready


def test_auto_serves_the_ir_on_openvino(server: ServerProcess) -> None:
    models = httpx.get(server.url + "/api/health", timeout=10).json()["models"]
    avision = models["avision"]
    assert (avision["state"], avision["engine"], avision["device"]) == ("ready", "openvino", "cpu")
    assert avision["model"] == TINY_VISION_IR.name and models["avibe"]["state"] == "ready"


def test_image_answers_whole_and_streamed(server: ServerProcess) -> None:
    whole = analyze(server, prompt="Что на фото?", temperature=0, max_tokens=16)["data"]
    assert whole["text"] and whole["generated_tokens"] == 16 and whole["input_tokens"] > 10
    r = httpx.post(
        server.url + "/api/v1/image/analyze",
        json={"image": data_uri(), "prompt": "Что на фото?", "temperature": 0,
              "max_tokens": 16, "stream": True},
        timeout=60,
    )  # fmt: skip
    events = [b for b in r.text.strip().split("\n\n") if b]
    deltas = [json.loads(b.split("data: ", 1)[1])["text"] for b in events[:-1]]
    assert len(deltas) > 3 and "".join(deltas) == whole["text"]
    client = openai_client(server)
    content = [{"type": "image_url", "image_url": {"url": data_uri()}},
               {"type": "text", "text": "Что на фото?"}]  # fmt: skip
    messages = [{"role": "user", "content": content}]
    done = client.chat.completions.create(
        model="avision", messages=messages, temperature=0, max_tokens=16
    )
    stream = client.chat.completions.create(
        model="avision", messages=messages, temperature=0, max_tokens=16, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == done.choices[0].message.content == whole["text"]


def test_concurrent_image_requests_run_together_and_a_client_can_leave(
    server: ServerProcess,
) -> None:
    long = {"prompt": "Опишите", "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as http:
        streams = [
            http.stream("POST", server.url + "/api/v1/image/analyze",
                        json={**long, "image": data_uri((48 + 16 * i, 64), color)})
            for i, color in enumerate(("red", "green", "blue"))
        ]  # fmt: skip
        responses = [s.__enter__() for s in streams]
        try:
            lines = [r.iter_lines() for r in responses]
            for it in lines:
                next(line for line in it if line.startswith("data:"))
            assert running(server) == 3  # all three in the batch at once
        finally:
            for s in streams:
                s.__exit__(None, None, None)
    wait_until(lambda: running(server) == 0, 10, "the closed streams stopped")
    assert analyze(server, max_tokens=2)["data"]["generated_tokens"] == 2


def test_structured_output_on_image_requests(server: ServerProcess) -> None:
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "green"]},
              "sold": {"type": "boolean"}}, "required": ["color", "sold"]}  # fmt: skip
    done = openai_client(server).chat.completions.create(
        model="avision",
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri()}},
            {"type": "text", "text": "JSON"}]}],
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )  # fmt: skip
    answer = json.loads(done.choices[0].message.content or "")
    assert answer["color"] in ("red", "green") and isinstance(answer["sold"], bool)
    regex = {"type": "regex", "regex": "(cat|dog) [0-9]{3}"}
    text = analyze(server, max_tokens=20, response_format=regex)["data"]["text"]
    assert re.fullmatch(r"(cat|dog) \d{3}", text), text


def test_a_pattern_holds_and_a_freezing_regex_is_refused_on_image_requests(
    server: ServerProcess,
) -> None:
    """A-Vision's step compiled grammars too: a `pattern` ended the worker ("Rule Regex is
    not defined"), a costly regex froze the process. Now the first holds, the second is a
    400 from OpenVINO's own compiler in its process apart, and A-Vision stays ready."""
    sku = {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"}
    schema = {"type": "object", "properties": {"sku": sku}, "required": ["sku"]}
    done = analyze(
        server,
        max_tokens=30,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    assert re.fullmatch("[A-Z]{2}[0-9]{3}", json.loads(done["data"]["text"])["sku"])
    refused = httpx.post(
        server.url + "/api/v1/image/analyze",
        json={"image": data_uri(), "max_tokens": 5,
              "response_format": {"type": "regex", "regex": "(.|a){1,3000}" * 40}},
        timeout=300,
    )  # fmt: skip
    assert refused.status_code == 400 and "too complex" in refused.text
    models = httpx.get(server.url + "/api/health", timeout=10).json()["models"]
    assert models["avision"]["state"] == "ready"


def test_the_light_install_serves_a_vision_from_the_ir(server: ServerProcess) -> None:
    """Every answer of this module's server came from a process where torch, transformers
    and tokenizers could not be imported (its optional probes, such as apache-tvm-ffi's for
    torch, were refused, as on the light install)."""
    assert analyze(server, max_tokens=8, ignore_eos=True)["data"]["generated_tokens"] == 8
    log = (server.log_path.parent / "imports.log").read_text().splitlines()
    assert f"pid {server.proc.pid}" in log


def test_a_broken_ir_fails_a_vision_and_a_vibe_keeps_serving(tmp_path: Path) -> None:
    folder = truncated(tmp_path / "broken-avision")
    env = {**OPEN, "AVISION_MODEL": str(folder), "AVISION_BACKEND": "openvino"}
    srv = dev_server(env, tmp_path / "broken.log")
    try:
        srv.wait_live(60)

        def settled() -> dict[str, Any] | None:
            models = httpx.get(srv.url + "/api/health/ready", timeout=10).json()["models"]
            vision_loaded = models["avision"]["state"] != "loading"
            return models if vision_loaded and models["avibe"]["state"] == "ready" else None

        # (120 s: A-Vibe's load, as the session's embedded server is given; before, 60 s
        # here and A-Vibe's first answer another 60)
        ready = wait_until(settled, 120, "A-Vision's load over, A-Vibe ready")
        avision = ready["avision"]
        assert avision["state"] == "failed" and "broken-avision" in avision["reason"]
        assert "export" in avision["reason"]
        r = httpx.post(srv.url + "/api/v1/image/analyze", json={"image": data_uri()}, timeout=10)
        assert r.status_code == 503 and r.json()["error"] == "model_unavailable"
        text = httpx.post(
            srv.url + "/api/v1/text/generate", json={"prompt": "hi", "max_tokens": 4}, timeout=60
        )
        assert text.status_code == 200 and srv.proc.poll() is None
    finally:
        srv.stop()


def test_huge_images_cost_memory_by_the_models_size_not_the_files(server: ServerProcess) -> None:
    """Four 1-bit 6300x6300 PNGs (about 26 kB of JSON) a request, six requests at once:
    before, the process went from 0.5 to 4.3 GB and stayed at 3.2 GB (full-size RGB copies
    held while waiting). Decoded straight to the model's budget, a request holds four
    images of AVISION_MAX_PIXELS; the decode pool's two workers hold at most two files'
    pixels at a time."""
    import base64
    import io
    from concurrent.futures import ThreadPoolExecutor

    import psutil
    from PIL import Image, ImageDraw

    sheet = Image.new("1", (6300, 6300), 1)
    ImageDraw.Draw(sheet).rectangle((1000, 1000, 5000, 5000), fill=0)
    buffer = io.BytesIO()
    sheet.save(buffer, "PNG", optimize=True)
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [*([{"type": "image_url", "image_url": {"url": uri}}] * 4),
               {"type": "text", "text": "What is on these?"}]  # fmt: skip
    body = {"model": "avision", "messages": [{"role": "user", "content": content}],
            "max_tokens": 4}  # fmt: skip
    process = psutil.Process(server.proc.pid)
    before = process.memory_info().rss
    peak = before
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(
                lambda _: httpx.post(server.url + "/v1/chat/completions", json=body, timeout=300),
                range(6),
            ))  # fmt: skip
    finally:
        done.set()
        watcher.join()
    assert [a.status_code for a in answers] == [200] * 6, answers[0].text
    after = process.memory_info().rss
    grown, kept = (peak - before) / 2**30, (after - before) / 2**30
    assert grown < 1.0, f"peak +{grown:.2f} GB"  # before: +3.8 GB
    assert kept < 0.5, f"kept +{kept:.2f} GB"  # before: +2.7 GB
