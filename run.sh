#!/usr/bin/env bash
# Classify crops on this machine without a container: the README's one command for the main job.
#
#   ./run.sh --input <folder, stack file or grand-challenge input> --output <folder> [--model DIR]
#
# Creates .venv from requirements-dev.txt on first use (minutes: torch), then runs inference.py,
# exactly the container's entry point, with the same arguments. Any `python -m amf` command
# runs the same way: ./run.sh -m amf train --help.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"
ensure_venv
if [[ ${1:-} == -m ]]; then
    exec "$VENV/bin/python" "$@"
fi
exec "$VENV/bin/python" "$ROOT/inference.py" "$@"
