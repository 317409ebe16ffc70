#!/usr/bin/env bash
# The main job: the faces pipeline over the face_recognition sample photos on an
# embedded local rayish cluster, printing the average face vector. Installs what it
# needs first (scripts/setup-faces.sh), idempotently. Extra arguments go to
# `rayish-faces encode` (e.g. --upsample 0, --batch 2, --model large). --restart: the
# demo computes every time rather than resuming from the last run's journal.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup-faces.sh | grep '^RAYISH_')"
cargo build --release -p rayish-faces
./target/release/rayish-faces encode "$RAYISH_SAMPLE_PHOTOS" --models "$RAYISH_FACE_MODELS" \
    --out target/faces-sample --restart "$@"
