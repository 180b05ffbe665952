#!/usr/bin/env bash
# Write the grand-challenge upload (docs/container.md; docs/invoke.md):
#   build/amf-invoke.tar.gz   the GPU image in invoke mode ($AMF_INVOKE_IMAGE, amf-invoke:latest), the
#                             default: the model loads once per container, not once per stack
#   build/amf-exec.tar.gz     with --exec: the GPU image in exec mode ($AMF_IMAGE, amf:latest)
#   build/model.tar.gz        model/ (grand-challenge extracts it to /opt/ml/model)
# each image as `docker save IMAGE | gzip`.
#
# Usage: ./export.sh [--exec] [--allow-standin] [OUT_DIR]
# Run it where ./build.sh built the image from the real pytorch/pytorch base (a machine where
# Docker can pull it). An image built on the local stand-in base is refused: it is not the one
# to upload (--allow-standin exports it anyway, to test this script).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"

allow_standin=0 mode=invoke
while [[ ${1:-} == --* ]]; do
    case $1 in
        --exec) mode=exec ;;
        --allow-standin) allow_standin=1 ;;
        *) die "usage: ./export.sh [--exec] [--allow-standin] [OUT_DIR]" ;;
    esac
    shift
done
OUT="${1:-$ROOT/build}"
IMAGE=$AMF_INVOKE_IMAGE
[[ $mode == exec ]] && IMAGE=$AMF_IMAGE

# Optional step, AMF_ONNX=1 ./export.sh: export model/ to ONNX again (after retraining it, say).
# Writes model/ensemble.fp32.onnx and .fp16.onnx, each checked against the PyTorch ensemble and
# recorded in model/manifest.json (python -m amf export-onnx), then rebuilds the GPU images so that they
# bake them in. Without it, model/ ships as committed (docs/onnx.md).
if [[ ${AMF_ONNX:-0} == 1 ]]; then
    say "exporting model/ to ONNX, then rebuilding the GPU images"
    ensure_venv
    "$VENV/bin/python" -m amf export-onnx --model "$ROOT/model" --crops "$ROOT/test/input"
    "$ROOT/build.sh" gpu
fi

use_engine detect
[[ $ENGINE != none ]] || die "no container engine here: export needs docker (or podman)"
image_exists "$IMAGE" || die "no image $IMAGE: run ./build.sh first"
base=$(image_base "$IMAGE")
if [[ $base == *amf-standin* && $allow_standin == 0 ]]; then
    die "$IMAGE was built on the local stand-in base $base; build it from the real base" \
        "(docker build --platform=linux/amd64, docs/container.md) before uploading"
fi
[[ -f $ROOT/model/manifest.json ]] || die "model/ holds no ensemble (model/manifest.json): nothing to upload"

mkdir -p "$OUT"
say "saving $IMAGE (base $base) to $OUT/amf-$mode.tar.gz"
engine save "$IMAGE" | gzip >"$OUT/amf-$mode.tar.gz.part"
mv "$OUT/amf-$mode.tar.gz.part" "$OUT/amf-$mode.tar.gz"
tar -C "$ROOT/model" --owner=0 --group=0 --numeric-owner -czf "$OUT/model.tar.gz" .
say "wrote $OUT/amf-$mode.tar.gz ($(du -h "$OUT/amf-$mode.tar.gz" | cut -f1)) and $OUT/model.tar.gz ($(du -h "$OUT/model.tar.gz" | cut -f1))"
