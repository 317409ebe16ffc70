#!/usr/bin/env bash
# Makes a Debian 12 base image without a registry: debootstrap a minimal root file
# system from Debian's package mirror and `docker import` it. Idempotent: does nothing
# if the image exists.
#
#   bash cluster/make-base-image.sh [TAG]     # default rayish-base:bookworm
set -euo pipefail
tag=${1:-rayish-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$tag" >/dev/null 2>&1; then
    exit 0
fi
command -v debootstrap >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
}
root=$(mktemp -d /var/tmp/rayish-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "make-base-image: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
# As the official slim image: no documentation, a clean apt cache.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/*
tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$tag" >/dev/null
echo "make-base-image: $tag" >&2
