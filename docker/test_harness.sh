#!/usr/bin/env bash
# shellcheck disable=SC2317,SC2016 # the stubs are called by the checks; $(...) in quotes is text to match
# test.sh's own failure handling, tested: a check whose step fails must report FAIL and name the
# step, even where bash would ignore the failure (a step called from a `||` list); a check that
# fails silently still gets its FAIL line. Steps that would run an image are stubbed, so this
# takes seconds and needs no engine. Run by ./test.sh as its `harness` check, or on its own:
#
#   bash docker/test_harness.sh [TEST_SH]      (default: the test.sh beside docker/)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=test.sh
source "${1:-$HERE/../test.sh}" # defines the checks and run_check; runs nothing

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ENGINE=none FLAVOUR=cpu
mkdir "$WORK/model"
echo '{}' >"$WORK/model/manifest.json"
reference_model() { echo "$WORK/model"; } # a tiny stand-in for model/: staged by every check

inference_ok() { :; }
compare() { :; }
# inference.py's answer to a corrupt stack: exit 2 and one error line naming the file.
refuses_stack() {
    echo "ERROR amf: /input/images/$SLUG/stack_broken.tiff: cannot read image" >"$2.log"
    return 2
}

# The cases, each in the subshell of its $(...), so that its stubs stay there.
all_steps_work() { predict() { inference_ok; }; run_check expected; }
model_copy_fails() {
    predict() { inference_ok; }
    cp() { if [[ $2 == "$WORK/model/." ]]; then return 1; fi; command cp "$@"; } # cp -R model/. DEST
    run_check expected
}
refused() { predict() { refuses_stack "$@"; }; run_check broken-input; }
engine_fails() {
    predict() { echo "Error: cannot start the container" >"$2.log"; return 125; }
    run_check broken-input
}
silent() { check_silent() { return 3; }; run_check silent; }
substitution() { check_substitution() { local x; x=$(false); echo "x is '$x'"; }; run_check substitution; }

WRONG=0
# verdict WANT TEXT LINE: LINE (a check's result line) must start with WANT and contain TEXT.
verdict() {
    if [[ $3 == "$1 "* && $3 == *"$2"* ]]; then
        echo "ok    $3"
    else
        echo "WRONG (wanted $1 with '$2'): ${3:-no result line}"
        WRONG=$((WRONG + 1))
    fi
}
verdict PASS "equals test/expected_output.json" "$(all_steps_work)"
verdict FAIL 'step failed (exit 1): model=$(stage' "$(model_copy_fails)"
verdict PASS "corrupt stack: exit 2" "$(refused)"
verdict FAIL "exit 125, not 2" "$(engine_fails)"
verdict FAIL "silent: exit 3" "$(silent)"
verdict FAIL 'step failed (exit 1): x=$(false)' "$(substitution)"
((WRONG == 0)) || exit 1
echo "6 cases: a failing step fails its check and is named; control cases pass"
