#!/usr/bin/env bash
# Run the built image the way grand-challenge does, check what it writes, then the unit tests
# (README.md, "Container"). One line per check: PASS / FAIL <check>: reason / SKIP <check>: reason.
#
# Every run: --network none, /input read-only, a fresh /tmp, /output writable by the image's
# non-root user, the model (when one is mounted) read-only at /opt/ml/model, and a read-only root
# file system (stricter than grand-challenge: nothing may be written outside /output and /tmp).
# Confidences are compared with an absolute tolerance of $ATOL. With no container engine the same
# checks run through the local Python environment (.venv), which proves the code, not an image.
# AMF_SKIP_PYTEST=1 ./test.sh runs the container checks only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"

ATOL=1e-4
OUTPUT_NAME=multiple-mitotic-figure-classification.json
SLUG=stacked-histopathology-roi-cropouts
DATA="$ROOT/../shared/data"
FIXTURE="$ROOT/test/fixtures/ensemble"
EXPECTED="$ROOT/test/expected_output.json"
PASSED=0 FAILED=0 SKIPPED=0

# ---------------------------------------------------------------- running the image (or the code)

# A world-readable copy of a folder: the image's user (uid 999 under podman) must read it.
stage() {
    local dest
    dest=$(mktemp -d "$WORK/in.XXXXXX")
    cp -R "$1/." "$dest/"
    chmod -R a+rX "$dest"
    echo "$dest"
}

new_output() {
    local dest
    dest=$(mktemp -d "$WORK/out.XXXXXX")
    chmod 777 "$dest"
    echo "$dest"
}

# predict INPUT OUTPUT [MODEL]: one grand-challenge run; its log goes to OUTPUT.log.
predict() {
    local input=$1 output=$2 model=${3:-}
    if [[ $ENGINE == none ]]; then
        "$PY" "$ROOT/inference.py" --input "$input" --output "$output" ${model:+--model "$model"}
    else
        local args=(run --rm --network none --read-only --tmpfs /tmp
            --volume "$input:/input:ro" --volume "$output:/output")
        [[ -n $model ]] && args+=(--volume "$model:/opt/ml/model:ro")
        engine "${args[@]}" "$AMF_IMAGE"
    fi >"$output.log" 2>&1
}

# train_cli ARGS...: the training image's command line (or the local one), data read-only
# when this checkout has ../shared/data beside it.
train_cli() {
    if [[ $ENGINE == none ]]; then
        (cd "$ROOT" && "$PY" -m amf "$@")
    else
        local args=(run --rm --network none --read-only --tmpfs /tmp)
        [[ -d $DATA ]] && args+=(--volume "$DATA:/data:ro")
        engine "${args[@]}" "$AMF_TRAIN_IMAGE" "$@"
    fi
}

# The ensemble test/expected_output.json was made from (test/make_fixtures.py): model/ when it
# holds one, else the fixture.
reference_model() {
    if [[ -f $ROOT/model/manifest.json ]]; then echo "$ROOT/model"; else echo "$FIXTURE"; fi
}

relative() { echo "${1#"$ROOT/"}/"; }

compare() { "$PY" "$ROOT/test/compare_output.py" --atol "$ATOL" "$@"; }

last_line() { grep -v 'level=warning' "$1" | tail -n 1; }

# ---------------------------------------------------------------- checks (echo reason; 0 pass, 1 fail, 3 skip)

check_image_config() {
    [[ $ENGINE != none ]] || { echo "no container engine"; return 3; }
    local config uid
    config=$(engine image inspect --format \
        '{{.Config.User}}|{{.Config.WorkingDir}}|{{json .Config.Entrypoint}}|{{json .Config.Env}}' "$AMF_IMAGE")
    uid=$(engine run --rm --network none --entrypoint id "$AMF_IMAGE" -u)
    [[ -n ${config%%|*} && $uid != 0 ]] || { echo "runs as root (user '${config%%|*}', uid $uid)"; return 1; }
    [[ $config == *"|/opt/app|"* ]] || { echo "WORKDIR is not /opt/app: $config"; return 1; }
    [[ ${config// /} == *'["python","inference.py"]'* ]] || { echo "entry point is not python inference.py"; return 1; }
    [[ $config == *HF_HUB_OFFLINE=1* ]] || { echo "HF_HUB_OFFLINE=1 is not set"; return 1; }
    echo "uid $uid, /opt/app, python inference.py, offline"
}

# run_and_compare INPUT MODEL_MOUNT COMPARE_ARGS...: one run, then compare_output.py on its JSON.
run_and_compare() {
    local input output
    input=$(stage "$1")
    output=$(new_output)
    local model=${2:+$(stage "$2")}
    predict "$input" "$output" "$model" || { echo "exit $?: $(last_line "$output.log")"; return 1; }
    shift 2
    compare "$output/$OUTPUT_NAME" "$@"
}

check_expected() {
    local model
    model=$(reference_model)
    run_and_compare "$ROOT/test/input" "$model" \
        --input "$ROOT/test/input" --model "$model" --expected "$EXPECTED" || return 1
    echo "test/input, $(relative "$model") mounted: equals test/expected_output.json"
}

check_baked() {
    [[ -f $ROOT/model/manifest.json ]] || { echo "no ensemble baked into model/"; return 3; }
    run_and_compare "$ROOT/test/input" "" \
        --input "$ROOT/test/input" --model "$ROOT/model" --expected "$EXPECTED" || return 1
    echo "no model mounted: the baked model/ gave test/expected_output.json"
}

# The fixture mounted over a baked ensemble must win: its output equals the fixture's (computed
# here by the local code) and differs from the baked one's.
check_override() {
    local reference=$EXPECTED extra=()
    if [[ -f $ROOT/model/manifest.json ]]; then
        reference=$(new_output)
        "$PY" "$ROOT/inference.py" --input "$ROOT/test/input" --output "$reference" --model "$FIXTURE" \
            >"$reference.log" 2>&1 || { echo "local fixture run: $(last_line "$reference.log")"; return 1; }
        reference="$reference/$OUTPUT_NAME"
        extra=(--differs-from "$EXPECTED")
    fi
    run_and_compare "$ROOT/test/input" "$FIXTURE" \
        --model "$FIXTURE" --expected "$reference" "${extra[@]}" || return 1
    echo "test/fixtures/ensemble/ mounted: the fixture's predictions"
}

check_gc_sample() {
    local sample="$DATA/gc-sample/input" model
    [[ -d $sample ]] || { echo "no real sample at ../shared/data/gc-sample"; return 3; }
    model=$(reference_model)
    run_and_compare "$sample" "$model" --input "$sample" --model "$model" || return 1
    echo "real sample stack, $(relative "$model") mounted: one valid prediction per page"
}

# A corrupt stack must end the run with an error line and leave /output empty.
check_broken_input() {
    local source="$WORK/broken" input output model
    mkdir -p "$source/images/$SLUG"
    cp "$ROOT/test/input/inputs.json" "$source/"
    head -c 4096 /dev/urandom >"$source/images/$SLUG/stack_broken.tiff"
    input=$(stage "$source")
    output=$(new_output)
    model=$(stage "$(reference_model)")
    local status=0
    predict "$input" "$output" "$model" || status=$?
    ((status != 0)) || { echo "exit 0 on a corrupt stack"; return 1; }
    [[ -z $(ls -A "$output") ]] || { echo "left files in /output: $(ls -A "$output")"; return 1; }
    ! grep -q Traceback "$output.log" || { echo "a traceback instead of one error line"; return 1; }
    echo "corrupt stack: exit $status, /output empty, $(last_line "$output.log" | cut -c1-90)..."
}

check_train_help() {
    [[ $ENGINE == none ]] || image_exists "$AMF_TRAIN_IMAGE" \
        || { echo "training image not built (./build.sh train)"; return 3; }
    train_cli --help >"$WORK/train-help.log" 2>&1 || { echo "exit $?: $(last_line "$WORK/train-help.log")"; return 1; }
    grep -q '^usage: amf' "$WORK/train-help.log" || { echo "no usage text"; return 1; }
    echo "python -m amf --help: $(grep -o '{[^}]*}' "$WORK/train-help.log" | head -n 1)"
}

check_train_dataset() {
    [[ $ENGINE == none ]] || image_exists "$AMF_TRAIN_IMAGE" \
        || { echo "training image not built (./build.sh train)"; return 3; }
    [[ -d $DATA/ami-br && -d $DATA/midog25 ]] || { echo "no real data at ../shared/data"; return 3; }
    local data=/data log="$WORK/train-dataset.log"
    [[ $ENGINE == none ]] && data=$DATA
    train_cli dataset --amibr "$data/ami-br" \
        --midog25 "$data/midog25/MIDOG25_Atypical_Classification_Train_Set.csv" >"$log" 2>&1 \
        || { echo "exit $?: $(last_line "$log")"; return 1; }
    grep -q '^| Total |' "$log" || { echo "no summary table: $(last_line "$log")"; return 1; }
    echo "dataset summary of ../shared/data: $(grep '^| Total |' "$log")"
}

# ---------------------------------------------------------------- driver

run_check() {
    local name=$1 reason status=0 start=$EPOCHREALTIME
    reason=$("check_${name//-/_}" 2>&1) || status=$?
    local seconds
    seconds=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    case $status in
        0) echo "PASS $name ($seconds s): $reason" && PASSED=$((PASSED + 1)) ;;
        3) echo "SKIP $name: $reason" && SKIPPED=$((SKIPPED + 1)) ;;
        *) echo "FAIL $name: ${reason:-exit $status} ($seconds s)" && FAILED=$((FAILED + 1)) ;;
    esac
}

main() {
    use_engine detect
    if [[ $ENGINE == none ]]; then
        say "no container engine (docker or podman): running the checks through the local Python" \
            "environment instead; this proves the code, not an image"
    else
        image_exists "$AMF_IMAGE" || die "no image $AMF_IMAGE ($ENGINE): run ./build.sh first"
        say "checking $AMF_IMAGE ($ENGINE, base $(image_base "$AMF_IMAGE"))"
    fi
    ensure_venv
    PY="$VENV/bin/python"
    WORK=$(mktemp -d)
    chmod 755 "$WORK"
    trap 'rm -rf "$WORK"' EXIT
    for name in image-config expected baked override gc-sample broken-input train-help train-dataset; do
        run_check "$name"
    done
    echo "container checks: $PASSED passed, $FAILED failed, $SKIPPED skipped"
    local status=0
    [[ ${AMF_SKIP_PYTEST:-} == 1 ]] || (cd "$ROOT" && "$PY" -m pytest -q) || status=$?
    ((FAILED == 0)) || status=1
    return "$status"
}

main
