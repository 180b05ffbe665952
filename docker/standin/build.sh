#!/usr/bin/env bash
# Build (once) a local stand-in for one of the Dockerfile's pinned bases with podman, for machines
# that cannot pull it, and print its name (docs/container.md).
#
#   docker/standin/build.sh python    stand-in for python:3.11-slim-bookworm (the CPU image's base):
#                                     Debian 12 (debootstrap, minbase) + python3 + pip, imported
#                                     as an image; no torch
#   docker/standin/build.sh pytorch   stand-in for pytorch/pytorch (the GPU and training images'
#                                     base): the python stand-in + torch and torchvision at the
#                                     versions pinned in requirements-dev.txt, installed from this
#                                     machine's package sources (docker/lib.sh, pip_mounts)
#
# Each image is tagged with a hash of its own recipe, so it is rebuilt only when that changes: the
# python stand-in takes about 1 minute (debootstrap) and the pytorch one 3-8 minutes more and
# 6 GB (the CUDA torch build, the only torch with a working torchvision on our disks).
# Needs podman and debootstrap, as root; called by build.sh.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"

SUITE=bookworm
PACKAGES=python3,python3-pip,python-is-python3,ca-certificates
# debootstrap's own default mirror unless AMF_DEBIAN_MIRROR names one (a local mirror or proxy)
MIRROR=(${AMF_DEBIAN_MIRROR:+"$AMF_DEBIAN_MIRROR"})

short_hash() { sha256sum | cut -c1-12; }

# What a slim Debian image leaves out (debian:bookworm-slim drops docs, man pages and locales the
# same way), plus the package caches: none of it is used at run time.
trim_tree() {
    local tree=$1
    rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/* \
        "$tree"/usr/share/doc/* "$tree"/usr/share/man/* "$tree"/usr/share/info/* \
        "$tree"/usr/share/locale/* "$tree"/usr/share/lintian/*
}

# The python stand-in: debootstrap's tree imported as a one-layer image.
python_standin() {
    local image tree
    image="localhost/amf-standin-python:$(echo "rootfs v2 $SUITE $PACKAGES" | short_hash)"
    if image_exists "$image"; then
        say "stand-in base $image is cached"
        echo "$image"
        return
    fi
    command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
    tree=$(mktemp -d /var/tmp/amf-standin.XXXXXX)
    # shellcheck disable=SC2064 # the folder's name is fixed now
    trap "rm -rf '$tree'" EXIT
    say "debootstrap $SUITE${MIRROR:+ from $MIRROR} into the python stand-in base (about 1 minute)"
    local start=$SECONDS
    logged "$ROOT/build/podman/debootstrap.log" debootstrap --variant=minbase --include="$PACKAGES" \
        "$SUITE" "$tree" "${MIRROR[@]}" || die "debootstrap failed (is the Debian archive reachable? see the log)"
    trim_tree "$tree"
    tar -C "$tree" -c . | engine import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["python"]' \
        - "$image" >/dev/null || die "podman could not import the debootstrap tree"
    rm -rf "$tree"
    trap - EXIT
    say "built the python stand-in base $image in $((SECONDS - start)) s"
    echo "$image"
}

pin() { sed -n "s/^$1==\([^ ;#]*\).*/\1/p" "$ROOT/requirements-dev.txt"; }

# The pytorch stand-in: torch + torchvision installed on the python stand-in (Containerfile).
pytorch_standin() {
    local python torch torchvision image
    python=$(python_standin)
    torch=$(pin torch)
    torchvision=$(pin torchvision)
    [[ -n $torch && -n $torchvision ]] || die "requirements-dev.txt must pin torch and torchvision"
    pip_mounts
    image="localhost/amf-standin-base:$({
        cat "$HERE/Containerfile"
        echo "$python $torch $torchvision ${PIP_MOUNTS[*]//$ROOT/}" # mount points, not the clone's path
    } | short_hash)"
    if image_exists "$image"; then
        say "stand-in base $image is cached"
        echo "$image"
        return
    fi
    say "installing torch $torch + torchvision $torchvision into the pytorch stand-in base (3-8 minutes)"
    local start=$SECONDS
    logged "$ROOT/build/podman/standin-base.log" engine build --format docker -f "$HERE/Containerfile" \
        --build-arg "ROOTFS=$python" \
        --build-arg "TORCH_VERSION=$torch" \
        --build-arg "TORCHVISION_VERSION=$torchvision" \
        "${PIP_MOUNTS[@]}" -t "$image" "$HERE" || die "could not build the pytorch stand-in base"
    say "built the pytorch stand-in base $image in $((SECONDS - start)) s"
    drop_stale "$python" "$image"
    echo "$image"
}

# Stand-ins of other recipes (a pytorch one is 6 GB): drop their tags, keeping the two named.
drop_stale() {
    local stale
    stale=$(engine images --format '{{.Repository}}:{{.Tag}}' \
        | grep -E '^localhost/amf-standin-' | grep -vxF -e "$1" -e "$2" || true)
    [[ -z $stale ]] || xargs "$ENGINE" rmi <<<"$stale" >/dev/null 2>&1 || true
}

main() {
    use_engine detect
    [[ $ENGINE == podman ]] || die "the stand-in bases are built with podman (engine here: $ENGINE)"
    case "${1:-}" in
        python) python_standin ;;
        pytorch) pytorch_standin ;;
        *) die "usage: docker/standin/build.sh python|pytorch" ;;
    esac
}

main "$@"
