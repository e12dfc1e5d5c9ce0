"""Prometheus metrics: the one source of truth for counters (the JSON view derives from it).

Under gunicorn set PROMETHEUS_MULTIPROC_DIR (gunicorn_config.py does): every worker writes
its samples there and any worker can aggregate all of them for a scrape.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5)

HTTP_REQUESTS = Counter(
    "avito_http_requests_total", "HTTP requests by route and status", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "avito_http_request_duration_seconds",
    "HTTP request duration by route",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
MODEL_REQUESTS = Counter(
    "avito_model_requests_total",
    "Generations by model role and finish reason",
    ["model", "finish_reason"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "avito_time_to_first_token_seconds", "Time to first token", ["model"], buckets=LATENCY_BUCKETS
)
INTER_TOKEN_LATENCY = Histogram(
    "avito_inter_token_latency_seconds",
    "Mean time between generated tokens of a request",
    ["model"],
    buckets=TOKEN_LATENCY_BUCKETS,
)
E2E_LATENCY = Histogram(
    "avito_e2e_request_latency_seconds",
    "Generation end-to-end latency (queue + generation)",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_TIME = Histogram(
    "avito_request_queue_time_seconds",
    "Time waiting in the queue",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter("avito_prompt_tokens_total", "Prompt tokens processed", ["model"])
GENERATION_TOKENS = Counter("avito_generation_tokens_total", "Tokens generated", ["model"])
REQUESTS_RUNNING = Gauge(
    "avito_requests_running", "Generations in progress", ["model"], multiprocess_mode="livesum"
)
REQUESTS_WAITING = Gauge(
    "avito_requests_waiting",
    "Generations submitted that have not produced a token yet (queued or in prefill)",
    ["model"],
    multiprocess_mode="livesum",
)
REJECTIONS = Counter(
    "avito_rejections_total",
    "Requests refused, by reason (rate_limit, overload, validation, ...)",
    ["reason"],
)
CLIENT_TOKENS = Counter(
    "avito_client_tokens_total",
    "Tokens used (prompt + generated) by client: an API key's name, or anonymous",
    ["client"],
)
RATE_LIMIT_STORAGE_ERRORS = Counter(
    "avito_rate_limit_storage_errors_total",
    "Rate-limit checks that could not reach the storage (e.g. Redis down)",
)
CONFIG_RELOAD_FAILURES = Counter(
    "avito_config_reload_failures_total",
    "HUP reloads refused because the new configuration (settings, API_KEYS_FILE) is invalid",
)
LOG_WRITE_ERRORS = Counter(
    "avito_log_write_errors_total",
    "Log lines LOG_FILE could not take (a full disk, say): lost, never a failed request",
)
ADMISSION_WAITING = Gauge(
    "avito_admission_waiting",
    "Requests waiting for a place in a model's fair queue (all workers)",
    ["model"],
    multiprocess_mode="livesum",
)
QUEUE_CAPACITY = Gauge(
    "avito_queue_capacity",
    "Requests a model's fair queue holds (MAX_QUEUE_SIZE per worker, all workers)",
    ["model"],
    multiprocess_mode="livesum",
)
BUDGET_REFUSALS = Counter(
    "avito_client_budget_refusals_total",
    "Generations refused because the client's token budget for a window was spent",
    ["client", "window"],
)

# --- Batch API (avito_ai/batches/runner.py)
BATCH_LINES = Counter(
    "avito_batch_lines_total", "Batch lines finished, by outcome (done, failed)", ["outcome"]
)
BATCH_LINES_RUNNING = Gauge(
    "avito_batch_lines_running", "Batch lines running now", multiprocess_mode="livesum"
)
BATCH_LINES_WAITING = Gauge(
    "avito_batch_lines_waiting",
    "Lines of unfinished batches not yet run (the whole database, as one process last read it)",
    multiprocess_mode="livemax",
)
BATCH_STORE_ERRORS = Counter(
    "avito_batch_store_errors_total",
    "Batch database operations that failed (database away: batches pause, online traffic goes on)",
)
