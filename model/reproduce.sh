#!/usr/bin/env bash
# Reproduce the ensemble in model/ and its reports from the AMi-Br data (MODEL_CARD.md).
#
#   model/reproduce.sh [ensemble|student|lodo] [AMIBR_DIR] [WORK_DIR]
#
# ensemble (default): imports the vendored ImageNet MobileNets (resources/pretrained/), fine-tunes
#   5 folds of each over the published AMi-Br training split (grouped by slide; the two
#   networks train side by side, one core each), writes the mixed 10-model ensemble with its
#   out-of-fold threshold into model/, then scores it once on the 826-crop test split through
#   inference.py exactly as the container runs it.
# student: one MobileNetV2 distilled from the ensemble in model/ (its teacher; the card's
#   accuracy-cost front): a 5-fold run (each fold learns from the teacher folds that never saw
#   its validation crops: out-of-fold figures and threshold), then the same recipe on every
#   crop, assembled with its graphs (fp32, fp16, int8) into WORK_DIR/model-student; about 2 h on
#   2 cores. Serve it with `python inference.py --model WORK_DIR/model-student`.
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
if [[ $PART != ensemble && $PART != student && $PART != lodo ]]; then
    echo "usage: model/reproduce.sh [ensemble|student|lodo] [AMIBR_DIR] [WORK_DIR]" >&2
    exit 2
fi
AMIBR=${2:-../shared/data/ami-br}
WORK=${3:-../runs}
[[ -n ${PYTHON:-} ]] || ensure_venv  # PYTHON=... uses another interpreter instead of .venv
PY=${PYTHON:-$VENV/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"

# Training recipes by name: amf/recipes.py holds their settings, MODEL_CARD.md their results.
# Test-time views served by the container, and behind the out-of-fold threshold: mirror (2 views),
# the cheapest point within 0.005 out-of-fold AUROC of the best on the accuracy-cost front
# (bench/results/front-cpu-2core.md); dihedral (8) is the most accurate, 4x the work.
TTA=mirror

"$PY" -m amf dataset --amibr "$AMIBR" --amibr-split train --by scanner --out "$WORK/amibr-train.csv"
case $PART in
ensemble)
    "$PY" -m amf plan --table "$WORK/amibr-train.csv" --domain all --out "$WORK/plan-all.json"
    runs=() pids=()
    # r6, r7: the ImageNet MobileNets fine-tuned; each run first imports its .tflite graph with batch
    # norm re-estimated on 512 training crops at the training size (amf.tflite_import.for_run)
    for recipe in r6 r7; do
        "$PY" -m amf train --plan "$WORK/plan-all.json" --out "$WORK/all-$recipe" --recipe "$recipe" \
            > "$WORK/all-$recipe.log" 2>&1 &
        runs+=(--run "$WORK/all-$recipe") pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done  # a failed run stops the script (its log says why)
    "$PY" -m amf assemble "${runs[@]}" --out model/ --threshold youden --tta "$TTA"
    "$PY" -m amf export-onnx --model model/ --crops test/input  # the graphs the container serves by default

    # The published test split, once, through the container's own entry point.
    "$PY" -m amf dataset --amibr "$AMIBR" --amibr-split test --by scanner --out "$WORK/amibr-test.csv" \
        --link "$WORK/amibr-test-crops"
    "$PY" inference.py --input "$WORK/amibr-test-crops" --output "$WORK/amibr-test-out" --model model/
    "$PY" -m amf score --predictions "$WORK/amibr-test-out/predictions.csv" --table "$WORK/amibr-test.csv" \
        --by scanner --out "$WORK/amibr-test-metrics.json"
    ;;
student)
    "$PY" -m amf plan --table "$WORK/amibr-train.csv" --domain all --out "$WORK/plan-all.json"
    # r6 learning model/'s P(atypical) under its served views (mirror), which become augmentation;
    # the 5 folds and the refit on every crop side by side, one core each
    student=(--plan "$WORK/plan-all.json" --recipe r6 --teacher model/)
    "$PY" -m amf train "${student[@]}" --out "$WORK/student" > "$WORK/student.log" 2>&1 &
    folds=$!
    "$PY" -m amf train "${student[@]}" --out "$WORK/student-refit" --refit > "$WORK/student-refit.log" 2>&1 &
    refit=$!
    wait "$folds"
    wait "$refit"
    "$PY" -m amf assemble --run "$WORK/student" --refit "$WORK/student-refit" --out "$WORK/model-student" \
        --threshold youden --tta mirror
    "$PY" -m amf export-onnx --model "$WORK/model-student" --crops test/input
    "$PY" -m amf quantize --model "$WORK/model-student" --table "$WORK/amibr-train.csv"
    ;;
lodo)
    "$PY" -m amf plan --table "$WORK/amibr-train.csv" --domain scanner --out "$WORK/plan-scanner.json"
    # The card's leave-one-domain-out table was made before soft labels won: efficientvit_m0 from scratch (r1).
    "$PY" -m amf train --plan "$WORK/plan-scanner.json" --out "$WORK/scanner-m0" --recipe r1
    "$PY" -m amf evaluate --run "$WORK/scanner-m0" --out "$WORK/report-scanner" --tta dihedral  # as docs/lodo-scanner/ was made
    ;;
esac
