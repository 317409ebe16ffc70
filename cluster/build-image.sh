#!/usr/bin/env bash
# Builds the rayish runtime image (cluster/Dockerfile) and tags it with the git commit
# and `latest`:
#
#   bash cluster/build-image.sh [REPOSITORY]    # default "rayish"; prints REPOSITORY:SHA
#
# The binaries are built here (cargo, release) and copied in with the model files
# (scripts/setup-faces.sh fetches them). BASE_IMAGE picks the base: by default the
# public debian:bookworm-slim if docker already has it or can pull it, else a base made
# locally with debootstrap (cluster/make-base-image.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=${1:-rayish}
sha=$(git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
eval "$(bash scripts/setup-faces.sh | grep '^RAYISH_FACE_MODELS=')"
if [ -z "${BASE_IMAGE:-}" ]; then
    if docker image inspect debian:bookworm-slim >/dev/null 2>&1 \
        || timeout 60 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
        BASE_IMAGE=debian:bookworm-slim
    else
        BASE_IMAGE=rayish-base:bookworm
        bash cluster/make-base-image.sh "$BASE_IMAGE"
    fi
fi
# The same build as tests/run.sh (all targets): a narrower one would unify crate
# features differently and rebuild the two binaries. RAYISH_PREBUILT=1 (the tests, run
# after that build) uses target/release as it is.
if [ -z "${RAYISH_PREBUILT:-}" ]; then
    cargo build --release --workspace --all-targets >&2
fi
for b in rayish rayish-faces; do
    [ -x "target/release/$b" ] || { echo "build-image: target/release/$b is missing" >&2; exit 1; }
done
ctx=target/docker-context
rm -rf "$ctx"
mkdir -p "$ctx/bin" "$ctx/face_models"
cp cluster/Dockerfile "$ctx/"
cp target/release/rayish target/release/rayish-faces "$ctx/bin/"
# The release profile keeps debug info for profiling; the image does not need it.
strip --strip-debug "$ctx/bin/rayish" "$ctx/bin/rayish-faces"
cp "$RAYISH_FACE_MODELS"/*.dat "$ctx/face_models/"
docker build -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$repo:$sha" -t "$repo:latest" "$ctx" >&2
echo "$repo:$sha"
