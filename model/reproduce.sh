#!/usr/bin/env bash
# Reproduce the model in model/ and its reports from the AMi-Br data (MODEL_CARD.md).
#
#   model/reproduce.sh [all|teachers|student|lodo] [AMIBR_DIR] [WORK_DIR]
#
# all (default): teachers, then student.
# teachers: the three ensembles the shipped student learns from, each a 5-fold run over the
#   published AMi-Br training split (grouped by slide), two runs side by side, one core each:
#   r6 + r7 (the vendored ImageNet MobileNets, resources/pretrained/) mixed into WORK_DIR/model-r8
#   (served by model/ until 2026-12-05) and EfficientNet-Lite2 at 160 and 192 px (pinned weight
#   packages) in WORK_DIR/model-lite2-160 and -192. About 3 h on 2 cores (the card's training times).
# student: one MobileNetV2 at 160 px distilled from the three teachers under the 8 views: a 5-fold
#   run (each fold learns only from teacher folds that never saw its validation crops: the
#   out-of-fold figures and threshold), then the same recipe on every crop, which model/ serves
#   with the 8 views; its graphs, then the 826-crop test split scored once through inference.py
#   exactly as the container runs it. About 2 h on 2 cores, 70 min of it the teachers' scores.
# lodo: the leave-one-domain-out report (the paper's Table 2, Figures 1-2) over AMi-Br's four
#   domains (scanner column): recipe r6, 4 x 5 models, into WORK_DIR/report-scanner. About 65 min
#   on 2 cores.
#
# AMIBR_DIR defaults to ../shared/data/ami-br, WORK_DIR to ../runs (outside the repository).
# Resumable: rerun the same command after a kill. One thread per process trains ~10x faster on
# small shared CPUs (MODEL_CARD.md, "Training time and machine").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"
PART=${1:-all}
if [[ $PART != all && $PART != teachers && $PART != student && $PART != lodo ]]; then
    echo "usage: model/reproduce.sh [all|teachers|student|lodo] [AMIBR_DIR] [WORK_DIR]" >&2
    exit 2
fi
AMIBR=${2:-../shared/data/ami-br}
WORK=${3:-../runs}
[[ -n ${PYTHON:-} ]] || ensure_venv  # PYTHON=... uses another interpreter instead of .venv
PY=${PYTHON:-$VENV/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"

# Training recipes by name: amf/recipes.py holds their settings, MODEL_CARD.md their results.
"$PY" -m amf dataset --amibr "$AMIBR" --amibr-split train --by scanner --out "$WORK/amibr-train.csv"
"$PY" -m amf plan --table "$WORK/amibr-train.csv" --domain all --out "$WORK/plan-all.json"
PLAN=(--plan "$WORK/plan-all.json")

# train LOG ARGS...: `amf train` on the plan, its output in WORK_DIR/LOG.log.
train() {
    local log=$1
    shift
    "$PY" -m amf train "${PLAN[@]}" "$@" > "$WORK/$log.log" 2>&1
}
if [[ $PART == all || $PART == teachers ]]; then
    # r6, r7: the ImageNet MobileNets fine-tuned; each run first imports its .tflite graph with batch
    # norm re-estimated on 512 training crops at the training size (amf.tflite_import.for_run).
    # Each pair side by side, one core each; a failed run stops the script (its log says why).
    train all-r6 --recipe r6 --out "$WORK/all-r6" & a=$!
    train all-r7 --recipe r7 --out "$WORK/all-r7" & b=$!
    wait $a
    wait $b
    "$PY" -m amf assemble --run "$WORK/all-r6" --run "$WORK/all-r7" --out "$WORK/model-r8" \
        --threshold youden --tta mirror
    train all-lite2-160 --recipe lite2-160 --out "$WORK/all-lite2-160" & a=$!
    train all-lite2-192 --recipe lite2-192 --out "$WORK/all-lite2-192" & b=$!
    wait $a
    wait $b
    for size in 160 192; do
        "$PY" -m amf assemble --run "$WORK/all-lite2-$size" --out "$WORK/model-lite2-$size" \
            --threshold youden --tta dihedral
    done
fi
if [[ $PART == all || $PART == student ]]; then
    # r6 at 160 px learning the three teachers' mean P(atypical) under the views each is served
    # with (mirror for model-r8, the 8 for the Lite2s), which become augmentation. Fold 0 first
    # fills the run's cache of the teachers' scores on every crop (about 70 min of one core); the
    # refit on every crop reuses it, beside the other folds.
    student=(--recipe r6 --size 160 --teacher "$WORK/model-r8" --teacher "$WORK/model-lite2-160"
        --teacher "$WORK/model-lite2-192")
    train student-0 "${student[@]}" --out "$WORK/student" --fold 0
    mkdir -p "$WORK/student-refit/all/teacher-scores"
    cp -lf "$WORK/student/all/teacher-scores/"*.npz "$WORK/student-refit/all/teacher-scores/"  # -f: a rerun resumes
    { for k in 1 2 3; do train "student-$k" "${student[@]}" --out "$WORK/student" --fold $k; done; } & a=$!
    { train student-refit "${student[@]}" --out "$WORK/student-refit" --refit
        train student-4 "${student[@]}" --out "$WORK/student" --fold 4; } & b=$!
    wait $a
    wait $b
    "$PY" -m amf assemble --run "$WORK/student" --refit "$WORK/student-refit" --out model/ \
        --threshold youden --tta dihedral
    "$PY" -m amf export-onnx --model model/ --crops test/input  # the graphs the container serves by default

    # The published test split, once, through the container's own entry point.
    "$PY" -m amf dataset --amibr "$AMIBR" --amibr-split test --by scanner --out "$WORK/amibr-test.csv" \
        --link "$WORK/amibr-test-crops"
    "$PY" inference.py --input "$WORK/amibr-test-crops" --output "$WORK/amibr-test-out" --model model/
    "$PY" -m amf score --predictions "$WORK/amibr-test-out/predictions.csv" --table "$WORK/amibr-test.csv" \
        --by scanner --out "$WORK/amibr-test-metrics.json"
fi
if [[ $PART == lodo ]]; then
    "$PY" -m amf plan --table "$WORK/amibr-train.csv" --domain scanner --out "$WORK/plan-scanner.json"
    # r6 (the student's network and fine-tuning, 128 px, the experts' soft labels, no teacher): each
    # domain held out in turn, 5 folds on the other three: 20 models, even and odd indices side by
    # side (both may write the run's settings and ImageNet import: the writes are atomic).
    PLAN=(--plan "$WORK/plan-scanner.json")
    lodo=(--recipe r6 --out "$WORK/scanner-r6")
    { for i in $(seq 0 2 18); do train "scanner-r6-$i" "${lodo[@]}" --index "$i"; done; } & a=$!
    { for i in $(seq 1 2 19); do train "scanner-r6-$i" "${lodo[@]}" --index "$i"; done; } & b=$!
    wait $a
    wait $b
    "$PY" -m amf evaluate --run "$WORK/scanner-r6" --out "$WORK/report-scanner" --tta dihedral  # as docs/lodo-scanner/ was made
fi
