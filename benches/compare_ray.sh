#!/usr/bin/env bash
# Ray's microbenchmarks next to rayish's, on this machine, in one run, as a table:
# name, Ray, rayish, ratio. Installs Ray from PyPI into a virtual environment
# (idempotent), runs `ray microbenchmark` once per benchmark (filtered with
# TESTS_TO_RUN, as Ray does), then `cargo bench --bench core` and `--bench tasks`.
# Ray's and rayish's runs alternate per group, so machine noise hits both alike.
#
#     bash benches/compare_ray.sh            # everything below
#     NAMES="1:1 actor calls sync" bash benches/compare_ray.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${RAY_VENV:-/tmp/rayish-ray-venv}
if [ ! -x "$VENV/bin/ray" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "ray==2.*" numpy grpcio
fi
cargo build --release --workspace --all-targets >/dev/null
if [ -n "${NAMES:-}" ]; then
    IFS=';' read -r -a names <<<"$NAMES"
else
    names=(
        "single client get calls (Plasma Store)"
        "single client put calls (Plasma Store)"
        "multi client put calls (Plasma Store)"
        "single client put gigabytes"
        "multi client put gigabytes"
        "single client get gigabytes"
        "single client get gigabytes (copied)"
        "single client get object containing 10k refs"
        "single client tasks async"
        "1:1 actor calls sync"
        "1:1 actor calls async"
        "1:n actor calls async"
        "n:n actor calls async"
        "n:n actor calls with arg async"
    )
fi
out=$(mktemp)
ray_figure() { # name -> "mean sd" from ray microbenchmark
    local log
    log=$(mktemp)
    case "$1" in
    *"get gigabytes"*) # not in ray_perf.py: Ray's helper, our script
        (cd /tmp && TESTS_TO_RUN="$1" timeout 900 "$VENV/bin/python" "$ROOT/benches/ray_get_gigabytes.py" >"$log" 2>&1) || true ;;
    *) (cd /tmp && TESTS_TO_RUN="$1" timeout 900 "$VENV/bin/ray" microbenchmark >"$log" 2>&1) || true ;;
    esac
    grep -F "$1 per second" "$log" | head -1 | awk '{print $(NF-2), $NF}'
    rm -f "$log"
}
rayish_figure() { # name -> "mean sd" from rayish's benches
    local bench=core
    [ "$1" = "single client tasks async" ] && bench=tasks
    TESTS_TO_RUN="$1" cargo bench -q --bench "$bench" 2>/dev/null \
        | grep -F "$1" | grep -F "per second" | head -1 | awk '{print $(NF-2), $NF}'
}
for name in "${names[@]}"; do
    r=$(ray_figure "$name")
    y=$(rayish_figure "$name")
    printf '%s\t%s\t%s\n' "$name" "${r:-?}" "${y:-?}" >>"$out"
done
echo "Ray $("$VENV/bin/ray" --version | awk '{print $3}') vs rayish, $(nproc) cores, $(date -u +%F)"
python3 - "$out" <<'EOF'
import sys
print(f"{'benchmark':48} {'Ray':>16} {'rayish':>18} {'ratio':>8}")
for line in open(sys.argv[1]):
    name, ray, mine = line.rstrip("\n").split("\t")
    try:
        rm, rs = map(float, ray.split()); ym, ys = map(float, mine.split())
        print(f"{name:48} {rm:>9.2f} ±{rs:<6.1f} {ym:>10.2f} ±{ys:<6.1f} {ym / rm:>7.1f}x")
    except ValueError:
        print(f"{name:48} {ray:>16} {mine:>18} {'?':>8}")
EOF
rm -f "$out"
