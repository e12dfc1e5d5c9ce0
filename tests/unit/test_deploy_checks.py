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


# --- the Kubernetes check: core kinds, the gateway's custom resources, adapter rules ------

GATEWAY = ROOT / "deploy" / "k8s" / "gateway"


def k8s_validator() -> ModuleType:
    path = ROOT / "deploy" / "schemas" / "validate_k8s.py"
    spec = importlib.util.spec_from_file_location("validate_k8s", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gateway_documents() -> list[dict[str, Any]]:
    validator = k8s_validator()
    return [doc for _, doc in validator.documents(str(GATEWAY))]


def gateway_doc(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in gateway_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def test_the_vendored_crds_are_the_published_ones_with_their_license() -> None:
    schemas = k8s_validator().crd_schemas()
    assert {
        ("gateway.networking.k8s.io/v1", "Gateway"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    }
    assert ("inference.networking.k8s.io/v1", "InferencePool") in schemas
    assert ("gateway.networking.k8s.io/v1", "HTTPRoute") in schemas
    for name in ("gateway-api", "gateway-api-inference-extension"):
        assert "Apache License" in (ROOT / "deploy" / "schemas" / f"LICENSE.{name}").read_text()


def test_every_manifest_is_valid_and_the_overlay_lists_every_file() -> None:
    validator = k8s_validator()
    paths = [*map(str, sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))), str(GATEWAY)]
    for path in paths:
        for where, doc in validator.documents(path):
            assert validator.problems(doc, "1.35.0") == [], where
    listed = {p.name for p in validator.manifest_files(GATEWAY)}
    assert listed == {p.name for p in GATEWAY.glob("*.yaml")} - {"kustomization.yaml"}


def with_change(kind: str, name: str, change: str) -> dict[str, Any]:
    """A copy of one gateway manifest with one mistake a person could make."""
    doc: dict[str, Any] = json.loads(json.dumps(gateway_doc(kind, name)))
    spec = doc["spec"]
    if change == "typo":  # an unknown field, misspelt
        key = next(iter(spec))
        spec[key + "z"] = spec.pop(key)
    elif change == "wrong-type":
        spec["minReplicas" if kind == "HorizontalPodAutoscaler" else "replicas"] = "two"
    elif change == "bad-enum":
        spec["endpointPickerRef"]["failureMode"] = "FailSoft"
    elif change == "missing":
        spec["rules"][0]["backendRefs"][0].pop("name")
    return doc


@pytest.mark.parametrize(
    ("kind", "name", "change", "problem"),
    [
        ("InferencePool", "vllm-avibe", "typo", "targetPortsz"),
        ("InferencePool", "vllm-avibe", "bad-enum", "FailSoft"),
        ("HTTPRoute", "vllm-avibe", "typo", "parentRefsz"),
        ("HTTPRoute", "vllm-avibe", "missing", "'name' is a required property"),
        ("Gateway", "inference-gateway", "typo", "gatewayClassNamez"),
        ("HorizontalPodAutoscaler", "vllm-avibe", "typo", "scaleTargetRef"),
        ("HorizontalPodAutoscaler", "avito-ai", "wrong-type", "'two'"),
        ("Deployment", "vllm-avibe-epp", "wrong-type", "'two'"),
    ],
)
def test_the_k8s_check_refuses_a_broken_manifest(
    kind: str, name: str, change: str, problem: str
) -> None:
    found = k8s_validator().problems(with_change(kind, name, change), "1.35.0")
    assert found and any(problem in line for line in found), found


def test_the_k8s_check_refuses_an_unknown_kind_and_broken_adapter_rules() -> None:
    validator = k8s_validator()
    unknown = {"apiVersion": "inference.networking.x-k8s.io/v1alpha2", "kind": "InferenceModel"}
    assert any("no schema" in line for line in validator.problems(unknown, "1.35.0"))
    adapter = json.loads(json.dumps(gateway_doc("ConfigMap", "adapter-config")))
    adapter["data"]["config.yaml"] = adapter["data"]["config.yaml"].replace("metricsQuery", "query")
    found = validator.problems(adapter, "1.35.0")
    assert found and all("config.yaml" in line and "'query'" in line for line in found), found


def adapter_rules() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(
        gateway_doc("ConfigMap", "adapter-config")["data"]["config.yaml"]
    )
    return rules


def test_each_autoscaler_metric_has_its_adapter_rule_over_a_real_series() -> None:
    """The adapter serves a metric under `name.as` of a rule whose series the service or
    vLLM exports: each HPA's Pods metric is a `rules` entry, each External an `externalRules`."""
    rules = adapter_rules()
    served = {
        "Pods": {r["name"]["as"]: r["seriesQuery"] for r in rules["rules"]},
        "External": {r["name"]["as"]: r["seriesQuery"] for r in rules["externalRules"]},
    }
    exported = exported_metrics()
    used = 0
    for doc in gateway_documents():
        if doc["kind"] != "HorizontalPodAutoscaler":
            continue
        for metric in doc["spec"]["metrics"]:
            if metric["type"] == "Resource":
                continue
            name = metric[metric["type"].lower()]["metric"]["name"]
            series = served[metric["type"]][name]
            assert series.split("{")[0] in exported or series.startswith("vllm:"), series
            used += 1
    assert used == 3


def test_the_gateway_front_is_the_plain_front_with_the_gateway_as_upstream() -> None:
    plain = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/avito-ai.yaml").read_text())]
    front = [d for d in yaml.safe_load_all((GATEWAY / "front.yaml").read_text())]
    assert [d["kind"] for d in plain] == [d["kind"] for d in front]

    def env_of(d: dict[str, Any]) -> dict[str, str]:
        return {
            e["name"]: e["value"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
        }

    plain_env, front_env = env_of(plain[0]), env_of(front[0])
    # The same container, but for the upstream settings.
    changed = {
        k for k in plain_env.keys() | front_env.keys() if plain_env.get(k) != front_env.get(k)
    }
    assert changed == {
        "AVIBE_UPSTREAM_URLS",
        "AVISION_UPSTREAM_URLS",
        "AVIBE_UPSTREAM_MODEL",
        "AVISION_UPSTREAM_MODEL",
    }
    for d in (plain[0], front[0]):
        d["spec"]["template"]["spec"]["containers"][0].pop("env")
    assert plain == front
    # Each upstream URL is the gateway's listener whose route leads to that model's pool.
    gateway = gateway_doc("Gateway", "inference-gateway")
    ports = {listener["name"]: listener["port"] for listener in gateway["spec"]["listeners"]}
    for model in ("avibe", "avision"):
        route = gateway_doc("HTTPRoute", f"vllm-{model}")
        assert route["spec"]["parentRefs"][0]["sectionName"] == model
        assert route["spec"]["rules"][0]["backendRefs"][0]["kind"] == "InferencePool"
        pool = gateway_doc("InferencePool", route["spec"]["rules"][0]["backendRefs"][0]["name"])
        engine = gateway_doc("Deployment", f"vllm-{model}")
        labels = engine["spec"]["template"]["metadata"]["labels"]
        assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
        epp = gateway_doc("Service", pool["spec"]["endpointPickerRef"]["name"])
        assert pool["spec"]["endpointPickerRef"]["port"]["number"] in [
            p["port"] for p in epp["spec"]["ports"]
        ]
        url = f"http://{gateway['metadata']['name']}-istio:{ports[model]}"
        assert front_env[f"{model.upper()}_UPSTREAM_URLS"] == url
