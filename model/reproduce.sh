#!/usr/bin/env bash
# Reproduce the ensemble in model/ from the AMi-Br data (MODEL_CARD.md, "How it was made").
#
#   model/reproduce.sh [AMIBR_DIR] [WORK_DIR]
#
# AMIBR_DIR defaults to ../shared/data/ami-br, WORK_DIR to ../runs (outside the repository).
# Trains 5 folds over the published AMi-Br training split (grouped by slide), writes the ensemble
# with its out-of-fold threshold into model/, then scores it once on the 826-crop test split
# through inference.py exactly as the container runs it. Resumable: rerun after a kill.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
AMIBR=${1:-../shared/data/ami-br}
WORK=${2:-../runs}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$WORK"

RECIPE=(--arch efficientvit_m0 --size 128 --epochs 15 --lr 2e-3 --batch-size 32
    --weight-decay 0.05 --stain 0.05 --workers 1 --seed 0)

"$PY" -m amf dataset --amibr "$AMIBR" --amibr-split train --by scanner --out "$WORK/amibr-train.csv"
"$PY" -m amf plan --table "$WORK/amibr-train.csv" --domain all --out "$WORK/plan-all.json"
"$PY" -m amf train --plan "$WORK/plan-all.json" --out "$WORK/all-m0" "${RECIPE[@]}"
"$PY" -m amf assemble --run "$WORK/all-m0" --out model/ --threshold youden

# The published test split, once, through the container's own entry point.
"$PY" -m amf dataset --amibr "$AMIBR" --amibr-split test --by scanner --out "$WORK/amibr-test.csv" \
    --link "$WORK/amibr-test-crops"
"$PY" inference.py --input "$WORK/amibr-test-crops" --output "$WORK/amibr-test-out" --model model/
"$PY" -m amf score --predictions "$WORK/amibr-test-out/predictions.csv" --table "$WORK/amibr-test.csv" \
    --by scanner --out "$WORK/amibr-test-metrics.json"
