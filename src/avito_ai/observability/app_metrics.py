"""The seed's JSON "application" view, derived from the Prometheus counters.

Prometheus is the one source of truth, so gunicorn workers agree: under
PROMETHEUS_MULTIPROC_DIR every worker reads every worker's samples. A reset does not touch
the counters (they stay monotonic for Prometheus); it stores the current totals as a
baseline, in that shared folder, so every worker subtracts the same baseline.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

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
    latency_sum: float = 0
    latency_count: float = 0
    avibe_requests: float = 0
    avision_requests: float = 0
    total_tokens_generated: float = 0

    def minus(self, other: Totals) -> Totals:
        mine, theirs = asdict(self), asdict(other)
        return Totals(**{k: max(0.0, mine[k] - theirs[k]) for k in mine})


def current_totals() -> Totals:
    t = Totals()
    for metric in collect():
        for sample in metric.samples:
            labels, value = sample.labels, sample.value
            route = labels.get("route")
            if sample.name == "avito_http_requests_total" and route not in UNCOUNTED_ROUTES:
                t.total_requests += value
                if int(labels.get("status", "500")) < 400:
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
        "avibe_requests": int(t.avibe_requests),
        "avision_requests": int(t.avision_requests),
        "avg_response_time": f"{avg:.3f}s",
        "total_tokens_generated": int(t.total_tokens_generated),
    }
