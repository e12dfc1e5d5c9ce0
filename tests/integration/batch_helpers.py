"""Shared by the Batch API tests: JSONL lines, the SDK's loop, and reading outputs."""

from __future__ import annotations

import io
import json
from typing import Any

from tests.waiting import wait_until

FINISHED = ("completed", "failed", "expired", "cancelled")


def chat_line(custom_id: str, content: str = "Say hello.", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "avibe",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 4,
            "temperature": 0,
            **body,
        },
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def upload(client: Any, lines: list[dict[str, Any]], name: str = "input.jsonl") -> Any:
    return client.files.create(file=(name, io.BytesIO(jsonl(lines))), purpose="batch")


def start_batch(
    client: Any, lines: list[dict[str, Any]], endpoint: str = "/v1/chat/completions"
) -> Any:
    """files.create → batches.create: the batch as created."""
    source = upload(client, lines)
    return client.batches.create(
        input_file_id=source.id, endpoint=endpoint, completion_window="24h"
    )


def run_batch(client: Any, lines: list[dict[str, Any]], endpoint: str, timeout: float = 240) -> Any:
    """files.create → batches.create → poll until finished: the SDK user's loop."""
    return wait_finished(client, start_batch(client, lines, endpoint).id, timeout)


def wait_completed(client: Any, batch_id: str, count: int, timeout: float = 120) -> None:
    """Until at least `count` of the batch's lines completed."""
    wait_until(
        lambda: client.batches.retrieve(batch_id).request_counts.completed >= count,
        timeout,
        f"{count} lines of batch {batch_id} finished",
        interval=0.2,
    )


def wait_finished(client: Any, batch_id: str, timeout: float = 240) -> Any:
    return wait_until(
        lambda: (b := client.batches.retrieve(batch_id)).status in FINISHED and b,
        timeout,
        f"batch {batch_id} finished",
        interval=0.3,
    )


def lines_of(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]
