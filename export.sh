#!/usr/bin/env bash
# Write the grand-challenge upload (README.md, "Container"):
#   build/amf.tar.gz     the GPU inference image ($AMF_IMAGE, amf:latest): docker save IMAGE | gzip
#   build/model.tar.gz   model/ (grand-challenge extracts it to /opt/ml/model)
#
# Usage: ./export.sh [--allow-standin] [OUT_DIR]
# Run it where ./build.sh built the image from the real pytorch/pytorch base (a machine where
# Docker can pull it). An image built on the local stand-in base is refused: it is not the one
# to upload (--allow-standin exports it anyway, to test this script).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"

allow_standin=0
if [[ ${1:-} == --allow-standin ]]; then
    allow_standin=1
    shift
fi
OUT="${1:-$ROOT/build}"

# Optional step, AMF_ONNX=1 ./export.sh: export model/ to ONNX again (after retraining it, say).
# Writes model/ensemble.fp32.onnx and .fp16.onnx, each checked against the PyTorch ensemble and
# recorded in model/manifest.json (python -m amf export-onnx), then rebuilds the GPU image so that it
# bakes them in. Without it, model/ ships as committed (README.md, "ONNX export").
if [[ ${AMF_ONNX:-0} == 1 ]]; then
    say "exporting model/ to ONNX, then rebuilding $AMF_IMAGE"
    ensure_venv
    "$VENV/bin/python" -m amf export-onnx --model "$ROOT/model" --crops "$ROOT/test/input"
    "$ROOT/build.sh" gpu
fi

use_engine detect
[[ $ENGINE != none ]] || die "no container engine here: export needs docker (or podman)"
image_exists "$AMF_IMAGE" || die "no image $AMF_IMAGE: run ./build.sh first"
base=$(image_base "$AMF_IMAGE")
if [[ $base == *amf-standin* && $allow_standin == 0 ]]; then
    die "$AMF_IMAGE was built on the local stand-in base $base; build it from the real base" \
        "(docker build --platform=linux/amd64, README.md) before uploading"
fi
[[ -f $ROOT/model/manifest.json ]] || die "model/ holds no ensemble (model/manifest.json): nothing to upload"

mkdir -p "$OUT"
say "saving $AMF_IMAGE (base $base) to $OUT/amf.tar.gz"
engine save "$AMF_IMAGE" | gzip >"$OUT/amf.tar.gz.part"
mv "$OUT/amf.tar.gz.part" "$OUT/amf.tar.gz"
tar -C "$ROOT/model" --owner=0 --group=0 --numeric-owner -czf "$OUT/model.tar.gz" .
say "wrote $OUT/amf.tar.gz ($(du -h "$OUT/amf.tar.gz" | cut -f1)) and $OUT/model.tar.gz ($(du -h "$OUT/model.tar.gz" | cut -f1))"
