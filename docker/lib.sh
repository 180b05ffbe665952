# shellcheck shell=bash
# Shared by build.sh, test.sh and export.sh (sourced, after `set -euo pipefail` and ROOT=...):
# which container engine to use, the image names, the local Python environment, and the
# package-source mounts a podman build needs on our CI machines. See README.md, "Container".

AMF_IMAGE="${AMF_IMAGE:-amf:latest}"
AMF_TRAIN_IMAGE="${AMF_TRAIN_IMAGE:-amf-train:latest}"
VENV="$ROOT/.venv"

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
# where it can when no engine is found.
use_engine() {
    ENGINE=$(detect_engine)
    if [[ $ENGINE == none && $1 == install ]] && install_podman; then
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

# The base an image was built from (recorded by the Dockerfiles as a label).
image_base() {
    local base
    base=$(engine image inspect --format '{{ index .Config.Labels "org.opencontainers.image.base.name" }}' "$1")
    [[ -n $base && $base != "<no value>" ]] && echo "$base" || echo unknown
}

# The local environment of requirements-dev.txt (unit tests, reference runs): created when
# missing, brought up to date when the requirements changed since the last install.
ensure_venv() {
    local stamp="$VENV/.amf-requirements" wanted
    wanted=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha256sum | cut -c1-16)
    [[ -x $VENV/bin/python && -f $stamp && $(cat "$stamp") == "$wanted" ]] && return 0
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
    say "installing requirements-dev.txt into $VENV (minutes when torch is missing)"
    logged "$ROOT/build/venv.log" "$VENV/bin/python" -m pip install -r "$ROOT/requirements-dev.txt" \
        || die "pip could not install requirements-dev.txt into $VENV (is PyPI reachable?)"
    echo "$wanted" >"$stamp"
}

# Fills PIP_MOUNTS with `podman build --volume` options that let pip inside a build use this
# machine's package sources: its wheel folders and indexes (read-only, same paths), a pip.conf
# naming them, and the host CA bundle (PyPI is reached through a machine-specific CA). Mounts
# exist only while RUN steps run, so no content is baked into an image; podman 4.3 leaves the
# empty mount points (/etc/pip.conf, the folders) in the stand-in base, whose first build made them.
pip_mounts() {
    local conf="$ROOT/build/podman/pip.conf" folder
    mkdir -p "$(dirname "$conf")"
    PIP_MOUNTS=(--volume "$conf:/etc/pip.conf:ro")
    while read -r folder; do
        [[ -n $folder ]] && PIP_MOUNTS+=(--volume "$folder:$folder:ro")
    done < <(python3 "$ROOT/docker/pip_sources.py" "$conf")
    local ca=/etc/ssl/certs/ca-certificates.crt
    [[ -f $ca ]] && PIP_MOUNTS+=(--volume "$ca:$ca:ro")
    return 0
}
