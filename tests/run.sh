#!/usr/bin/env bash
# Builds everything and runs every test: unit tests, the cluster integration tests
# (real rayish processes on 127.0.0.2, 127.0.0.3, ...) and doc tests.
# Idempotent; needs the Rust toolchain, and installs the rest (dlib, BLAS, cmake, nasm,
# the model files and sample photos) through scripts/setup-faces.sh, and sshd, rsync
# and iproute2 (the cluster-launcher tests' machines) through
# scripts/setup-cluster-tests.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-faces.sh
bash scripts/setup-cluster-tests.sh
cargo build --release --workspace --all-targets
log=$(mktemp)
set +e
cargo test --release --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for all the test binaries cargo ran.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
