"""The deployment checks that `make lint` runs (promtool, hadolint, kubernetes-validate, the
Compose schema) keep the files valid; these keep the checks themselves honest: every alert
has its promtool unit test and its line in the docs, queries metrics the service exports,
and the Compose check really refuses a broken file."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
SEVERITIES = {"critical", "warning"}


def alert_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return groups


def alerts() -> list[dict[str, Any]]:
    return [rule for group in alert_groups() for rule in group["rules"]]


def exported_metrics() -> set[str]:
    """Every series name the service's /metrics can have: its own metrics, the engine
    processes' gauges (written only when there are engine processes), and what it reads at
    the scrape (models' readiness; GPUs, where NVML finds any)."""
    from prometheus_client import generate_latest
    from prometheus_client.core import CollectorRegistry

    from avito_ai.observability import metrics
    from avito_ai.observability.app_metrics import engine_metrics_text, live_metrics_text

    registry = CollectorRegistry()
    for value in vars(metrics).values():
        if hasattr(value, "_name") and hasattr(value, "_type"):
            registry.register(value)
    view = {
        "engine": "vllm",
        "state": "ready",
        **dict.fromkeys(
            ("running", "waiting", "kv_cache_usage", "spec_acceptance_rate", "restarts"), 1
        ),
        "spec_accept_length": 1,
    }
    gpu = {"index": 0.0, "used": 1.0, "total": 2.0, "utilization": 0.5}
    live = live_metrics_text({"avibe": ("ready", "openvino")}, [gpu])
    text = generate_latest(registry) + engine_metrics_text({"avibe": view}) + live
    names = set(re.findall(r"^# TYPE (\S+) (\w+)", text.decode(), re.M))
    out = set()
    for name, kind in names:
        if kind == "counter":
            out.add(name if name.endswith("_total") else name + "_total")
        elif kind == "histogram":
            out |= {name + s for s in ("_bucket", "_sum", "_count")}
        else:
            out.add(name)
    return out


def test_every_alert_has_for_severity_summary_and_a_one_line_runbook() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)) and names
    for rule in alerts():
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), rule["alert"]
        assert annotations["runbook"].strip() and "\n" not in annotations["runbook"]


def test_alerts_query_metrics_the_service_exports() -> None:
    exported = exported_metrics()
    queried = {name for rule in alerts() for name in re.findall(r"\bavito_\w+", rule["expr"])}
    assert queried and queried <= exported, queried - exported


def test_every_rule_group_has_a_promtool_unit_test_of_each_of_its_alerts() -> None:
    for group in alert_groups():
        path = PROMETHEUS / "tests" / (group["name"].removeprefix("avito-ai-") + ".yml")
        assert path.exists(), f"{group['name']}: no {path.relative_to(ROOT)}"
        spec = yaml.safe_load(path.read_text())
        assert spec["rule_files"] == ["../alerts.yml"]
        tested = {
            case["alertname"]
            for test in spec["tests"]
            for case in test["alert_rule_test"]
            if case.get("exp_alerts")  # a case where it fires, not only one where it doesn't
        }
        assert tested == {rule["alert"] for rule in group["rules"]}, path.name


def test_prometheus_config_loads_the_rules_and_compose_mounts_them() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["prometheus/alerts.yml"]
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    # rule_files is relative to the config: /etc/prometheus/ + prometheus/alerts.yml.
    assert "./prometheus/alerts.yml:/etc/prometheus/prometheus/alerts.yml:ro" in volumes
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes


def test_operations_doc_lists_every_alert() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    for rule in alerts():
        assert f"`{rule['alert']}`" in text, rule["alert"]


def test_dashboard_rates_follow_grafanas_rate_interval() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for window in re.findall(r"\[([^\]]+)\]", target["expr"]):
                assert window == "$__rate_interval", (panel["title"], target["expr"])


# --- the Compose schema check --------------------------------------------------------


def compose_validator() -> ModuleType:
    path = ROOT / "deploy" / "schemas" / "validate_compose.py"
    spec = importlib.util.spec_from_file_location("validate_compose", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_vendored_schema_is_the_compose_specification() -> None:
    schema = json.loads((ROOT / "deploy" / "schemas" / "compose-spec.json").read_text())
    assert schema["title"] == "Compose Specification"
    assert "services" in schema["properties"]
    assert (ROOT / "deploy" / "schemas" / "LICENSE.compose-spec").exists()


def test_compose_file_is_valid() -> None:
    validator = compose_validator()
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    assert validator.problems(compose) == []


@pytest.mark.parametrize(
    ("service", "problem"),
    [
        ({"image": "redis", "restrat": "always"}, "'restrat'"),
        ({"image": "redis", "ports": "8085:8085"}, "ports"),
        ({"image": "redis", "env_file": [{"file": ".env", "required": False}]}, "env_file"),
    ],
)
def test_compose_check_refuses_a_broken_file(service: dict[str, Any], problem: str) -> None:
    found = compose_validator().problems({"services": {"app": service}})
    assert found and any(problem in line for line in found), found
