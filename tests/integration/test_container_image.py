"""The CPU image (deploy/Dockerfile.cpu), built by `make image-cpu` and run, as a user would.

Without a daemon or a registry: buildah builds it (vfs storage, chroot isolation) FROM the
Debian bookworm base the Makefile makes once with debootstrap, both cached in IMAGE_CACHE
(a second build reuses the base and buildah's layers); podman runs it (runc, cgroupfs, on
the host's network, limits lowered). The tools are installed by the Makefile, as root:
skipped for another user, never in CI (which runs as root).

Against the running container: it becomes ready with the embedded model, answers the
original specification's /api/v1/text/generate and an OpenAI chat with a JSON schema, serves
the page and its metrics (the multiprocess folder is writable), takes settings from the
environment and from /app/.env, runs as user 10001, and on SIGTERM finishes a stream in
flight and exits 0 within its graceful timeout.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, ServerProcess, free_port

pytestmark = pytest.mark.integration

GRACEFUL_TIMEOUT = 20
UID = 10001


def make(*args: str, timeout: float) -> str:
    # Not the flags of the `make test` this may run under (its jobserver, -k, ...).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(
        ["make", "-s", "--no-print-directory", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"make {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def podman() -> list[str]:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the daemonless image tools are installed and run as root here")
    return shlex.split(make("podman-command", timeout=60))


@pytest.fixture(scope="module")
def image(podman: list[str]) -> str:
    """The image `make image-cpu` builds (at once when its inputs are those of the image
    there, built last time), by its id: another clone's test may tag another meanwhile."""
    started = time.monotonic()
    out = make("image-cpu", "IMAGE_TOOL=buildah", timeout=1800)
    print(f"{out.strip()} ({time.monotonic() - started:.0f} s in all)")
    tag = re.search(r"^(avito-ai-cpu:\S+):", out, re.M)
    assert tag, out
    return subprocess.run(
        [*podman, "image", "inspect", "--format", "{{.Id}}", f"localhost/{tag.group(1)}"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture(scope="module")
def container(
    podman: list[str], image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("container")
    dotenv = logs / ".env"
    dotenv.write_text("MAX_TOKENS_AVIBE=77\n")
    dotenv.chmod(0o644)
    logs.chmod(0o755)
    port = free_port()
    name = f"avito-ai-test-{port}"
    settings = {"PORT": port, "HOST": "127.0.0.1", "GRACEFUL_TIMEOUT": GRACEFUL_TIMEOUT,
                "WEB_CONCURRENCY": 1}  # fmt: skip
    command = [
        *podman, "run", "--rm", "--name", name, "--network", "host",
        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
        *(f"--env={k}={v}" for k, v in settings.items()),
        "-v", f"{dotenv}:/app/.env:ro",
        image,
    ]  # fmt: skip
    srv = ServerProcess(command, {}, logs / "container.log", port)
    srv.name = name  # type: ignore[attr-defined]
    try:
        srv.wait_ready(300)
        yield srv
    finally:
        if srv.proc.poll() is None:
            subprocess.run([*podman, "stop", "-t", "5", name], capture_output=True, timeout=60)
        srv.stop(60)


def test_ready_with_the_embedded_model_on_openvino(container: ServerProcess) -> None:
    health = httpx.get(container.url + "/api/health", timeout=10).json()
    assert health["models"]["avibe"]["state"] == "ready", health
    # The root-owned GGUF was copied once into the user's writable MODEL_CACHE_DIR.
    assert "copied to /home/avito/.cache/avito-ai/gguf/" in container.output()


def test_the_original_specifications_generate(container: ServerProcess) -> None:
    r = httpx.post(
        container.url + "/api/v1/text/generate",
        json={"prompt": "What is the capital of France?", "max_tokens": 16, "temperature": 0},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["data"]["text"].strip()
    assert 0 < body["data"]["generated_tokens"] <= 16


def test_openai_chat_with_a_json_schema(container: ServerProcess) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    r = httpx.post(
        container.url + "/v1/chat/completions",
        json={
            "model": "avibe",
            "messages": [{"role": "user", "content": "Name a city in France."}],
            "max_tokens": 40,
            "temperature": 0,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": schema, "strict": True},
            },
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    answer = json.loads(r.json()["choices"][0]["message"]["content"])
    assert set(answer) == {"city"} and isinstance(answer["city"], str)


def test_the_page_and_metrics(container: ServerProcess) -> None:
    page = httpx.get(container.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()
    # The multiprocess metrics folder is the user's to write.
    metrics = httpx.get(container.url + "/metrics", timeout=10)
    assert metrics.status_code == 200 and "avito_http_requests_total" in metrics.text
    assert httpx.get(container.url + "/api/metrics", timeout=10).status_code == 200


def test_settings_from_the_environment_and_dotenv(container: ServerProcess) -> None:
    # PORT and HOST from --env (it answers there); MAX_TOKENS_AVIBE from /app/.env.
    r = httpx.post(
        container.url + "/api/v1/text/generate",
        json={"prompt": "Hi", "max_tokens": 78},
        timeout=60,
    )
    assert r.status_code in (400, 422) and "77" in r.text, r.text


def test_runs_as_the_non_root_user(podman: list[str], container: ServerProcess) -> None:
    name = container.name  # type: ignore[attr-defined]
    pid = subprocess.run(
        [*podman, "inspect", "--format", "{{.State.Pid}}", name],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    # No user namespace: the container's gunicorn master is user 10001 on this host too.
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {str(UID)}, status
    assert "gunicorn" in Path(f"/proc/{pid}/cmdline").read_text()


def test_the_image_keeps_its_healthcheck_and_user(podman: list[str], image: str) -> None:
    """Built in Docker's format: the OCI format has no HEALTHCHECK (buildah drops it)."""
    out = subprocess.run(
        [*podman, "image", "inspect", "--format", "{{.User}} {{json .HealthCheck}}", image],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    user, health = out.split(" ", 1)
    assert user == str(UID)
    test = json.loads(health)["Test"]
    assert "/api/health/live" in test[-1], test


def test_sigterm_finishes_a_stream_in_flight_and_exits_in_time(
    container: ServerProcess,
) -> None:
    """Last in this file: the container stops here."""
    lines: list[str] = []
    first = threading.Event()

    def stream() -> None:
        body = {"model": "avibe", "messages": [{"role": "user", "content": "Tell a long story."}],
                "max_tokens": 60, "stream": True, "temperature": 0}  # fmt: skip
        with httpx.stream("POST", container.url + "/v1/chat/completions", json=body,
                          timeout=120) as r:  # fmt: skip
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                    first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(60), container.output()
    started = time.monotonic()
    container.signal()  # SIGTERM to podman, which passes it on to gunicorn in the container
    assert container.proc.wait(GRACEFUL_TIMEOUT + 15) == 0, container.output()
    stopped = time.monotonic() - started
    reader.join(30)
    assert lines[-1] == "data: [DONE]", lines[-3:]
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert reasons[-1] in ("stop", "length"), reasons
    assert stopped < GRACEFUL_TIMEOUT + 10, stopped


def test_the_cuda_dockerfile_builds_on_a_stand_in_base(podman: list[str]) -> None:
    """Every step of the CUDA `Dockerfile` after its FROM, built on a STAND-IN base: Ubuntu
    24.04 made with debootstrap (`make image-cuda-standin`), the release of
    nvidia/cuda:13.0.2-runtime-ubuntu24.04 and so its Python, without CUDA or a GPU
    (nvidia/cuda cannot be pulled here). The environment it makes has the Python the unit
    check expects of that base, and the torch whose CUDA build the FROM line names."""
    from tests.unit.test_image_python import base_of, python_of

    dockerfile = ROOT / "Dockerfile"
    out = make("image-cuda-standin", timeout=3000)
    print(out.strip())
    tag = re.search(r"^(avito-ai:\S+-standin-\S+):", out, re.M)
    assert tag, out
    probe = (
        "import os, sys, torch, avito_ai.app, xgrammar; "
        "print(f'{sys.version_info[0]}.{sys.version_info[1]}', torch.__version__, "
        "torch.version.cuda, os.getuid())"
    )
    r = subprocess.run(
        [*podman, "run", "--rm", "--network", "host",
         "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
         f"localhost/{tag.group(1)}", "python", "-c", probe],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    python, torch_version, cuda, uid = r.stdout.split()
    base = base_of(dockerfile)
    assert python == python_of(base)
    pinned = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned and torch_version.split("+")[0] == pinned.group(1)
    assert base.startswith(f"nvidia/cuda:{cuda}."), (base, cuda)
    assert uid == str(UID)
