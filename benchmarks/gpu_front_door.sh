#!/usr/bin/env bash
# The front door's cost in front of an engine process on a GPU (run on a lent H100/H200;
# see docs/benchmarks.md): the stand-in engine is this service on CUDA, serving a
# Qwen3-0.6B-shaped model with random bf16 weights; the front door (AVIBE_BACKEND=command)
# supervises it and runs on the host's other cores. Packages missing from that machine's
# image travel as wheels in .whl/ (see gpu_check.sh).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-front-door}
ROUNDS=${ROUNDS:-5}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; } | tee "$OUT/gpu.txt"
python3 benchmarks/bench_engine.py --save-qwen3-random 0.6b /tmp/q06 2>&1 | grep -v Warning | tail -2
python3 benchmarks/bench_front_door.py --rounds "$ROUNDS" --engine-env AVIBE_BACKEND=transformers \
  AVIBE_MODEL=/tmp/q06 DEVICE=cuda MAX_BATCH_SIZE=16 2>&1 | tee "$OUT/front_door.txt"
