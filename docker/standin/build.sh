#!/usr/bin/env bash
# Build (once) a local stand-in for the pytorch/pytorch base with podman, for machines that
# cannot pull it, and print its name. Debian 12 (debootstrap, minbase) + python3 + pip, imported
# as an image, then torch and torchvision at the versions pinned in requirements-dev.txt,
# installed from this machine's package sources (docker/lib.sh, pip_mounts). The image is tagged
# with a hash of this recipe, so it is rebuilt only when the recipe changes (about 3 minutes and
# 6 GB: the CUDA torch build, the only torch with a working torchvision on our disks).
#
# Usage: docker/standin/build.sh   (called by build.sh; needs podman and debootstrap, as root)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"
use_engine detect
[[ $ENGINE == podman ]] || die "the stand-in base is built with podman (engine here: $ENGINE)"

SUITE=bookworm
MIRROR="${AMF_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
pin() { sed -n "s/^$1==\([^ ;#]*\).*/\1/p" "$ROOT/requirements-dev.txt"; }
TORCH_VERSION=$(pin torch)
TORCHVISION_VERSION=$(pin torchvision)
[[ -n $TORCH_VERSION && -n $TORCHVISION_VERSION ]] || die "requirements-dev.txt must pin torch and torchvision"
pip_mounts

recipe_hash() {
    {
        cat "$HERE/Containerfile" "$HERE/build.sh"
        echo "$SUITE $TORCH_VERSION $TORCHVISION_VERSION ${PIP_MOUNTS[*]//$ROOT/}" # mount points, not the clone's path
    } | sha256sum | cut -c1-12
}
TAG=$(recipe_hash)
BASE="localhost/amf-standin-base:$TAG"
ROOTFS="localhost/amf-standin-rootfs:$TAG"

if image_exists "$BASE"; then
    say "stand-in base $BASE is cached"
    echo "$BASE"
    exit 0
fi

if ! image_exists "$ROOTFS"; then
    command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
    tree=$(mktemp -d /var/tmp/amf-standin.XXXXXX)
    trap 'rm -rf "$tree"' EXIT
    say "debootstrap $SUITE from $MIRROR (about 1 minute)"
    logged "$ROOT/build/podman/debootstrap.log" debootstrap --variant=minbase \
        --include=python3,python3-pip,python-is-python3,ca-certificates "$SUITE" "$tree" "$MIRROR" \
        || die "debootstrap failed (is the Debian mirror $MIRROR reachable?)"
    rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*
    tar -C "$tree" -c . | engine import --quiet - "$ROOTFS" >/dev/null
fi

say "installing torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION into the stand-in base (about 3 minutes)"
start=$SECONDS
logged "$ROOT/build/podman/standin-base.log" engine build --format docker -f "$HERE/Containerfile" \
    --build-arg "ROOTFS=$ROOTFS" \
    --build-arg "TORCH_VERSION=$TORCH_VERSION" \
    --build-arg "TORCHVISION_VERSION=$TORCHVISION_VERSION" \
    "${PIP_MOUNTS[@]}" -t "$BASE" "$HERE" || die "could not build the stand-in base"
say "built the stand-in base $BASE in $((SECONDS - start)) s"

# Older stand-ins (other recipe hashes) are 6 GB each: drop their tags.
engine images --format '{{.Repository}}:{{.Tag}}' \
    | grep -E '^localhost/amf-standin-(base|rootfs):' | grep -v ":$TAG\$" \
    | xargs -r "$ENGINE" rmi >/dev/null 2>&1 || true
echo "$BASE"
