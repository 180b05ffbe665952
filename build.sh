#!/usr/bin/env bash
# Build the container images (README.md, "Container").
#
#   ./build.sh            the inference image ($AMF_IMAGE, default amf:latest): grand-challenge's
#   ./build.sh train      the training image ($AMF_TRAIN_IMAGE, default amf-train:latest)
#   ./build.sh all        both
#
# Docker when an engine answers, else podman (installed first on Debian when missing). The base is
# the Dockerfile's default BASE_IMAGE, the real pytorch/pytorch tag, when it is present or can be
# pulled; else, with podman, a local stand-in built once from Debian and this machine's torch
# wheels (docker/standin/). AMF_BASE_IMAGE=<image> forces a base. With no engine at all, the
# local Python environment is prepared instead and ./test.sh runs its checks through it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"

case "${1:-inference}" in
    inference | train) TARGETS=("${1:-inference}") ;;
    all) TARGETS=(inference train) ;;
    *) die "usage: ./build.sh [inference|train|all]" ;;
esac

# The pinned real base: the default of both Dockerfiles, which must agree.
real_base() {
    local inference train
    inference=$(sed -n 's/^ARG BASE_IMAGE=//p' "$ROOT/Dockerfile")
    train=$(sed -n 's/^ARG BASE_IMAGE=//p' "$ROOT/Dockerfile.train")
    [[ -n $inference && $inference == "$train" ]] \
        || die "Dockerfile and Dockerfile.train must default to the same BASE_IMAGE ('$inference', '$train')"
    [[ $ENGINE == podman ]] && inference="docker.io/$inference" # podman resolves no short names here
    echo "$inference"
}

# Sets BASE and prints the one line saying which base this is and what a build on it proves.
choose_base() {
    local real
    real=$(real_base)
    if [[ -n ${AMF_BASE_IMAGE:-} ]]; then
        BASE=$AMF_BASE_IMAGE
        say "base: $BASE (AMF_BASE_IMAGE); the image to upload must be built from $real"
    elif image_exists "$real" || engine pull "$real" >"$ROOT/build/pull.log" 2>&1; then
        BASE=$real
        say "base: $BASE, the real base: this image is the one to upload (here it runs on the CPU only)"
    elif [[ $ENGINE == podman ]]; then
        say "cannot pull $real (no registry reachable): using a local stand-in base"
        BASE=$("$ROOT/docker/standin/build.sh")
        say "base: $BASE, a LOCAL STAND-IN for $real (Debian 12, Python 3.11, the same torch from this" \
            "machine's wheels): proves the Dockerfile's steps, the requirements beside a preinstalled torch," \
            "the non-root user, paths, mounts and the no-network contract; not CUDA/GPU behaviour nor the real" \
            "base's Python and libraries, so the image to upload must be built from the real base (README.md)"
    else
        die "cannot pull $real with docker; pull or load it, or set AMF_BASE_IMAGE"
    fi
}

build_image() {
    local target=$1 file tag start=$SECONDS
    case $target in
        inference) file=Dockerfile tag=$AMF_IMAGE ;;
        train) file=Dockerfile.train tag=$AMF_TRAIN_IMAGE ;;
    esac
    local args=(build --platform linux/amd64 -f "$ROOT/$file" --build-arg "BASE_IMAGE=$BASE" -t "$tag")
    [[ $ENGINE == podman ]] && args+=(--format docker "${PIP_MOUNTS[@]}")
    local previous
    previous=$(engine image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
    logged "$ROOT/build/$target-build.log" engine "${args[@]}" "$ROOT" || die "could not build $tag from $file"
    say "built $tag ($file, $ENGINE) in $((SECONDS - start)) s"
    # The image this tag named before is now untagged: drop it (it fails harmlessly if still used).
    if [[ -n $previous && $previous != $(engine image inspect --format '{{.Id}}' "$tag") ]]; then
        engine rmi "$previous" >/dev/null 2>&1 || true
    fi
}

main() {
    local start=$SECONDS
    use_engine install
    if [[ $ENGINE == none ]]; then
        say "no container engine (docker or podman) here and none installable: preparing the local" \
            "Python environment instead; ./test.sh will run the checks through it (proves the code, not an image)"
        ensure_venv
        return
    fi
    mkdir -p "$ROOT/model" "$ROOT/build" # git keeps no empty folder; the Dockerfile copies model/
    [[ -f $ROOT/model/manifest.json || ${TARGETS[*]} == train ]] \
        || say "model/ holds no ensemble: nothing is baked in; the image then needs a model at /opt/ml/model"
    [[ $ENGINE == podman ]] && pip_mounts
    choose_base
    for target in "${TARGETS[@]}"; do
        build_image "$target"
    done
    say "build.sh done in $((SECONDS - start)) s"
}

main
