#!/usr/bin/env bash
# Build the container images (docs/container.md).
#
#   ./build.sh              every image, everything ./test.sh checks (same as `all`):
#                             $AMF_CPU_IMAGE   (default amf-cpu:latest)    Dockerfile --target cpu: ONNX Runtime, no torch
#                             $AMF_IMAGE       (default amf:latest)        Dockerfile --target gpu: CUDA, exec mode
#                             $AMF_CPU_INVOKE_IMAGE, $AMF_INVOKE_IMAGE     the same in invoke mode (--target invoke
#                               (default amf-cpu-invoke:latest, amf-invoke:latest)  --build-arg EXEC_STAGE=cpu|gpu):
#                                                                          amf-invoke is the one to upload
#                             $AMF_TRAIN_IMAGE (default amf-train:latest)  Dockerfile.train: python -m amf
#   ./build.sh inference    the four inference images
#   ./build.sh cpu | gpu    one inference image in both modes (exec, then its invoke twin)
#   ./build.sh train        the training image
#
# Docker when an engine answers, else podman (installed first on Debian when missing). Each base
# is the Dockerfile's pinned default when it is present or can be pulled; else, with podman, a
# local stand-in built once from Debian (docker/standin/): Python 3.11 for the CPU image, the
# same plus this machine's torch wheels for the GPU and training images, which share it.
# AMF_BASE_IMAGE and AMF_CPU_BASE_IMAGE force a base. Any failing step fails this script. With
# no engine at all it builds nothing and fails, its last line saying that ./test.sh alone runs
# the same checks through the local Python environments.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"

case "${1:-all}" in
    all) TARGETS=(cpu gpu train) ;;
    inference) TARGETS=(cpu gpu) ;;
    cpu | gpu | train) TARGETS=("$1") ;;
    *) die "usage: ./build.sh [all|inference|cpu|gpu|train]  (no argument: all three images)" ;;
esac

# A Dockerfile's default for a build argument.
dockerfile_default() { sed -n "s/^ARG $2=//p" "$ROOT/$1"; }

# The pinned real base of a target (GPU and training images must agree); podman resolves no
# short names here, so it gets docker.io/ in front.
real_base() {
    local base
    if [[ $1 == cpu ]]; then
        base=$(dockerfile_default Dockerfile CPU_BASE_IMAGE)
    else
        base=$(dockerfile_default Dockerfile BASE_IMAGE)
        local train
        train=$(dockerfile_default Dockerfile.train BASE_IMAGE)
        [[ -n $base && $base == "$train" ]] \
            || die "Dockerfile and Dockerfile.train must default to the same BASE_IMAGE ('$base', '$train')"
    fi
    [[ -n $base ]] || die "Dockerfile has no default base for the $1 image"
    [[ $ENGINE == podman ]] && base="docker.io/$base"
    echo "$base"
}

# The serving pins of requirements.txt and requirements-gpu.txt must agree (the GPU file
# repeats them with onnxruntime-gpu for onnxruntime): both images then serve with the same
# numpy, Pillow and ONNX Runtime release.
check_pins() {
    local pins line name gpu
    # An assignment, not `done < <(grep ...)`, whose failure bash would ignore: no pins is an error.
    pins=$(grep -E '^[A-Za-z0-9_.-]+==' "$ROOT/requirements.txt") \
        || die "requirements.txt pins no package (name==version)"
    while read -r line; do
        name=${line%%==*}
        [[ $name == onnxruntime ]] && name=onnxruntime-gpu
        gpu=$(grep -iE "^$name==" "$ROOT/requirements-gpu.txt" || true)
        [[ ${gpu#*==} == "${line#*==}" ]] \
            || die "requirements-gpu.txt must pin $name==${line#*==} as requirements.txt does (it has '${gpu:-nothing}')"
    done <<<"$pins"
}

# Prints the base for a target (cpu, or gpu/train) and says, on stderr, which base it is and
# what a build on it proves.
choose_base() {
    local kind=$1 real forced standin
    real=$(real_base "$kind")
    if [[ $kind == cpu ]]; then
        forced=${AMF_CPU_BASE_IMAGE:-} standin=python
    else
        forced=${AMF_BASE_IMAGE:-} standin=pytorch
    fi
    if [[ -n $forced ]]; then
        say "$kind base: $forced (forced); the image to upload must be built from $real"
        echo "$forced"
    elif image_exists "$real" || engine pull "$real" >"$ROOT/build/pull-$kind.log" 2>&1; then
        say "$kind base: $real, the real base"
        echo "$real"
    elif [[ $ENGINE == podman ]]; then
        local base
        say "cannot pull $real (no registry reachable): using a local stand-in base"
        base=$("$ROOT/docker/standin/build.sh" "$standin")
        say "$kind base: $base, a LOCAL STAND-IN for $real (Debian 12, Python 3.11$([[ $kind == cpu ]] \
            || echo ", the same torch from this machine's wheels")): proves the Dockerfile's steps, the requirements," \
            "the non-root user, paths, mounts and the no-network contract; not the real base's Python and" \
            "libraries$([[ $kind == cpu ]] || echo " nor CUDA/GPU behaviour"), so an image for real use must be" \
            "built from the real base (docs/container.md)"
        echo "$base"
    else
        die "cannot pull $real with docker; pull or load it, or set $([[ $kind == cpu ]] && echo AMF_CPU_BASE_IMAGE || echo AMF_BASE_IMAGE)"
    fi
}

build_image() {
    local target=$1 base=$2 file tag args start=$SECONDS
    case $target in
        cpu) file=Dockerfile tag=$AMF_CPU_IMAGE args=(--target cpu --build-arg "CPU_BASE_IMAGE=$base") ;;
        cpu-invoke) file=Dockerfile tag=$AMF_CPU_INVOKE_IMAGE args=(--target invoke --build-arg EXEC_STAGE=cpu --build-arg "CPU_BASE_IMAGE=$base") ;;
        gpu) file=Dockerfile tag=$AMF_IMAGE args=(--target gpu --build-arg "BASE_IMAGE=$base") ;;
        gpu-invoke) file=Dockerfile tag=$AMF_INVOKE_IMAGE args=(--target invoke --build-arg EXEC_STAGE=gpu --build-arg "BASE_IMAGE=$base") ;;
        train) file=Dockerfile.train tag=$AMF_TRAIN_IMAGE args=(--build-arg "BASE_IMAGE=$base") ;;
    esac
    args=(build --platform linux/amd64 -f "$ROOT/$file" "${args[@]}" -t "$tag")
    [[ $ENGINE == podman ]] && args+=(--format docker "${PIP_MOUNTS[@]}")
    local previous
    previous=$(engine image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
    logged "$ROOT/build/$target-build.log" engine "${args[@]}" "$ROOT" || die "could not build $tag ($file, $target)"
    local size
    size=$(image_size "$tag")
    say "built $tag ($file, $target, $ENGINE) in $((SECONDS - start)) s: $size"
    # The image this tag named before is now untagged: drop it (it fails harmlessly if still used).
    if [[ -n $previous && $previous != $(engine image inspect --format '{{.Id}}' "$tag") ]]; then
        engine rmi "$previous" >/dev/null 2>&1 || true
    fi
}

# No engine: nothing built is a failure, and the last line says what can run instead.
no_engine() {
    local why="no docker or podman here, and podman is installed only as root with apt-get"
    [[ -n ${AMF_ENGINE:-} ]] && why="AMF_ENGINE=none"
    die "NO IMAGE BUILT ($why). ./test.sh alone runs the same checks through the local Python" \
        "environments (.venv-serve, .venv), which proves the code, not an image"
}

main() {
    local start=$SECONDS
    check_pins
    use_engine install
    [[ $ENGINE != none ]] || no_engine
    mkdir -p "$ROOT/model" "$ROOT/build" # git keeps no empty folder; the Dockerfile copies model/
    [[ -f $ROOT/model/manifest.json || ${TARGETS[*]} == train ]] \
        || say "model/ holds no ensemble: nothing is baked in; the images then need a model at /opt/ml/model"
    [[ $ENGINE == podman ]] && pip_mounts
    local target kind
    local -A bases=() # cpu / gpu (the GPU and training images share theirs): chosen once
    for target in "${TARGETS[@]}"; do
        kind=gpu
        [[ $target == cpu ]] && kind=cpu
        if [[ -z ${bases[$kind]:-} ]]; then
            bases[$kind]=$(choose_base "$kind") # not in a || list: set -e must see a failure here
        fi
        build_image "$target" "${bases[$kind]}"
        # The invoke twin adds a label and an entry point to the exec image: seconds, from cache.
        [[ $target == train ]] || build_image "$target-invoke" "${bases[$kind]}"
    done
    say "build.sh done in $((SECONDS - start)) s: built ${TARGETS[*]}"
}

main
