#!/usr/bin/env bash
# Run both inference images the way grand-challenge does and check what they write, then the
# training image's command line, then the unit tests (docs/container.md). One line per
# check: PASS / FAIL <check>: reason / SKIP <check>: reason. The inference checks run once per
# image: cpu/<check> on $AMF_CPU_IMAGE (ONNX Runtime, no torch), gpu/<check> on $AMF_IMAGE; a
# missing image (the training one included) is a failure. The `harness` check first tests this
# script's own failure handling (docker/test_harness.sh).
#
# Every run: --network none, /input read-only, a fresh /tmp, /output writable by the image's
# non-root user, the model (when one is mounted) read-only at /opt/ml/model, and a read-only root
# file system (stricter than grand-challenge: nothing may be written outside /output and /tmp).
# Confidences are compared with an absolute tolerance of $ATOL. Each check runs with `set -e`:
# a failing step (staging a folder, a reference run) fails the check, naming the step. So a step
# is never called from a `||` list or an `if` condition, where bash switches `set -e` off for
# everything the step runs: `cmd || { echo reason; return 1; }` only where cmd is what the check
# judges, such as one run of the image. With no container engine the same checks run through the
# local environments (cpu: .venv-serve, gpu: .venv), which proves the code, not an image.
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
SKIP=77 # a check's exit status for "skipped" (automake's convention; no command here returns it)
FLAVOUR=gpu # the image under test: cpu or gpu (set by main for each round of checks)
CHECK_STATUS=0 # the last check's exit status (run_check)

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

# The image of the flavour under test.
image() { if [[ $FLAVOUR == cpu ]]; then echo "$AMF_CPU_IMAGE"; else echo "$AMF_IMAGE"; fi; }

# predict INPUT OUTPUT [MODEL]: one grand-challenge run; its log goes to OUTPUT.log. Without an
# engine, inference.py in the flavour's local environment (the CPU image's only back end: ONNX).
predict() {
    local input=$1 output=$2 model=${3:-}
    if [[ $ENGINE == none && $FLAVOUR == cpu ]]; then
        AMF_BACKEND=onnx "$SERVE_VENV/bin/python" "$ROOT/inference.py" \
            --input "$input" --output "$output" ${model:+--model "$model"}
    elif [[ $ENGINE == none ]]; then
        "$PY" "$ROOT/inference.py" --input "$input" --output "$output" ${model:+--model "$model"}
    else
        local args=(run --rm --network none --read-only --tmpfs /tmp
            --volume "$input:/input:ro" --volume "$output:/output")
        [[ -n $model ]] && args+=(--volume "$model:/opt/ml/model:ro")
        engine "${args[@]}" "$(image)"
    fi >"$output.log" 2>&1
}

# local_predict INPUT OUTPUT MODEL: what the flavour's code gives outside any image (a reference).
local_predict() {
    local python=$PY
    [[ $FLAVOUR == cpu ]] && python="$SERVE_VENV/bin/python"
    "$python" "$ROOT/inference.py" --input "$1" --output "$2" --model "$3" >"$2.log" 2>&1
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

names_graphs() {
    "$PY" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get("onnx") else 1)' "$1/manifest.json"
}

# The fixture ensemble the override check mounts. The GPU image takes it as committed (torch-only:
# its PyTorch back end); the CPU image has only ONNX Runtime, so it gets the fixture with ONNX
# graphs: the committed one when its manifest names graphs, else a copy exported here with
# `python -m amf export-onnx` (about 1 minute), cached under build/ by the fixture's contents.
override_fixture() {
    if [[ $FLAVOUR == gpu ]] || names_graphs "$FIXTURE"; then
        echo "$FIXTURE"
        return
    fi
    local key dest
    key=$(cat "$FIXTURE"/* "$ROOT"/amf/onnx_export.py | sha256sum | cut -c1-12)
    dest="$ROOT/build/fixture-onnx/$key"
    if [[ ! -f $dest/manifest.json ]]; then
        rm -rf "$dest" "$dest.part"
        mkdir -p "$dest.part"
        cp "$FIXTURE"/* "$dest.part/"
        "$PY" -m amf export-onnx --model "$dest.part" --crops "$ROOT/test/input" >"$dest.log" 2>&1 \
            || { echo "exporting the fixture to ONNX failed: $(last_line "$dest.log")" >&2; return 1; }
        mv "$dest.part" "$dest"
    fi
    echo "$dest"
}

relative() { echo "${1#"$ROOT/"}/"; }

compare() { "$PY" "$ROOT/test/compare_output.py" --atol "$ATOL" "$@"; }

# A log's last line, without podman's harmless warnings (sed, not grep -v: no lines is no error).
last_line() { sed '/level=warning/d' "$1" | tail -n 1; }

# ---------------------------------------------------------------- checks (echo reason; 0 pass, $SKIP skip, else fail)

check_image_config() {
    [[ $ENGINE != none ]] || { echo "no container engine"; return $SKIP; }
    local config uid
    config=$(engine image inspect --format \
        '{{.Config.User}}|{{.Config.WorkingDir}}|{{json .Config.Entrypoint}}|{{json .Config.Env}}' "$(image)")
    uid=$(engine run --rm --network none --entrypoint id "$(image)" -u)
    [[ -n ${config%%|*} && $uid != 0 ]] || { echo "runs as root (user '${config%%|*}', uid $uid)"; return 1; }
    [[ $config == *"|/opt/app|"* ]] || { echo "WORKDIR is not /opt/app: $config"; return 1; }
    [[ ${config// /} == *'["python","inference.py"]'* ]] || { echo "entry point is not python inference.py"; return 1; }
    [[ $config == *HF_HUB_OFFLINE=1* ]] || { echo "HF_HUB_OFFLINE=1 is not set"; return 1; }
    [[ $config == *ORT_DISABLE_TELEMETRY=1* ]] || { echo "ORT_DISABLE_TELEMETRY=1 is not set"; return 1; }
    local method
    method=$(engine image inspect --format '{{ index .Config.Labels "org.grand-challenge.api-method" }}' "$(image)")
    [[ $method == exec ]] || { echo "label org.grand-challenge.api-method is '$method', not exec"; return 1; }
    local extra=""
    if [[ $FLAVOUR == cpu ]]; then
        # The CPU image's promise: no torch, ONNX Runtime's CPU build, the ONNX back end.
        [[ $config == *AMF_BACKEND=onnx* ]] || { echo "AMF_BACKEND=onnx is not set"; return 1; }
        engine run --rm --network none --entrypoint python "$(image)" -c \
            'import importlib.util as u, onnxruntime as o, sys; sys.exit(u.find_spec("torch") is not None or "CPUExecutionProvider" not in o.get_available_providers())' \
            || { echo "torch is installed, or onnxruntime has no CPU provider"; return 1; }
        extra=", no torch, ONNX Runtime $(engine run --rm --network none --entrypoint python "$(image)" \
            -c 'import onnxruntime; print(onnxruntime.__version__)')"
    fi
    local size
    size=$(image_size "$(image)")
    echo "uid $uid, /opt/app, python inference.py, offline$extra, $size"
}

# run_and_compare INPUT MODEL_MOUNT COMPARE_ARGS...: one run, then compare_output.py on its JSON.
run_and_compare() {
    local input output
    input=$(stage "$1")
    output=$(new_output)
    local model=""
    [[ -z $2 ]] || model=$(stage "$2")
    predict "$input" "$output" "$model" || { echo "exit $?: $(last_line "$output.log")"; return 1; }
    shift 2
    compare "$output/$OUTPUT_NAME" "$@" || return # the verdict: compare_output.py said why
}

check_expected() {
    local model
    model=$(reference_model)
    run_and_compare "$ROOT/test/input" "$model" \
        --input "$ROOT/test/input" --model "$model" --expected "$EXPECTED"
    echo "test/input, $(relative "$model") mounted: equals test/expected_output.json"
}

check_baked() {
    [[ -f $ROOT/model/manifest.json ]] || { echo "no ensemble baked into model/"; return $SKIP; }
    run_and_compare "$ROOT/test/input" "" \
        --input "$ROOT/test/input" --model "$ROOT/model" --expected "$EXPECTED"
    echo "no model mounted: the baked model/ gave test/expected_output.json"
}

# The fixture mounted over a baked ensemble must win: its output equals the fixture's (computed
# here by the same back end's local code) and differs from the baked one's.
check_override() {
    local fixture reference=$EXPECTED extra=()
    fixture=$(override_fixture)
    if [[ -f $ROOT/model/manifest.json || $fixture != "$FIXTURE" ]]; then
        reference=$(new_output)
        local_predict "$ROOT/test/input" "$reference" "$fixture" \
            || { echo "local fixture run: $(last_line "$reference.log")"; return 1; }
        reference="$reference/$OUTPUT_NAME"
    fi
    [[ -f $ROOT/model/manifest.json ]] && extra=(--differs-from "$EXPECTED")
    run_and_compare "$ROOT/test/input" "$fixture" \
        --model "$fixture" --expected "$reference" "${extra[@]}"
    echo "$(relative "$fixture") mounted: the fixture's predictions"
}

check_gc_sample() {
    local sample="$DATA/gc-sample/input" model
    [[ -d $sample ]] || { echo "no real sample at ../shared/data/gc-sample"; return $SKIP; }
    model=$(reference_model)
    run_and_compare "$sample" "$model" --input "$sample" --model "$model"
    echo "real sample stack, $(relative "$model") mounted: one valid prediction per page"
}

# A corrupt stack must end the run with inference.py's exit status 2 and one error line naming the
# file, and leave /output empty (any other failure, such as an engine that cannot start, fails).
check_broken_input() {
    local source="$WORK/broken" input output model
    mkdir -p "$source/images/$SLUG"
    cp "$ROOT/test/input/inputs.json" "$source/"
    head -c 4096 /dev/urandom >"$source/images/$SLUG/stack_broken.tiff"
    input=$(stage "$source")
    output=$(new_output)
    model=$(stage "$(reference_model)")
    local status=0 line
    predict "$input" "$output" "$model" || status=$?
    line=$(last_line "$output.log")
    ((status == 2)) || { echo "exit $status, not 2, on a corrupt stack: $line"; return 1; }
    [[ $line == ERROR*stack_broken.tiff* ]] || { echo "no error line naming the stack: $line"; return 1; }
    [[ -z $(ls -A "$output") ]] || { echo "left files in /output: $(ls -A "$output")"; return 1; }
    ! grep -q Traceback "$output.log" || { echo "a traceback instead of one error line"; return 1; }
    echo "corrupt stack: exit $status, /output empty, ${line:0:90}..."
}

# ---------------------------------------------------------------- invoke mode

# The invoke-mode twin of the image under test.
invoke_image() { if [[ $FLAVOUR == cpu ]]; then echo "$AMF_CPU_INVOKE_IMAGE"; else echo "$AMF_INVOKE_IMAGE"; fi; }

# invoke_cases DIR: the tasks of check_invoke, one folder each, in the order they run: the real
# sample (else test/input), a plain folder of crops, a corrupt stack, the sample again.
invoke_cases() {
    local sample="$DATA/gc-sample/input"
    [[ -d $sample ]] || sample="$ROOT/test/input"
    mkdir -p "$1/folder/crops" "$1/hostile/images/$SLUG"
    cp -R "$sample/." "$1/sample/"
    cp -R "$sample/." "$1/sample-again/"
    cp "$ROOT/test/input/images/$SLUG/"* "$1/folder/crops/"
    cp "$ROOT/test/input/inputs.json" "$1/hostile/"
    head -c 4096 /dev/urandom >"$1/hostile/images/$SLUG/stack_broken.tiff"
    chmod -R a+rX "$1"
}

# run_invoke CASES COLLECT MODEL LOG: start the invoke image once (--network none, model and cases
# read-only), drive it with docker/invoke_driver.py from inside its network namespace (podman
# exec, as root like the platform's shim), then SIGTERM it; the server's log goes to LOG and the
# seconds from SIGTERM to its exit to LOG.stop. Without an engine, the same through `python -m
# amf serve` in the flavour's local environment, on a free loopback port.
run_invoke() {
    local cases=$1 collect=$2 model=$3 log=$4 driver=(invoke_driver.py --health-call-timeout 1)
    local names=(sample folder hostile sample-again) start status=0
    if [[ $ENGINE == none ]]; then
        local python=$PY port io="$WORK/invoke-io-$FLAVOUR"
        [[ $FLAVOUR == cpu ]] && python="$SERVE_VENV/bin/python"
        port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        mkdir -p "$io/output"
        (cd "$ROOT" && exec "$python" -m amf serve --input "$io/input" --output "$io/output" --model "$model" \
            --host 127.0.0.1 --port "$port") >"$log" 2>&1 &
        local pid=$!
        "$PY" "$ROOT/docker/${driver[0]}" "${driver[@]:1}" --port "$port" --input "$io/input" \
            --output "$io/output" --linked-parent "$io/data" --cases "$cases" --collect "$collect" "${names[@]}" \
            || status=$?
        start=$EPOCHREALTIME
        kill -TERM "$pid"
        wait "$pid" || true
    else
        local container="amf-invoke-check-$$-$FLAVOUR"
        engine run -d --name "$container" --network none --tmpfs /tmp \
            --volume "$model:/opt/ml/model:ro" --volume "$cases:/cases:ro" --volume "$collect:/collected" \
            --volume "$ROOT/docker/${driver[0]}:/opt/driver/${driver[0]}:ro" "$(invoke_image)" >/dev/null
        # shellcheck disable=SC2064 # the name now, not at exit
        trap "engine rm -f $container >/dev/null 2>&1" EXIT
        engine exec --user 0 "$container" python "/opt/driver/${driver[0]}" "${driver[@]:1}" \
            --cases /cases --collect /collected "${names[@]}" || status=$?
        start=$EPOCHREALTIME
        engine kill --signal TERM "$container" >/dev/null
        timeout 10 "$ENGINE" wait "$container" >/dev/null
        engine logs "$container" >"$log" 2>&1
    fi
    awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f\n", b - a }' >"$log.stop"
    return "$status"
}

# grand-challenge's invoke mode, as the platform runs it: one process for several tasks, each a
# fresh /input link; 201 and valid predictions for good input, a non-201 and nothing written for
# a corrupt stack, one error line in the log, the next task served; SIGTERM -> exit within 5 s.
check_invoke() {
    local cases="$WORK/invoke-cases-$FLAVOUR" collect model log="$WORK/invoke-$FLAVOUR.log" sample
    if [[ $ENGINE != none ]]; then
        image_exists "$(invoke_image)" || { echo "no image $(invoke_image) ($ENGINE): run ./build.sh"; return 1; }
        local label
        label=$(engine image inspect --format '{{ index .Config.Labels "org.grand-challenge.api-method" }}' "$(invoke_image)")
        [[ $label == invoke ]] || { echo "label org.grand-challenge.api-method is '$label', not invoke"; return 1; }
    fi
    invoke_cases "$cases"
    collect=$(new_output)
    model=$(stage "$(reference_model)")
    run_invoke "$cases" "$collect" "$model" "$log" >"$WORK/invoke-driver-$FLAVOUR.log" 2>&1 \
        || { echo "the run failed: $(last_line "$WORK/invoke-driver-$FLAVOUR.log")"; return 1; }
    local statuses
    statuses=$(cat "$collect"/{sample,folder,hostile,sample-again}.status | paste -sd ' ')
    [[ $statuses =~ ^201\ 201\ [0-9]+\ 201$ && $statuses != *" 201 201 201" ]] \
        || { echo "statuses (sample folder hostile sample-again): $statuses, expected 201 201 non-201 201"; return 1; }
    [[ ! -e $collect/hostile ]] || { echo "the corrupt stack's task wrote $(ls -A "$collect/hostile")"; return 1; }
    sample="$cases/sample"
    compare "$collect/sample/$OUTPUT_NAME" --input "$sample" --model "$model"
    compare "$collect/sample-again/$OUTPUT_NAME" --expected "$collect/sample/$OUTPUT_NAME"
    compare "$collect/folder/$OUTPUT_NAME" --input "$cases/folder" --model "$model"
    [[ -f $collect/folder/predictions.csv ]] || { echo "the folder's task wrote no predictions.csv"; return 1; }
    local errors
    errors=$(grep -c '^ERROR' "$log" || true)
    [[ $errors == 1 ]] && grep -q '^ERROR amf.server: .*stack_broken.tiff' "$log" \
        || { echo "$errors ERROR lines in the server's log, expected one naming stack_broken.tiff"; return 1; }
    ! grep -q Traceback "$log" || { echo "a traceback in the server's log"; return 1; }
    grep -q 'terminated: shutting down' "$log" || { echo "no clean exit on SIGTERM: $(last_line "$log")"; return 1; }
    local stop
    stop=$(cat "$log.stop")
    awk -v s="$stop" 'BEGIN { exit !(s < 5) }' || { echo "exit took $stop s after SIGTERM (limit 5)"; return 1; }
    echo "$(head -n 1 "$WORK/invoke-driver-$FLAVOUR.log"); statuses $statuses; SIGTERM -> exit in $stop s"
}

# The training image is built by ./build.sh like the inference images: missing, it fails.
train_image_built() {
    [[ $ENGINE == none ]] || image_exists "$AMF_TRAIN_IMAGE" \
        || { echo "no image $AMF_TRAIN_IMAGE ($ENGINE): run ./build.sh"; return 1; }
}

check_train_help() {
    train_image_built
    train_cli --help >"$WORK/train-help.log" 2>&1 || { echo "exit $?: $(last_line "$WORK/train-help.log")"; return 1; }
    grep -q '^usage: amf' "$WORK/train-help.log" || { echo "no usage text"; return 1; }
    grep -q '^  dataset -> plan -> \[import-tflite\] -> train' "$WORK/train-help.log" \
        || { echo "no order of work in the help"; return 1; }
    echo "python -m amf --help: usage, order of work and $(grep -cE '^    [a-z-]+( |$)' "$WORK/train-help.log") commands"
}

check_train_dataset() {
    train_image_built
    [[ -d $DATA/ami-br && -d $DATA/midog25 ]] || { echo "no real data at ../shared/data"; return $SKIP; }
    local data=/data log="$WORK/train-dataset.log"
    [[ $ENGINE == none ]] && data=$DATA
    train_cli dataset --amibr "$data/ami-br" \
        --midog25 "$data/midog25/MIDOG25_Atypical_Classification_Train_Set.csv" >"$log" 2>&1 \
        || { echo "exit $?: $(last_line "$log")"; return 1; }
    grep -q '^| Total |' "$log" || { echo "no summary table: $(last_line "$log")"; return 1; }
    echo "dataset summary of ../shared/data: $(grep '^| Total |' "$log")"
}

# ---------------------------------------------------------------- driver

# The ERR trap of a check: the command that failed (not a check's own `return`).
name_failed_step() {
    local status=$?
    [[ $BASH_COMMAND == return* || $BASH_COMMAND == check_* ]] \
        || echo "step failed (exit $status): $BASH_COMMAND" >&2
}

# run_check NAME [LABEL]: one check, in a subshell with `set -e` in force (errexit is off in
# any function called from a `||` list or an `if` condition, so a failing setup step could
# otherwise let a check pass); the ERR trap names the step that failed. The check's output is its
# reason. Sets CHECK_STATUS (0 pass, $SKIP skip, else fail) instead of returning it: never call
# run_check itself from a `||` list or a condition, which would switch `set -e` off inside again.
run_check() {
    local name=$1 label=${2:-$1} status=0 start=$EPOCHREALTIME log
    log=$(mktemp "$WORK/check.XXXXXX")
    (
        set -eE
        trap name_failed_step ERR
        "check_${name//-/_}"
    ) >"$log" 2>&1 &
    wait $! || status=$?
    local reason seconds
    reason=$(sed '/level=warning/d' "$log" | tail -n 5 | paste -sd ' ')
    seconds=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    case $status in
        0) echo "PASS $label ($seconds s): $reason" && PASSED=$((PASSED + 1)) ;;
        "$SKIP") echo "SKIP $label: $reason" && SKIPPED=$((SKIPPED + 1)) ;;
        *) echo "FAIL $label: ${reason:-exit $status} ($seconds s)" && FAILED=$((FAILED + 1)) ;;
    esac
    CHECK_STATUS=$status
}

# Each inference image must exist: a missing one is a failure, not a skipped round.
check_built() {
    [[ $ENGINE == none ]] && { echo "no container engine: through the local environment"; return 0; }
    image_exists "$(image)" || { echo "no image $(image) ($ENGINE): run ./build.sh"; return 1; }
    local base
    base=$(image_base "$(image)")
    echo "$(image), base $base"
}

# This script's own failure handling, tested with stubbed steps (seconds, no image).
check_harness() {
    local log="$WORK/harness.log"
    bash "$ROOT/docker/test_harness.sh" >"$log" 2>&1 || { sed '/^ok /d' "$log"; return 1; }
    tail -n 1 "$log"
}

main() {
    use_engine detect
    if [[ $ENGINE == none ]]; then
        say "no container engine (docker or podman): running the checks through the local Python" \
            "environments instead (cpu: .venv-serve, gpu: .venv); this proves the code, not an image"
    fi
    ensure_venv
    ensure_serve_venv
    PY="$VENV/bin/python"
    WORK=$(mktemp -d)
    chmod 755 "$WORK"
    trap 'rm -rf "$WORK"' EXIT
    local name
    run_check harness
    for FLAVOUR in cpu gpu; do
        run_check built "$FLAVOUR/built"
        if ((CHECK_STATUS != 0)); then
            echo "SKIP $FLAVOUR/*: the other $FLAVOUR checks, for want of the image"
            continue
        fi
        for name in image-config expected baked override gc-sample broken-input invoke; do
            run_check "$name" "$FLAVOUR/$name"
        done
    done
    for name in train-help train-dataset; do
        run_check "$name"
    done
    echo "container checks: $PASSED passed, $FAILED failed, $SKIPPED skipped"
    local status=0
    [[ ${AMF_SKIP_PYTEST:-} == 1 ]] || (cd "$ROOT" && "$PY" -m pytest -q) || status=$?
    ((FAILED == 0)) || status=1
    return "$status"
}

# Sourced (docker/test_harness.sh), it only defines the checks.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main
fi
