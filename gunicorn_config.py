"""Gunicorn production configuration: `gunicorn -c gunicorn_config.py app_production:app`.

Values come from the environment (the service's own variable names where they exist).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

# The app reads .env itself; the server settings below come from the same file, with the
# environment taking precedence, so `gunicorn -c gunicorn_config.py` and the app agree.
_env = {k: v for k, v in {**dotenv_values(".env"), **os.environ}.items() if v}


def _get(name: str, default: str) -> str:
    return _env.get(name) or default


bind = _get("GUNICORN_BIND", f"{_get('HOST', '0.0.0.0')}:{_get('PORT', '8085')}")

# One worker by default: every worker loads its own copy of the models, and one GPU holds
# one copy. Concurrency comes from batching inside the worker, not from more workers.
workers = int(_get("WEB_CONCURRENCY", "1"))
worker_class = "avito_ai.gunicorn_worker.AvitoUvicornWorker"

# The worker heartbeat runs on the event loop, which generation never blocks, so `timeout`
# only has to cover start-up; model weights load in the background after it.
timeout = int(_get("GUNICORN_TIMEOUT", "120"))
# SIGTERM/HUP: in-flight requests (long generations, streams) get this long to finish.
graceful_timeout = int(float(_get("GRACEFUL_TIMEOUT", "30")))
keepalive = 5

# Same setting as the dev server: X-Forwarded-For is trusted only from these peers.
forwarded_allow_ips = _get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# The application writes one access line per request itself (with the request id).
accesslog = None
errorlog = "-"
loglevel = _get("LOG_LEVEL", "info").lower()

# Prometheus multiprocess mode: every worker writes its samples to this folder, so any
# worker answers /metrics and /api/metrics with the totals of all of them.
# (Exported to os.environ: prometheus_client reads it there, in every worker.)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _env.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
    prefix="avito-ai-metrics-"
)


def on_starting(server: Any) -> None:
    """A fresh master starts from zero: samples left by a previous run would add up."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges (running requests) must stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
