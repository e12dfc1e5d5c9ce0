"""Reading JSONL: an upload checked as it arrives, and a batch's lines validated whole
before any runs, with the online API's own request models."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from avito_ai.errors import PayloadTooLarge, ValidationFailed
from avito_ai.services.validation import validation_failed

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
MAX_ERRORS = 1000  # errors.data entries kept for one batch


@dataclass
class UploadCheck:
    """Fed an upload's bytes in order: counts bytes and lines, checks each line is a JSON
    object no longer than the bound, and says which line is not (1-based, as editors do)."""

    max_bytes: int
    max_lines: int
    max_line_bytes: int
    size: int = 0
    lines: int = 0
    _partial: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(
                f"File is over {self.max_bytes} bytes (BATCH_MAX_FILE_BYTES)", param="file"
            )
        self._partial += data
        *whole, rest = bytes(self._partial).split(b"\n")
        for line in whole:
            self._line(line)
        self._partial = bytearray(rest)
        if len(self._partial) > self.max_line_bytes:
            self._too_long()

    def finish(self) -> None:
        if self._partial.strip():
            self._line(bytes(self._partial))
        if not self.lines:
            raise ValidationFailed(
                "File has no lines: a batch file is JSONL, one request a line", param="file"
            )

    def _too_long(self) -> None:
        raise ValidationFailed(
            f"Line {self.lines + 1} is over {self.max_line_bytes} bytes (BATCH_MAX_LINE_BYTES)",
            param="file",
        )

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        if len(line) > self.max_line_bytes:
            self._too_long()
        self.lines += 1
        if self.lines > self.max_lines:
            raise ValidationFailed(
                f"File has more than {self.max_lines} lines (BATCH_MAX_LINES)", param="file"
            )
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise ValidationFailed(
                f"Invalid file format for Batch API: line {self.lines} is not JSON ({exc}); "
                "a batch file is JSONL, one JSON object a line",
                param="file",
            ) from None
        if not isinstance(value, dict):
            raise ValidationFailed(
                f"Invalid file format for Batch API: line {self.lines} is not a JSON object",
                param="file",
            )


def batch_error(line: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "line": line, "message": message, "param": param}


def validate_lines(
    content: bytes, endpoint: str, models: Mapping[str, type[BaseModel]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows for batch_lines, errors.data): every line checked, every problem named by its
    line; rows are only used when there is no error."""
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    model = models[endpoint]
    number = 0
    for raw in content.split(b"\n"):
        if not raw.strip():
            continue
        number += 1
        problem = _check(raw, number, endpoint, model, seen)
        if isinstance(problem, dict):
            if len(errors) < MAX_ERRORS:
                errors.append(problem)
            continue
        custom_id, body = problem
        rows.append(
            {
                "line_no": number,
                "custom_id": custom_id,
                "body": json.dumps(body, ensure_ascii=False),
                "status": "pending",
                "not_before": 0.0,
                "attempts": 0,
            }
        )
    if not number:
        errors.append(batch_error(0, "empty_file", "The input file has no lines"))
    return rows, errors


def _check(
    raw: bytes, number: int, endpoint: str, model: type[BaseModel], seen: dict[str, int]
) -> dict[str, Any] | tuple[str, dict[str, Any]]:
    try:
        line = json.loads(raw)
    except ValueError as exc:
        return batch_error(number, "invalid_json_line", f"Line {number} is not JSON: {exc}")
    if not isinstance(line, dict):
        return batch_error(number, "invalid_json_line", f"Line {number} is not a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return batch_error(
            number,
            "missing_required_parameter",
            "custom_id must be a non-empty string",
            "custom_id",
        )
    if custom_id in seen:
        return batch_error(
            number,
            "duplicate_custom_id",
            f"custom_id {custom_id!r} is also on line {seen[custom_id]}: each must be unique",
            "custom_id",
        )
    seen[custom_id] = number
    if line.get("method", "POST") != "POST":
        return batch_error(number, "invalid_method", "method must be POST", "method")
    if line.get("url") != endpoint:
        return batch_error(
            number,
            "mismatched_url",
            f"url {line.get('url')!r} is not the batch's endpoint {endpoint}",
            "url",
        )
    body = line.get("body")
    if not isinstance(body, dict):
        return batch_error(number, "invalid_request", "body must be a JSON object", "body")
    if body.get("stream"):
        return batch_error(
            number, "invalid_request", "stream: true is not supported in a batch", "body.stream"
        )
    try:
        model.model_validate(body)
    except ValidationError as exc:
        refused = validation_failed(exc.errors())
        param = f"body.{refused.param}" if refused.param else "body"
        return batch_error(number, "invalid_request", refused.message, param)
    return custom_id, body
