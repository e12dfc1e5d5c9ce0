"""The original specification's JSON "application" view, derived from the Prometheus counters.

Prometheus is the one source of truth, so gunicorn workers agree: under
PROMETHEUS_MULTIPROC_DIR every worker reads every worker's samples. A reset does not touch
the counters (they stay monotonic for Prometheus); it stores the current totals as a
baseline, in that shared folder, so every worker subtracts the same baseline.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

# Probes, scrapes and assets are not "application" requests.
UNCOUNTED_ROUTES = frozenset(
    {
        "/metrics",
        "/api/metrics",
        "/api/metrics/reset",
        "/api/health/live",
        "/api/health/ready",
        "/api/health/models",
        "/api/metrics/dashboard",
        "/static",
    }
)
BASELINE_FILE = "avito_metrics_baseline.json"


def multiproc_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def collect() -> Iterable[Metric]:
    directory = multiproc_dir()
    if directory is None:
        return REGISTRY.collect()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry.collect()


def prometheus_text() -> bytes:
    directory = multiproc_dir()
    if directory is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return generate_latest(registry)


@dataclass
class Totals:
    total_requests: float = 0
    successful_requests: float = 0
    failed_requests: float = 0
    rate_limited_requests: float = 0
    latency_sum: float = 0
    latency_count: float = 0
    avibe_requests: float = 0
    avision_requests: float = 0
    total_tokens_generated: float = 0

    def minus(self, other: Totals) -> Totals:
        mine, theirs = asdict(self), asdict(other)
        return Totals(**{k: max(0.0, mine[k] - theirs[k]) for k in mine})


def current_totals() -> Totals:
    """The application's requests as /api/metrics counts them: a 429 (a rate limit or
    token budget said no) was not served, so it is neither a success nor a failure, only
    counted apart; the original specification's own rate-limit example would otherwise
    read as a failing service."""
    t = Totals()
    for metric in collect():
        for sample in metric.samples:
            labels, value = sample.labels, sample.value
            route = labels.get("route")
            if sample.name == "avito_http_requests_total" and route not in UNCOUNTED_ROUTES:
                status = int(labels.get("status", "500"))
                if status == 429:  # refused by a limit: not served, so neither outcome
                    t.rate_limited_requests += value
                    continue
                t.total_requests += value
                if status < 400:
                    t.successful_requests += value
                else:
                    t.failed_requests += value
            elif route in UNCOUNTED_ROUTES:
                continue
            elif sample.name == "avito_http_request_duration_seconds_sum":
                t.latency_sum += value
            elif sample.name == "avito_http_request_duration_seconds_count":
                t.latency_count += value
            elif sample.name == "avito_model_requests_total":
                if labels.get("model") == "avibe":
                    t.avibe_requests += value
                elif labels.get("model") == "avision":
                    t.avision_requests += value
            elif sample.name == "avito_generation_tokens_total":
                t.total_tokens_generated += value
    return t


class Baseline:
    """Where the reset point lives: a file shared by workers, or memory for one process."""

    def __init__(self) -> None:
        self._memory = Totals()

    def _path(self) -> Path | None:
        directory = multiproc_dir()
        return directory / BASELINE_FILE if directory else None

    def load(self) -> Totals:
        path = self._path()
        if path is None:
            return self._memory
        try:
            return Totals(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return Totals()

    def store(self, totals: Totals) -> None:
        path = self._path()
        if path is None:
            self._memory = totals
            return
        # Atomic replace: a worker reading meanwhile sees the old or the new file, whole.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".baseline-")
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(totals), fh)
        os.replace(tmp, path)


def application_view(baseline: Baseline) -> dict[str, object]:
    t = current_totals().minus(baseline.load())
    rate = 100.0 * t.successful_requests / t.total_requests if t.total_requests else 100.0
    avg = t.latency_sum / t.latency_count if t.latency_count else 0.0
    return {
        "total_requests": int(t.total_requests),
        "successful_requests": int(t.successful_requests),
        "failed_requests": int(t.failed_requests),
        "success_rate": f"{rate:.2f}%",
        "rate_limited_requests": int(t.rate_limited_requests),
        "avibe_requests": int(t.avibe_requests),
        "avision_requests": int(t.avision_requests),
        "avg_response_time": f"{avg:.3f}s",
        "total_tokens_generated": int(t.total_tokens_generated),
    }


# ---------------------------------------------------------------- the live dashboard

_BUCKETS = {
    "avito_e2e_request_latency_seconds_bucket": "latency",
    "avito_time_to_first_token_seconds_bucket": "ttft",
}


def dashboard_totals() -> dict[str, Any]:
    """Cumulative figures of all workers at this instant, for /dashboard: it polls them and
    draws rates and percentiles from the differences between two readings (as Prometheus'
    rate() and histogram_quantile() do), so the server keeps no history and a reset or a
    worker restart costs one point at most.

    requests, errors by status: HTTP requests to the application (probes, scrapes and static
    files left out); latency, ttft: generation end-to-end and time-to-first-token histograms
    as cumulative bucket counts by upper bound; tokens: generated tokens; running, waiting:
    generations now; cancelled: generations that ended because the client went away;
    batch: Batch API lines waiting and running now, done and failed so far (lines/s from
    their differences)."""
    requests = 0.0
    tokens = 0.0
    cancelled = 0.0
    running = 0.0
    waiting = 0.0
    errors: dict[str, float] = {}
    batch = {"waiting": 0.0, "running": 0.0, "done": 0.0, "failed": 0.0}
    buckets: dict[str, dict[str, float]] = {"latency": {}, "ttft": {}}
    for metric in collect():
        for sample in metric.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "avito_http_requests_total":
                if labels.get("route") in UNCOUNTED_ROUTES:
                    continue
                requests += value
                if int(labels.get("status", "500")) >= 400:
                    errors[labels["status"]] = errors.get(labels["status"], 0.0) + value
            elif name in _BUCKETS:
                series = buckets[_BUCKETS[name]]
                series[labels["le"]] = series.get(labels["le"], 0.0) + value
            elif name == "avito_generation_tokens_total":
                tokens += value
            elif (
                name == "avito_model_requests_total" and labels.get("finish_reason") == "cancelled"
            ):
                cancelled += value
            elif name == "avito_requests_running":
                running += value
            elif name == "avito_requests_waiting":
                waiting += value
            elif name == "avito_batch_lines_total" and labels.get("outcome") in batch:
                batch[labels["outcome"]] += value
            elif name == "avito_batch_lines_running":
                batch["running"] += value
            elif name == "avito_batch_lines_waiting":  # the database's figure: the latest read
                batch["waiting"] = max(batch["waiting"], value)
    return {
        "requests": int(requests),
        "errors": {status: int(count) for status, count in sorted(errors.items())},
        "latency": _histogram(buckets["latency"]),
        "ttft": _histogram(buckets["ttft"]),
        "tokens": int(tokens),
        "cancelled": int(cancelled),
        "running": int(running),
        "waiting": int(waiting),
        "batch": {name: int(value) for name, value in batch.items()},
    }


def _histogram(by_bound: dict[str, float]) -> dict[str, Any]:
    """{"le": finite upper bounds ascending, "counts": cumulative counts at them, "total":
    the count of all (the +Inf bucket; JSON has no infinity)}."""
    finite = sorted((float(le), count) for le, count in by_bound.items() if le != "+Inf")
    return {
        "le": [le for le, _ in finite],
        "counts": [int(count) for _, count in finite],
        "total": int(by_bound.get("+Inf", 0.0)),
    }


# ---------------------------------------------------------------- engine processes

_ENGINE_GAUGES = {
    "running": ("avito_engine_requests_running", "Requests the engine process is running"),
    "waiting": ("avito_engine_requests_waiting", "Requests waiting inside the engine process"),
    "kv_cache_usage": ("avito_engine_kv_cache_usage", "KV-cache use of the engine (0-1)"),
    "spec_acceptance_rate": (
        "avito_engine_spec_acceptance_rate",
        "Draft tokens accepted / drafted (vLLM, EAGLE-3), since the engine started",
    ),
    "spec_accept_length": (
        "avito_engine_spec_accept_length",
        "Mean tokens accepted per speculative step (SGLang)",
    ),
    "restarts": ("avito_engine_restarts", "Times the engine process was restarted"),
}


def engine_metrics_text(views: dict[str, dict[str, Any]]) -> bytes:
    """The engine processes' key figures (read from their own /metrics by the workers)
    as Prometheus gauges, labelled by model role and engine; `avito_engine_up` is 1 while
    the engine is ready."""
    if not views:
        return b""
    from prometheus_client.core import GaugeMetricFamily

    families = {
        key: GaugeMetricFamily(name, doc, labels=["model", "engine"])
        for key, (name, doc) in _ENGINE_GAUGES.items()
    }
    up = GaugeMetricFamily(
        "avito_engine_up", "1 while the engine process is ready", labels=["model", "engine"]
    )
    for role, view in views.items():
        labels = [role, str(view.get("engine"))]
        up.add_metric(labels, 1.0 if view.get("state") == "ready" else 0.0)
        for key, family in families.items():
            value = view.get(key)
            if isinstance(value, int | float):
                family.add_metric(labels, float(value))

    class _Engines:
        def collect(self) -> Iterable[Metric]:
            yield up
            yield from (f for f in families.values() if f.samples)

    registry = CollectorRegistry()
    registry.register(_Engines())
    return generate_latest(registry)


def live_metrics_text(models: Mapping[str, tuple[str, str]], gpus: list[dict[str, float]]) -> bytes:
    """What this worker knows at the scrape: each model's readiness (`models`: role ->
    (state, engine)) and each GPU's memory and utilization (NVML)."""
    from prometheus_client.core import GaugeMetricFamily

    ready = GaugeMetricFamily(
        "avito_model_ready",
        "1 while the model answers (its engine ready)",
        labels=["model", "engine"],
    )
    for role, (state, engine) in models.items():
        if state != "not_configured":
            ready.add_metric([role, engine], 1.0 if state == "ready" else 0.0)
    families = [ready]
    if gpus:
        used = GaugeMetricFamily(
            "avito_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"]
        )
        total = GaugeMetricFamily(
            "avito_gpu_memory_total_bytes", "GPU memory (NVML)", labels=["gpu"]
        )
        busy = GaugeMetricFamily(
            "avito_gpu_utilization_ratio", "GPU busy time, 0 to 1 (NVML)", labels=["gpu"]
        )
        for gpu in gpus:
            label = [str(int(gpu["index"]))]
            used.add_metric(label, gpu["used"])
            total.add_metric(label, gpu["total"])
            busy.add_metric(label, gpu["utilization"])
        families += [used, total, busy]

    class _Live:
        def collect(self) -> Iterable[Metric]:
            yield from families

    registry = CollectorRegistry()
    registry.register(_Live())
    return generate_latest(registry)
