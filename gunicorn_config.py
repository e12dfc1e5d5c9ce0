"""Gunicorn production configuration: `gunicorn -c gunicorn_config.py app_production:app`.

Values come from the service's own settings (environment over `.env`, see `.env.example`).
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from avito_ai.cli import settings_or_exit
from avito_ai.gunicorn_worker import guard_reloads, remember

# The same loader as the app (environment over .env, validated): a bad value stops the
# master with one line naming the variable, before any worker starts.
_settings = settings_or_exit()
# What every worker forked from now on serves with (app_production.py), keys included.
remember(_settings)
# A HUP whose new configuration is invalid is refused (logged, counted); the master and
# its workers go on serving the current one.
guard_reloads()

bind = _settings.gunicorn_bind or f"{_settings.host}:{_settings.port}"

# One worker by default: every worker loads its own copy of the models, and one GPU holds
# one copy. Concurrency comes from batching inside the worker, not from more workers.
workers = _settings.web_concurrency
worker_class = "avito_ai.gunicorn_worker.AvitoUvicornWorker"

# The worker heartbeat runs on the event loop, which generation never blocks, so `timeout`
# only has to cover start-up; model weights load in the background after it.
timeout = _settings.gunicorn_timeout
# SIGTERM/HUP: in-flight requests (long generations, streams) get this long to finish.
graceful_timeout = int(_settings.graceful_timeout)
# An idle keep-alive connection is closed after this long. Longer than the idle timeouts of
# the balancers in front (AWS ALB 60 s, nginx's upstream keepalive_timeout 60 s): the side
# that closes an idle connection first must be the client's, or a request it sends as the
# server closes is lost (a POST is not retried). Clients keep their own idle expiry below it.
keepalive = 75
# Per worker: open connections plus running requests before uvicorn answers 503.
worker_connections = _settings.max_connections

# Same setting as the dev server: X-Forwarded-For is trusted only from these peers.
forwarded_allow_ips = _settings.forwarded_allow_ips

# The application writes one access line per request itself (with the request id).
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()

# Prometheus multiprocess mode: every worker writes its samples to this folder, so any
# worker answers /metrics and /api/metrics with the totals of all of them.
# (Exported to os.environ: prometheus_client reads it there, in every worker.)
_OWN_METRICS_PREFIX = "avito-ai-metrics-"  # a folder made here, removed at exit
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(
    _settings.prometheus_multiproc_dir or tempfile.mkdtemp(prefix=_OWN_METRICS_PREFIX)
)


def on_starting(server: Any) -> None:
    """A fresh master starts from zero: samples left by a previous run would add up.
    Engine processes (AVIBE_BACKEND=vllm|sglang|command) start here, in the master, once:
    one engine per host however many workers, and a HUP reload (which re-reads this file
    but does not call this hook) keeps them running."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    from avito_ai.engines.process.supervisor import start_engine_processes
    from avito_ai.observability.logging import configure_master_logging

    configure_master_logging(_settings.log_level, _settings.log_format, _settings.log_file)
    # Before any worker is forked: workers read their engines' states in that folder.
    folder = start_engine_processes(_settings.engines)
    if folder is not None:
        remember(_settings.with_engine_state_dir(folder))


def post_worker_init(worker: Any) -> None:
    """The worker has imported the app: what is alive now lives as long as the worker, so
    the collector stops walking it (gc.freeze), and collects young objects less often (a
    streamed event allocates a few dozen, all freed by reference counting)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


GC_GEN0_THRESHOLD = 10_000


def on_exit(server: Any) -> None:
    """After the workers drained and exited: stop the engines (SIGTERM, then SIGKILL), and
    remove the metrics folder if this file made it (one given by the setting stays)."""
    from avito_ai.engines.process.supervisor import stop_engine_processes

    stop_engine_processes()
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if folder.name.startswith(_OWN_METRICS_PREFIX) and folder.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(folder, ignore_errors=True)


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges (running requests) must stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
