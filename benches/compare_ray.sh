#!/usr/bin/env bash
# Ray's "single client tasks async" next to rayish's, on this machine, in one run.
# Installs Ray from PyPI into a virtual environment (idempotent), then runs
# `ray microbenchmark` (filtered with TESTS_TO_RUN, as Ray does) and
# `cargo bench --bench tasks`, and prints both figures and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RAY_VENV:-/tmp/rayish-ray-venv}
if [ ! -x "$VENV/bin/ray" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "ray==2.*" numpy grpcio
fi
cargo build --release --workspace --all-targets >/dev/null
ray_log=$(mktemp)
(cd /tmp && TESTS_TO_RUN="single client tasks async" "$VENV/bin/ray" microbenchmark >"$ray_log" 2>&1) || true
ray_out=$(grep -E "^single client tasks async per second" "$ray_log" | head -1 || true)
if [ -z "$ray_out" ]; then
    echo "ray microbenchmark printed no result; its last lines:" >&2
    tail -20 "$ray_log" >&2
    exit 1
fi
rm -f "$ray_log"
rayish_out=$(cargo bench --bench tasks 2>/dev/null | grep -E "per second")
echo "Ray $("$VENV/bin/ray" --version | awk '{print $3}'): $ray_out"
echo "$rayish_out"
ray_rate=$(echo "$ray_out" | awk '{print $(NF-2)}')
echo "$rayish_out" | while read -r line; do
    rate=$(echo "$line" | awk '{print $(NF-2)}')
    python3 -c "import sys; print(f'ratio rayish/Ray: {float(sys.argv[1])/float(sys.argv[2]):.1f}x  ({sys.argv[3]})')" \
        "$rate" "$ray_rate" "$(echo "$line" | sed 's/ per second.*//')"
done
