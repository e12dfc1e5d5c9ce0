"""Gunicorn production configuration: `gunicorn -c gunicorn_config.py app_production:app`.

Every value can be overridden from the environment (same names as the service's settings).
"""

from __future__ import annotations

import os

_host = os.environ.get("HOST", "0.0.0.0")
_port = os.environ.get("PORT", "8085")
bind = os.environ.get("GUNICORN_BIND", f"{_host}:{_port}")

# One worker by default: each worker loads its own copy of the models, and one GPU holds
# one copy. Concurrency comes from batching inside the worker, not from more workers.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = "avito_ai.gunicorn_worker.AvitoUvicornWorker"

# Generations can be long; the worker heartbeat is async, so a long request does not
# trip `timeout`, but model loading at boot can take minutes.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "600"))
graceful_timeout = int(float(os.environ.get("GRACEFUL_TIMEOUT", "30")))
keepalive = 5

forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# The application writes one access line per request itself (with the request id).
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
capture_output = False
