#!/usr/bin/env bash
# The GPU path, end to end, on a CUDA machine (run on a lent H100/H200; see
# docs/benchmarks.md): DEVICE=auto picks cuda:0 in bfloat16, a request over HTTP, NVML
# figures in /api/metrics, graceful exit; then the in-process engine benchmark on a
# Qwen3-8B-shaped model with random bf16 weights.
# Packages missing from that machine's image travel as wheels in .whl/ (see README there).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

python3 -c "from pathlib import Path; from tests.tiny_models import build_tiny_qwen3; build_tiny_qwen3(Path('/tmp/q3'))"
AVIBE_MODEL=/tmp/q3 DEVICE=auto PORT=8085 RATE_LIMIT_PER_MINUTE=1000 \
  python3 -m avito_ai serve >"$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 120); do
  curl -fs localhost:8085/api/health/ready >/dev/null && break
  sleep 0.5
done
{
  echo "== health";  curl -s localhost:8085/api/health; echo
  echo "== generate"; curl -s -X POST localhost:8085/api/v1/text/generate \
    -H 'Content-Type: application/json' -d '{"prompt": "Привет", "max_tokens": 16, "temperature": 0}'; echo
  echo "== metrics"; curl -s localhost:8085/api/metrics; echo
  echo "== prometheus"; curl -s localhost:8085/metrics | grep -E '^avito_(generation_tokens_total|time_to_first_token_seconds_count)'
} | tee "$OUT/http.txt"
kill -TERM "$SERVER"; wait "$SERVER"; echo "server exit status: $?" | tee -a "$OUT/http.txt"

python3 benchmarks/bench_engine.py --qwen3-8b-random --device cuda --repeats 1 2>&1 \
  | grep -v Warning | tee "$OUT/bench.txt"
