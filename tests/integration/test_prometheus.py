"""A real Prometheus (Debian's package; `make test` installs it) scraping the service under
gunicorn with two workers every second, asked through its HTTP API with the Grafana
dashboard's own expressions, read from deploy/grafana-dashboard.json: a metric renamed in
the service and not in the dashboard fails here. The alert rules (deploy/prometheus/
alerts.yml) are loaded too, and must evaluate on the real samples without an error."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.servers import ROOT, ServerProcess, free_port, gunicorn_server
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

DEPLOY = ROOT / "deploy"
# What Grafana puts in for its built-in variables: one fixed window, 30 scrapes long.
WINDOW = "30s"
GRAFANA_BUILTINS = {"__rate_interval": WINDOW, "__interval": "1s", "__range": WINDOW}
# A value for each of the dashboard's own template variables that appear in expressions.
TEMPLATE_VALUES = {"model": "avibe"}
SCRAPED = ("/v1/chat/completions", "/api/v1/text/generate")


@dataclass
class Stack:
    service: ServerProcess
    prometheus: str  # its URL

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(self.prometheus + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def promql(expr: str) -> str:
    """A dashboard expression as Prometheus takes it: Grafana's variables substituted."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        assert name in TEMPLATE_VALUES, f"give the dashboard variable ${name} a test value"
        return TEMPLATE_VALUES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard."""
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def dashboard_expr(metric: str, contains: str = "") -> str:
    """The dashboard's one expression over `metric` (and containing `contains`)."""
    found = [e for _, e in dashboard_targets() if metric in e and contains in e]
    assert len(found) == 1, (metric, contains, found)
    return promql(found[0])


def prometheus_config(target: str, tmp: Path) -> Path:
    """deploy/prometheus.yml made to scrape `target` every second, with its rule files."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="2s", scrape_timeout="2s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / path) for path in config["rule_files"]]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "avito-ai")
    job["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = [job]  # (no dcgm-exporter here)
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """check()'s first truthy answer, polled until `timeout`."""
    return wait_until(check, timeout, what, interval=0.25)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `make test`, which installs it")
    tmp = tmp_path_factory.mktemp("prometheus")
    env = {
        "AVIBE_BACKEND": "fake",
        "FAKE_TOKEN_DELAY": "0.02",
        "RATE_LIMIT_PER_MINUTE": "100000",
        "RATE_LIMIT_PER_HOUR": "100000",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "multiproc"),
    }
    service = gunicorn_server(env, tmp / "service.log", workers=2)
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    prometheus = subprocess.Popen(
        [
            binary,
            f"--config.file={prometheus_config(f'127.0.0.1:{service.port}', tmp)}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if prometheus.poll() is not None:
            raise RuntimeError((tmp / "prometheus.log").read_text())
        try:
            return httpx.get(url + "/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        service.wait_ready(60)
        eventually(ready, "Prometheus ready")
        shared = Stack(service, url)
        eventually(lambda: shared.query('up{job="avito-ai"} == 1'), "the service scraped")
        yield shared
    finally:
        prometheus.send_signal(signal.SIGTERM)
        try:
            prometheus.wait(20)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait()
        log.close()
        service.stop()


def generate_all_ways(url: str) -> None:
    """One generation each way: streamed and whole, OpenAI's chat API and the native one."""
    messages = [{"role": "user", "content": "Привет"}]
    with httpx.Client(base_url=url, timeout=30) as client:
        for stream in (False, True):
            r = client.post(
                "/v1/chat/completions",
                json={"model": "avibe", "messages": messages, "max_tokens": 8, "stream": stream},
            )
            assert r.status_code == 200, r.text
            r = client.post(
                "/api/v1/text/generate",
                json={"prompt": "Привет", "max_tokens": 8, "stream": stream},
            )
            assert r.status_code == 200, r.text
            if stream:
                assert "data:" in r.text and "error" not in r.text, r.text


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> Stack:
    """Generations in two rounds: the first makes the series (a rate needs a sample before
    the increase), the second increases them once Prometheus has them."""
    generate_all_ways(stack.service.url)
    eventually(lambda: stack.query("avito_generation_tokens_total"), "the first round scraped")
    generate_all_ways(stack.service.url)
    return stack


def positive(stack: Stack, expr: str, **labels: str) -> list[dict[str, Any]]:
    """The samples of `expr` with these labels, once all of them are finite and above 0."""

    def check() -> list[dict[str, Any]]:
        result = [s for s in stack.query(expr) if labels.items() <= s["metric"].items()]
        values = [float(s["value"][1]) for s in result]
        if values and all(math.isfinite(v) and v > 0 for v in values):
            return result
        # A rate needs two scrapes within its window: on a busy machine (an image build
        # beside this test) scrapes are late, so the traffic goes on until they see it.
        generate_all_ways(stack.service.url)
        return []

    found: list[dict[str, Any]] = eventually(check, f"{expr} {labels} positive", 90.0)
    return found


def test_request_rate_as_the_dashboard_asks(traffic: Stack) -> None:
    expr = dashboard_expr("avito_http_requests_total")
    for route in SCRAPED:
        positive(traffic, expr, route=route, status="200")


def test_time_to_first_token_p95_as_the_dashboard_asks(traffic: Stack) -> None:
    expr = dashboard_expr("avito_time_to_first_token_seconds_bucket", "histogram_quantile(0.95")
    (sample,) = positive(traffic, expr, model="avibe")
    assert float(sample["value"][1]) < 5  # (the fake engine's first token: milliseconds)


def test_tokens_per_second_as_the_dashboard_asks(traffic: Stack) -> None:
    positive(traffic, dashboard_expr("avito_generation_tokens_total"), model="avibe")
    positive(traffic, dashboard_expr("avito_prompt_tokens_total"), model="avibe")


def test_every_dashboard_query_is_valid_promql(traffic: Stack) -> None:
    for title, expr in dashboard_targets():
        try:
            traffic.query(promql(expr))
        except AssertionError as exc:
            raise AssertionError(f"panel {title!r}: {exc}") from None


def test_alert_rules_evaluate_on_the_real_metrics_and_none_fires(traffic: Stack) -> None:
    declared = {
        rule["alert"]
        for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }

    def evaluated() -> list[dict[str, Any]]:
        r = httpx.get(traffic.prometheus + "/api/v1/rules", timeout=10).json()
        rules = [rule for group in r["data"]["groups"] for rule in group["rules"]]
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else []

    rules = eventually(evaluated, "every rule evaluated")
    assert {rule["name"] for rule in rules} == declared
    assert all(rule["health"] == "ok" for rule in rules), [
        (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
    ]
    # A healthy service under light traffic: nothing pending or firing (but AvitoTargetDown,
    # which one slow scrape on a busy test machine would make pending).
    active = [
        r["name"] for r in rules if r["state"] != "inactive" and r["name"] != "AvitoTargetDown"
    ]
    assert active == []
