#!/usr/bin/env bash
# Classify crops on this machine without a container: the README's one command for the main job.
#
#   ./run.sh --input <folder, stack file or grand-challenge input> --output <folder> [--model DIR]
#   ./run.sh --help                     inference.py's options
#   ./run.sh -m amf <command> ...       training, evaluation, export: `python -m amf`
#
# Runs inference.py, exactly the CPU image's entry point, with the same arguments, in .venv-serve:
# ONNX Runtime, numpy and Pillow from requirements.txt, no torch (created on first use in
# seconds). An ensemble whose manifest names no ONNX graph, or `--backend torch` /
# AMF_BACKEND=torch, needs PyTorch: then it runs in .venv (requirements-dev.txt, minutes the first
# time), as `-m amf` commands always do.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"

# Exit status 0 when inference.py with these arguments would take the PyTorch back end
# (amf.predict.choose_backend, run in the torch-free serving environment). A manifest it cannot
# read is left to inference.py to report.
wants_torch() {
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$SERVE_VENV/bin/python" - "$@" <<'EOF'
import argparse, sys
from amf import manifest, predict

parser = argparse.ArgumentParser(add_help=False)
parser.add_argument("--model")
parser.add_argument("--backend")
args, _ = parser.parse_known_args(sys.argv[1:])
try:
    ensemble_manifest = manifest.load(args.model or predict.default_model_dir())
    sys.exit(0 if predict.choose_backend(ensemble_manifest, args.backend) == "torch" else 1)
except Exception:
    sys.exit(1)
EOF
}

main() {
    if [[ ${1:-} == -m ]]; then
        ensure_venv
        exec "$VENV/bin/python" "$@"
    fi
    ensure_serve_venv
    if [[ " $* " == *" -h "* || " $* " == *" --help "* ]]; then
        say "./run.sh = python inference.py (the container's entry point) in .venv-serve;" \
            "./run.sh -m amf --help for training and export. inference.py's options:"
    elif wants_torch "$@"; then
        say "this ensemble needs the PyTorch back end (no ONNX graph in its manifest, or --backend torch):" \
            "running in .venv (requirements-dev.txt) instead of .venv-serve"
        ensure_venv
        exec "$VENV/bin/python" "$ROOT/inference.py" "$@"
    fi
    exec "$SERVE_VENV/bin/python" "$ROOT/inference.py" "$@"
}

main "$@"
