"""Structured logging with the request id in every line.

The request id lives in a ContextVar set by the request-id middleware. Each request runs
in its own task under uvicorn, so the value never leaks between requests, and every log
line written while a request runs (ours, uvicorn's error log, library warnings) carries it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import threading
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

TEXT_FORMAT = "%(asctime)s [%(levelname)s] [%(request_id)s] %(name)s: %(message)s"
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


# Control characters in a logged value (a URL path with %0a, a prompt with ESC) would forge
# log lines or paint the terminal: they are written as escapes instead.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x85: "\\x85",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def escape_controls(text: str) -> str:
    return text.translate(_CONTROLS)


class Throttled:
    """At most one line per `interval` seconds for a failure that repeats on every request
    (Redis down: 230 lines a second under load said nothing the first one did not). The
    lines left out are counted and the next line says how many."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last = -interval
        self._skipped = 0
        self._lock = threading.Lock()

    def error(self, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval:
                self._skipped += 1
                return
            self._last, skipped, self._skipped = now, self._skipped, 0
        if skipped:
            message += f" ({skipped} more like it in the last {self.interval:g} s)"
        self.logger.error(message, *args)


class TextFormatter(logging.Formatter):
    """The text format, one line per record (a traceback still follows on its own lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": escape_controls(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False, default=str)


class LogFileHandler(logging.handlers.WatchedFileHandler):
    """LOG_FILE that degrades quietly when it cannot be written (a full disk, say): one
    warning on stderr, each line lost counted in `avito_log_write_errors_total`, and a
    note when writing works again. (logging's default printed a 40-line traceback to
    stderr for every line it could not write: 7,327 lines for 200 requests.)"""

    def __init__(self, filename: Path) -> None:
        super().__init__(filename, encoding="utf-8")
        self.failing = False
        self._failed_now = False

    def emit(self, record: logging.LogRecord) -> None:
        self._failed_now = False
        super().emit(record)
        if self.failing and not self._failed_now:
            self.failing = False
            sys.stderr.write(f"avito-ai: LOG_FILE {self.baseFilename} is written again\n")

    def handleError(self, record: logging.LogRecord) -> None:
        from avito_ai.observability.metrics import LOG_WRITE_ERRORS

        self._failed_now = True
        LOG_WRITE_ERRORS.inc()
        if not self.failing:
            self.failing = True
            error = sys.exc_info()[1]
            sys.stderr.write(
                f"avito-ai: cannot write LOG_FILE {self.baseFilename} ({error}); its lines "
                "are lost (counted in avito_log_write_errors_total) until it can be again\n"
            )


def log_file_problem(path: Path | None) -> str | None:
    """A start-up step (cli.checked_settings): open LOG_FILE for appending, its folder made,
    as the handler will, so a path the server cannot write stops it with one line naming
    the variable, not a traceback. None when it can write there (or no LOG_FILE)."""
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        return f"Invalid configuration: LOG_FILE: cannot write {path}: {exc.strerror or exc}"
    return None


def _attach(logger: logging.Logger, fmt: str, log_file: Path | None) -> None:
    """Our handlers (stderr, and LOG_FILE) on `logger`, replacing ours from before."""
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(LogFileHandler(log_file))
    for old in list(logger.handlers):
        if getattr(old, "_avito_ai", False):
            logger.removeHandler(old)
            old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RequestIdFilter())
        handler._avito_ai = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def configure_master_logging(level: str, fmt: str = "text", log_file: Path | None = None) -> None:
    """The gunicorn master logs through gunicorn's own handlers; what the service's code
    logs there (the engine supervisor and its engines' output) gets ours, in our format."""
    for name in ("avito_ai.engine",):
        logger = logging.getLogger(name)
        _attach(logger, fmt, log_file)
        logger.setLevel(level)
        logger.propagate = False


def configure_logging(level: str, fmt: str = "text", log_file: Path | None = None) -> None:
    """Configure the root logger once per process (idempotent: replaces our handlers).

    LOG_FILE uses WatchedFileHandler: when logrotate renames the file, the next line
    reopens the path, so logging keeps working without copytruncate or a restart.
    """
    root = logging.getLogger()
    _attach(root, fmt, log_file)
    root.setLevel(level)
    # uvicorn's and gunicorn's own loggers propagate to ours; we write our own access line.
    for name in ("uvicorn", "uvicorn.error", "gunicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # httpx logs every request at INFO (the remote backend's health probes, every few
    # seconds); its warnings still come through.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn.access", "gunicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = False
