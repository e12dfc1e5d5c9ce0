"""`avito-ai batch FILE.jsonl -o OUT.jsonl`: submit a JSONL file to a running service's
Batch API, show its progress, write the output.

Interrupted (Ctrl+C, a lost connection, a closed laptop) and run again with the same file,
endpoint and service, it reattaches to the same batch instead of starting another: the
batch's id is kept in a small state file named by the hash of those three
(~/.cache/avito-ai/batch-cli/). The service keeps running the batch meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

FINISHED = ("completed", "failed", "expired", "cancelled")
STATE_DIR = Path.home() / ".cache" / "avito-ai" / "batch-cli"
# The batch's metadata names the run (the state file's name): a rerun finds its batch by it.
METADATA_KEY = "avito_ai_batch_cli"


class BatchCommandError(Exception):
    """What went wrong, in one line for the terminal."""


def endpoint_of(path: Path) -> str:
    """The first line's `url` (every line of a batch has the same one)."""
    with path.open("rb") as source:
        for raw in source:
            if raw.strip():
                try:
                    url = json.loads(raw).get("url")
                except (ValueError, AttributeError):
                    break
                if isinstance(url, str):
                    return url
                break
    return "/v1/chat/completions"


def state_path(path: Path, endpoint: str, url: str) -> Path:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    digest.update(f"\n{endpoint}\n{url.rstrip('/')}".encode())
    return STATE_DIR / f"{digest.hexdigest()[:32]}.json"


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        raise BatchCommandError(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {message}"
        )
    body: dict[str, Any] = response.json()
    return body


def run(
    path: Path,
    output: Path,
    *,
    url: str,
    api_key: str | None,
    endpoint: str | None = None,
    poll: float = 1.0,
) -> int:
    """Submit (or reattach), wait with a progress bar, write OUT (and OUT's errors file).
    Returns the exit status: 0 completed, 1 otherwise."""
    endpoint = endpoint or endpoint_of(path)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    state_file = state_path(path, endpoint, url)
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=120) as http:
        batch = _reattach(http, state_file)
        if batch is None:
            batch = _find(http, state_file.stem)  # created, but stopped before noting it
        if batch is None:
            with path.open("rb") as content:
                uploaded = _check(
                    http.post("/v1/files", files={"file": (path.name, content)},
                              data={"purpose": "batch"})
                )  # fmt: skip
            batch = _check(
                http.post(
                    "/v1/batches",
                    json={"input_file_id": uploaded["id"], "endpoint": endpoint,
                          "completion_window": "24h",
                          "metadata": {METADATA_KEY: state_file.stem}},
                )
            )  # fmt: skip
            state_file.parent.mkdir(parents=True, exist_ok=True)
            state_file.write_text(json.dumps({"batch_id": batch["id"], "input": str(path)}))
            print(f"batch {batch['id']} submitted ({endpoint})", file=sys.stderr)
        else:
            print(f"batch {batch['id']} reattached ({batch['status']})", file=sys.stderr)
        batch = _follow(http, batch, poll)
        return _write(http, batch, output, state_file)


def _reattach(http: httpx.Client, state_file: Path) -> dict[str, Any] | None:
    if not state_file.exists():
        return None
    batch_id = json.loads(state_file.read_text()).get("batch_id")
    response = http.get(f"/v1/batches/{batch_id}")
    if response.status_code == 404:  # gone (retention, another database): start again
        state_file.unlink(missing_ok=True)
        return None
    batch = _check(response)
    if batch["status"] in ("failed", "cancelled", "expired"):
        state_file.unlink(missing_ok=True)  # a new run for a batch that cannot go on
        return None
    return batch


def _find(http: httpx.Client, run_key: str) -> dict[str, Any] | None:
    """The batch an earlier run of this command created, found by the run's key in its
    metadata: Ctrl+C can come after the service created it and before the state file was
    written. The newest first, one page of them."""
    response = http.get("/v1/batches", params={"limit": 100})
    if response.status_code >= 400:
        return None
    for batch in response.json().get("data", []):
        if (batch.get("metadata") or {}).get(METADATA_KEY) == run_key and batch["status"] not in (
            "failed",
            "cancelled",
            "expired",
            "cancelling",
        ):
            found: dict[str, Any] = batch
            return found
    return None


def _follow(http: httpx.Client, batch: dict[str, Any], poll: float) -> dict[str, Any]:
    counts = batch["request_counts"]
    with tqdm(
        total=counts["total"] or None, unit="line", file=sys.stderr, dynamic_ncols=True
    ) as bar:
        while True:
            counts = batch["request_counts"]
            if counts["total"] and bar.total != counts["total"]:
                bar.total = counts["total"]
            bar.n = counts["completed"] + counts["failed"]
            bar.set_postfix_str(f"{batch['status']}, {counts['failed']} failed", refresh=True)
            if batch["status"] in FINISHED:
                return batch
            time.sleep(poll)  # polling the service (its batch runs there, not here)
            batch = _check(http.get(f"/v1/batches/{batch['id']}"))


def _write(http: httpx.Client, batch: dict[str, Any], output: Path, state_file: Path) -> int:
    if batch["status"] == "failed":
        for error in (batch.get("errors") or {}).get("data") or []:
            print(f"line {error.get('line')}: {error.get('message')}", file=sys.stderr)
        state_file.unlink(missing_ok=True)
        raise BatchCommandError(f"batch {batch['id']} failed validation")
    written = 0
    with output.open("wb") as out:
        if batch.get("output_file_id"):
            with http.stream("GET", f"/v1/files/{batch['output_file_id']}/content") as response:
                if response.status_code >= 400:
                    response.read()
                    _check(response)
                for part in response.iter_bytes():
                    out.write(part)
                    written += part.count(b"\n")
    errors = output.with_name(output.stem + ".errors" + output.suffix)
    if batch.get("error_file_id"):
        errors.write_bytes(http.get(f"/v1/files/{batch['error_file_id']}/content").content)
    counts = batch["request_counts"]
    print(
        f"batch {batch['id']} {batch['status']}: {counts['completed']} done, {counts['failed']} "
        f"failed; {output}" + (f", errors in {errors}" if batch.get("error_file_id") else ""),
        file=sys.stderr,
    )
    state_file.unlink(missing_ok=True)
    return 0 if batch["status"] == "completed" else 1
