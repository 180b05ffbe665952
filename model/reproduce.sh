#!/usr/bin/env bash
# Reproduce the ensemble in model/ and its reports from the AMi-Br data (MODEL_CARD.md).
#
#   model/reproduce.sh [ensemble|lodo] [AMIBR_DIR] [WORK_DIR]
#
# ensemble (default): trains 5 folds over the published AMi-Br training split (grouped by slide),
#   writes the ensemble with its out-of-fold threshold into model/, then scores it once on the
#   826-crop test split through inference.py exactly as the container runs it.
# lodo: the leave-one-domain-out report (the paper's Table 2, Figures 1-2) over AMi-Br's four
#   domains (scanner column): 4 x 5 models, into WORK_DIR/report-scanner.
#
# AMIBR_DIR defaults to ../shared/data/ami-br, WORK_DIR to ../runs (outside the repository).
# Resumable: rerun the same command after a kill. One thread per process trains ~10x faster on
# small shared CPUs (MODEL_CARD.md, "Training time and machine").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"
PART=${1:-ensemble}
if [[ $PART != ensemble && $PART != lodo ]]; then
    echo "usage: model/reproduce.sh [ensemble|lodo] [AMIBR_DIR] [WORK_DIR]" >&2
    exit 2
fi
AMIBR=${2:-../shared/data/ami-br}
WORK=${3:-../runs}
[[ -n ${PYTHON:-} ]] || ensure_venv  # PYTHON=... uses another interpreter instead of .venv
PY=${PYTHON:-$VENV/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"

RECIPE=(--arch efficientvit_m0 --size 128 --epochs 15 --lr 2e-3 --batch-size 32
    --weight-decay 0.05 --stain 0.05 --soft-labels --workers 1 --seed 0)
TTA=dihedral  # test-time views: served by the container, and behind the out-of-fold threshold

"$PY" -m amf dataset --amibr "$AMIBR" --amibr-split train --by scanner --out "$WORK/amibr-train.csv"
case $PART in
ensemble)
    "$PY" -m amf plan --table "$WORK/amibr-train.csv" --domain all --out "$WORK/plan-all.json"
    "$PY" -m amf train --plan "$WORK/plan-all.json" --out "$WORK/all-m0" "${RECIPE[@]}"
    "$PY" -m amf assemble --run "$WORK/all-m0" --out model/ --threshold youden --tta "$TTA"
    "$PY" -m amf export --model model/  # the graphs the container serves by default
    "$PY" -m amf evaluate --run "$WORK/all-m0" --out "$WORK/report-all" --by scanner

    # The published test split, once, through the container's own entry point.
    "$PY" -m amf dataset --amibr "$AMIBR" --amibr-split test --by scanner --out "$WORK/amibr-test.csv" \
        --link "$WORK/amibr-test-crops"
    "$PY" inference.py --input "$WORK/amibr-test-crops" --output "$WORK/amibr-test-out" --model model/
    "$PY" -m amf score --predictions "$WORK/amibr-test-out/predictions.csv" --table "$WORK/amibr-test.csv" \
        --by scanner --out "$WORK/amibr-test-metrics.json"
    ;;
lodo)
    "$PY" -m amf plan --table "$WORK/amibr-train.csv" --domain scanner --out "$WORK/plan-scanner.json"
    # The card's leave-one-domain-out table was made before soft labels won (recipe r1 there).
    "$PY" -m amf train --plan "$WORK/plan-scanner.json" --out "$WORK/scanner-m0" "${RECIPE[@]}" --no-soft-labels
    "$PY" -m amf evaluate --run "$WORK/scanner-m0" --out "$WORK/report-scanner" --tta "$TTA"
    ;;
esac
