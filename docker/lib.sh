# shellcheck shell=bash
# Shared by build.sh, test.sh and export.sh (sourced, after `set -euo pipefail` and ROOT=...):
# which container engine to use, the image names, the local Python environment, and the
# package-source mounts a podman build needs on our CI machines. See docs/container.md.

# `set -e` also inside $(...): a failing step in a command substitution fails its caller instead
# of handing on half a result (bash clears -e there by default).
shopt -s inherit_errexit

# The GPU inference image (the one to upload), the CPU inference image, the training image.
AMF_IMAGE="${AMF_IMAGE:-amf:latest}"
AMF_CPU_IMAGE="${AMF_CPU_IMAGE:-amf-cpu:latest}"
AMF_TRAIN_IMAGE="${AMF_TRAIN_IMAGE:-amf-train:latest}"

# invoke_name IMAGE: the invoke-mode twin of an exec image's name (amf:latest -> amf-invoke:latest).
invoke_name() {
    local repository=${1%:*} tag=latest
    [[ $1 == *:* && ${1##*:} != */* ]] && tag=${1##*:} || repository=$1
    echo "$repository-invoke:$tag"
}

# The same two inference images in grand-challenge's invoke mode (Dockerfile, *-invoke targets).
AMF_INVOKE_IMAGE="${AMF_INVOKE_IMAGE:-$(invoke_name "$AMF_IMAGE")}"
AMF_CPU_INVOKE_IMAGE="${AMF_CPU_INVOKE_IMAGE:-$(invoke_name "$AMF_CPU_IMAGE")}"
VENV="$ROOT/.venv"             # requirements-dev.txt: training, export, tests
SERVE_VENV="$ROOT/.venv-serve" # requirements.txt: inference.py through ONNX Runtime, no torch

say() { printf '[amf] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# Docker when an engine answers, else podman (run with docker/containers.conf unless the caller
# chose another CONTAINERS_CONF), else nothing; AMF_ENGINE=docker|podman|none forces a choice.
# Prints docker, podman or none.
detect_engine() {
    if [[ -n ${AMF_ENGINE:-} ]]; then
        echo "$AMF_ENGINE"
    elif command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; then
        echo docker
    elif command -v podman >/dev/null; then
        echo podman
    else
        echo none
    fi
}

# podman and what it needs here, on Debian as root: runc (crun fails in our sandbox), netavark,
# aardvark-dns and iptables (netavark calls it), debootstrap for the stand-in base.
install_podman() {
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        return 1
    fi
    say "installing podman runc netavark aardvark-dns iptables debootstrap (Debian packages)"
    logged "$ROOT/build/apt.log" apt-get update -q || die "Debian package registry unreachable (apt-get update failed)"
    local start=$SECONDS
    logged "$ROOT/build/apt.log" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        podman runc netavark aardvark-dns iptables debootstrap \
        || die "apt-get could not install podman and its helpers"
    say "installed podman and its helpers in $((SECONDS - start)) s"
}

# use_engine detect|install: sets ENGINE (docker, podman or none); `install` installs podman
# where it can when no engine is found (not when AMF_ENGINE=none asked for none).
use_engine() {
    ENGINE=$(detect_engine)
    if [[ $ENGINE == none && $1 == install && -z ${AMF_ENGINE:-} ]] && install_podman; then
        ENGINE=podman
    fi
    if [[ $ENGINE == podman ]]; then
        export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/docker/containers.conf}"
    fi
}

engine() { "$ENGINE" "$@"; }

# Runs a command with its output in LOG; on failure shows the log's last lines (without podman's
# harmless bind-mount warnings) and returns the command's status.
logged() {
    local log=$1 status=0
    shift
    mkdir -p "$(dirname "$log")"
    "$@" >"$log" 2>&1 || status=$?
    if ((status != 0)); then
        grep -v 'level=warning' "$log" | tail -n 20 >&2
        say "failed ($status): $* (full log: $log)"
    fi
    return "$status"
}

image_exists() { engine image inspect "$1" >/dev/null 2>&1; }

image_size() {
    engine image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'
}

# The base an image was built from (recorded by the Dockerfiles as a label).
image_base() {
    local base
    base=$(engine image inspect --format '{{ index .Config.Labels "org.opencontainers.image.base.name" }}' "$1")
    [[ -n $base && $base != "<no value>" ]] && echo "$base" || echo unknown
}

# prepare_venv DIR REQUIREMENTS NOTE: DIR holds a virtual environment installed from the file
# REQUIREMENTS (relative to ROOT): created when missing, brought up to date when that file or one
# it includes changed since the last install (a stamp of their contents); NOTE says how long.
prepare_venv() {
    local venv=$1 requirements=$2 note=$3 stamp="$1/.amf-requirements" wanted files
    mapfile -t files < <(requirement_files "$requirements")
    wanted=$(cat "${files[@]}" | sha256sum | cut -c1-16)
    [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$wanted" ]] && return 0
    [[ -x $venv/bin/python ]] || python3 -m venv "$venv" || die "python3 -m venv $venv failed"
    say "installing $requirements into ${venv#"$ROOT/"} ($note)"
    local start=$SECONDS
    local log
    log="$ROOT/build/$(basename "$venv" | sed 's/^\.//').log" # build/venv.log, build/venv-serve.log
    logged "$log" "$venv/bin/python" -m pip install -r "$ROOT/$requirements" \
        || die "pip could not install $requirements into $venv (is PyPI reachable?)"
    say "installed $requirements into ${venv#"$ROOT/"} in $((SECONDS - start)) s"
    echo "$wanted" >"$stamp"
}

# A requirements file and those it includes with `-r` (one level, all this project uses).
requirement_files() {
    echo "$ROOT/$1"
    sed -n 's/^-r[[:space:]]*\([^[:space:]#]*\).*/\1/p' "$ROOT/$1" | sed "s|^|$ROOT/|"
}

# The full local environment (unit tests, export, training, reference runs of the fixture).
ensure_venv() { prepare_venv "$VENV" requirements-dev.txt "minutes when torch is missing"; }

# The serving environment of ./run.sh: inference.py through ONNX Runtime, no torch.
ensure_serve_venv() { prepare_venv "$SERVE_VENV" requirements.txt "seconds: no torch"; }

# Fills PIP_MOUNTS with `podman build --volume` options that let pip inside a build use this
# machine's package sources: its wheel folders and indexes (read-only, same paths), a pip.conf
# naming them, and the host CA bundle (PyPI is reached through a machine-specific CA). Mounts
# exist only while RUN steps run, so no content is baked into an image; podman 4.3 leaves the
# empty mount points (/etc/pip.conf, the folders) in the stand-in base, whose first build made them.
pip_mounts() {
    local conf="$ROOT/build/podman/pip.conf" folders folder
    mkdir -p "$(dirname "$conf")"
    # An assignment, not `done < <(...)`, whose failure bash would ignore.
    folders=$(python3 "$ROOT/docker/pip_sources.py" "$conf") \
        || die "docker/pip_sources.py could not list this machine's pip sources"
    PIP_MOUNTS=(--volume "$conf:/etc/pip.conf:ro")
    while read -r folder; do
        [[ -n $folder ]] && PIP_MOUNTS+=(--volume "$folder:$folder:ro")
    done <<<"$folders"
    local ca=/etc/ssl/certs/ca-certificates.crt
    [[ -f $ca ]] && PIP_MOUNTS+=(--volume "$ca:$ca:ro")
    return 0
}
