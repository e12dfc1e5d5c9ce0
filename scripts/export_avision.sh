#!/usr/bin/env bash
# Export a vision-language model (Qwen2-VL / Qwen2.5-VL: AvitoTech/avision) to an OpenVINO
# IR folder that the light install's A-Vision engine serves (AVISION_MODEL=<OUT>).
#
#   scripts/export_avision.sh MODEL OUT [WEIGHTS]     (make export-avision MODEL=... OUT=...)
#
# MODEL: a hub id or a transformers checkpoint folder. WEIGHTS: int8 (the default: a 7B
# model on a CPU, about 8 GB), fp16 (about 15 GB, no quantization error) or int4 (about
# 5 GB; NNCF's data-free weight compression).
#
# The exporter runs in its own environment, never the service's: optimum-intel 2.2.0 caps
# transformers at 5.0 for Qwen2.5-VL (the service uses 5.24), and it needs torch. It is built
# once (about 4 minutes, 6 GB) under EXPORT_VENV (default ~/.cache/avito-ai/export-venv),
# with every version pinned, and rebuilt only when the pins change. EXPORT_ARGS: more
# optimum-cli options (e.g. "--group-size 64" for int4 of a model with narrow layers).
set -euo pipefail

if [ $# -lt 2 ] || [ -z "$1" ] || [ -z "$2" ]; then
    echo "usage: $0 MODEL OUT [int8|fp16|int4]" >&2
    exit 2
fi
MODEL=$1
OUT=$2
WEIGHTS=${3:-int8}
case "$WEIGHTS" in
    int8 | fp16 | int4) ;;
    *)
        echo "WEIGHTS must be int8, fp16 or int4, not '$WEIGHTS'" >&2
        exit 2
        ;;
esac

PYTHON=${PYTHON:-python3}
VENV=${EXPORT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/avito-ai/export-venv}
# torch as elsewhere in the project (its build lies on the project's machines); openvino and
# its tokenizers as the service's openvino-genai 2026.4.1 reads them.
PINS=(
    torch==2.14.1
    torchvision==0.29.1
    transformers==5.0.0
    optimum-intel==2.2.0
    optimum==2.3.0
    nncf==3.4.0
    openvino==2026.4.1
    openvino-tokenizers==2026.4.1.0
)
STAMP="$VENV/.installed-$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-12)"

if [ ! -f "$STAMP" ]; then
    echo "building the export environment in $VENV (once)" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --disable-pip-version-check -q "${PINS[@]}"
    touch "$STAMP"
fi

echo "exporting $MODEL to $OUT ($WEIGHTS weights)" >&2
"$VENV/bin/optimum-cli" export openvino \
    --model "$MODEL" \
    --task image-text-to-text \
    --weight-format "$WEIGHTS" \
    ${EXPORT_ARGS:-} \
    "$OUT"

for part in openvino_language_model.xml openvino_vision_embeddings_model.xml \
    openvino_text_embeddings_model.xml openvino_tokenizer.xml openvino_detokenizer.xml; do
    if [ ! -f "$OUT/$part" ]; then
        echo "the export made no $part: $MODEL is not a vision-language model the exporter knows" >&2
        exit 1
    fi
done
echo "done: AVISION_MODEL=$OUT (AVISION_BACKEND=auto serves it on OpenVINO)" >&2
