"""OpenAI's Batch API on the embedded model (and the tiny A-Vision IR), through the
official `openai` SDK: files.create → batches.create → poll → files.content for each
endpoint, structured-output, tool and image lines; a cancel mid-way; validation that names
lines; bad input in OpenAI's error shape; API keys keeping files and batches apart."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.images import encoded
from tests.integration.batch_helpers import (
    chat_line,
    jsonl,
    lines_of,
    run_batch,
    start_batch,
    upload,
    wait_completed,
    wait_finished,
)
from tests.servers import ServerProcess, dev_server, serving
from tests.tiny_vision_ir import TINY_VISION_IR

pytestmark = pytest.mark.integration

KEY, OTHER = "sk-batch-owner", "sk-batch-other"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedded SmolLM2 (default OpenVINO backend) and the tiny A-Vision IR; the batches
    in an SQLite file of this module's own; two API keys; a small file bound (to refuse)."""
    folder = tmp_path_factory.mktemp("batches")
    env = {
        "RATE_LIMIT_PER_MINUTE": "100000",
        "RATE_LIMIT_PER_HOUR": "100000",
        "MAX_BATCH_SIZE": "8",
        "AVISION_MODEL": str(TINY_VISION_IR),
        "API_KEYS": f"{KEY},{OTHER}",
        "BATCH_DATABASE_URL": f"sqlite:///{folder / 'batches.sqlite3'}",
        "BATCH_MAX_FILE_BYTES": str(256 * 1024),
        "BATCH_LINES_IN_FLIGHT": "4",
    }
    with serving(dev_server(env, folder / "server.log"), 180) as ready:
        yield ready


def sdk(srv: ServerProcess, key: str = KEY) -> openai.OpenAI:
    # (the SDK's own retries: a poll may meet a keep-alive connection the server closed)
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=2)


LISTING = {
    "name": "listing",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 20}},
        "required": ["title"],
        "additionalProperties": False,
    },
}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
        },
    },
}


def image_uri() -> str:
    return "data:image/png;base64," + base64.b64encode(encoded(size=(64, 48))).decode()


def test_chat_lines_plain_structured_tools_and_images(server: ServerProcess) -> None:
    client = sdk(server)
    lines = [
        chat_line("plain", "What is the capital of France?", max_tokens=8),
        chat_line(
            "structured", "Name a bicycle listing.", max_tokens=40,
            response_format={"type": "json_schema", "json_schema": LISTING},
        ),
        chat_line(
            "tool", "Weather in Paris?", max_tokens=40, tools=[TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        ),
        {
            "custom_id": "image",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "avision",
                "max_tokens": 4,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": image_uri()}},
                    {"type": "text", "text": "What is in the picture?"},
                ]}],
            },
        },
    ]  # fmt: skip
    batch = run_batch(client, lines, "/v1/chat/completions")
    assert batch.status == "completed", batch
    assert batch.request_counts.total == 4 and batch.request_counts.completed == 4
    assert batch.request_counts.failed == 0 and batch.error_file_id is None
    assert batch.usage is not None and batch.usage.output_tokens > 0
    out = {line["custom_id"]: line for line in lines_of(client, batch.output_file_id)}
    assert sorted(out) == ["image", "plain", "structured", "tool"]
    for line in out.values():
        assert line["error"] is None and line["id"].startswith("batch_req_")
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
        assert line["response"]["body"]["object"] == "chat.completion"
    structured = out["structured"]["response"]["body"]["choices"][0]["message"]["content"]
    assert isinstance(json.loads(structured)["title"], str)
    call = out["tool"]["response"]["body"]["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    assert out["image"]["response"]["body"]["model"] == "avision"


def test_completions_and_responses_endpoints(server: ServerProcess) -> None:
    client = sdk(server)
    completions = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
         "body": {"model": "avibe", "prompt": f"Count to {i}:", "max_tokens": 4}}
        for i in range(3)
    ]  # fmt: skip
    batch = run_batch(client, completions, "/v1/completions")
    assert (batch.status, batch.request_counts.completed) == ("completed", 3)
    out = lines_of(client, batch.output_file_id)
    assert sorted(line["custom_id"] for line in out) == ["c0", "c1", "c2"]
    assert all(line["response"]["body"]["object"] == "text_completion" for line in out)

    responses = [
        {"custom_id": "r0", "method": "POST", "url": "/v1/responses",
         "body": {"model": "avibe", "input": "Say hi.", "max_output_tokens": 16}},
        {"custom_id": "r1", "method": "POST", "url": "/v1/responses",
         "body": {"model": "avibe", "input": "Name a colour.", "max_output_tokens": 16,
                  "text": {"format": {"type": "json_schema", **LISTING}}}},
    ]  # fmt: skip
    batch = run_batch(client, responses, "/v1/responses")
    assert (batch.status, batch.request_counts.completed) == ("completed", 2), batch
    out = {line["custom_id"]: line for line in lines_of(client, batch.output_file_id)}
    assert out["r0"]["response"]["body"]["object"] == "response"
    assert batch.usage is not None and batch.usage.input_tokens > 0


def test_a_refused_line_goes_to_the_error_file_and_the_batch_goes_on(server: ServerProcess) -> None:
    client = sdk(server)
    lines = [chat_line("ok"), chat_line("unknown-model", model="gpt-nope"), chat_line("ok2")]
    batch = run_batch(client, lines, "/v1/chat/completions")
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    errors = lines_of(client, batch.error_file_id)
    assert [e["custom_id"] for e in errors] == ["unknown-model"]
    assert errors[0]["response"]["status_code"] == 404
    assert errors[0]["response"]["body"]["error"]["type"] == "not_found_error"
    assert sorted(o["custom_id"] for o in lines_of(client, batch.output_file_id)) == ["ok", "ok2"]


def test_validation_failures_name_each_line(server: ServerProcess) -> None:
    client = sdk(server)
    lines = [
        chat_line("a"),
        chat_line("a"),  # duplicate
        {**chat_line("b"), "url": "/v1/completions"},
        chat_line("c", stream=True),
        {**chat_line("d"), "body": {"model": "avibe", "max_tokens": 4}},  # no messages
        chat_line("e", temperature=7),
    ]
    batch = run_batch(client, lines, "/v1/chat/completions")
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.request_counts.completed == 0 and batch.output_file_id is None
    assert batch.errors is not None and batch.errors.data is not None
    by_line = {e.line: e for e in batch.errors.data}
    assert sorted(by_line) == [2, 3, 4, 5, 6]
    assert by_line[2].code == "duplicate_custom_id" and "line 1" in (by_line[2].message or "")
    assert by_line[3].code == "mismatched_url" and by_line[3].param == "url"
    assert by_line[4].param == "body.stream"
    assert by_line[5].param == "body.messages"
    assert by_line[6].param == "body.temperature"


def test_cancel_mid_way_keeps_what_finished(server: ServerProcess) -> None:
    client = sdk(server)
    lines = [chat_line(f"l{i}", f"Tell me about the number {i}.", max_tokens=8) for i in range(30)]
    batch = start_batch(client, lines)
    wait_completed(client, batch.id, 1, 120)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_finished(client, batch.id, 60)
    assert done.status == "cancelled" and done.cancelled_at is not None
    out = lines_of(client, done.output_file_id)
    errors = lines_of(client, done.error_file_id)
    assert 1 <= len(out) < 30
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    ids = [line["custom_id"] for line in out + errors]
    assert sorted(ids) == sorted(f"l{i}" for i in range(30))  # each exactly once
    with pytest.raises(openai.ConflictError) as refused:
        client.batches.cancel(batch.id)
    assert "cancelled" in refused.value.message


def test_bad_input_gets_openais_error_shape(server: ServerProcess) -> None:
    client = sdk(server)
    with pytest.raises(openai.BadRequestError) as not_jsonl:
        client.files.create(file=("x.jsonl", b'{"a": 1}\nnot json\n'), purpose="batch")
    assert "line 2" in not_jsonl.value.message and not_jsonl.value.param == "file"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("x.jsonl", jsonl([chat_line("a")])), purpose="fine-tune")
    assert purpose.value.param == "purpose"  # type: ignore[attr-defined]
    with pytest.raises(openai.APIStatusError) as too_big:
        client.files.create(
            file=("big.jsonl", jsonl([chat_line("a", "x" * 300_000)])), purpose="batch"
        )
    assert too_big.value.status_code == 413
    assert too_big.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_unknown")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-unknown")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-unknown", endpoint="/v1/chat/completions", completion_window="24h"
        )
    source = upload(client, [chat_line("a")])
    with pytest.raises(openai.BadRequestError) as endpoint:
        client.batches.create(
            input_file_id=source.id,
            endpoint="/v1/embeddings",
            completion_window="24h",  # type: ignore[arg-type]
        )
    assert endpoint.value.param == "endpoint"  # type: ignore[attr-defined]
    batch = wait_finished(
        client,
        client.batches.create(
            input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id,
    )
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)
    missing_key = httpx.get(server.url + "/v1/batches")
    assert missing_key.status_code == 401
    assert missing_key.json()["error"]["type"] == "authentication_error"


def test_a_key_sees_only_its_own_files_and_batches(server: ServerProcess) -> None:
    mine, theirs = sdk(server), sdk(server, OTHER)
    source = upload(mine, [chat_line("a")])
    batch = mine.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for call in (
        lambda: theirs.files.retrieve(source.id),
        lambda: theirs.files.content(source.id),
        lambda: theirs.files.delete(source.id),
        lambda: theirs.batches.retrieve(batch.id),
        lambda: theirs.batches.cancel(batch.id),
        lambda: theirs.batches.create(
            input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert source.id not in [f.id for f in theirs.files.list()]
    assert batch.id not in [b.id for b in theirs.batches.list()]
    assert batch.id in [b.id for b in mine.batches.list()]
    assert source.id in [f.id for f in mine.files.list()]
    assert mine.files.content(source.id).content == jsonl([chat_line("a")])
    wait_finished(mine, batch.id)
    deleted = mine.files.delete(source.id)
    assert deleted.deleted and deleted.id == source.id
    with pytest.raises(openai.NotFoundError):
        mine.files.retrieve(source.id)


def test_metrics_count_batch_lines(server: ServerProcess) -> None:
    client = sdk(server)
    batch = run_batch(client, [chat_line("m0"), chat_line("m1")], "/v1/chat/completions")
    assert batch.status == "completed"
    text = httpx.get(server.url + "/metrics").text
    done = [
        line
        for line in text.splitlines()
        if line.startswith('avito_batch_lines_total{outcome="done"}')
    ]
    assert done and float(done[0].split()[-1]) >= 2
    assert "avito_batch_lines_waiting" in text and "avito_batch_lines_running" in text
