#!/usr/bin/env bash
# `ray microbenchmark` next to `rayish microbenchmark`, on this machine, in one run,
# as a table: name, Ray, rayish, ratio. Installs Ray from PyPI into a virtual
# environment (idempotent). Each benchmark runs as a fresh process of each, Ray's
# first, filtered with TESTS_TO_RUN as Ray does, so the two alternate and machine
# noise hits both alike; both settle 10 s, warm up 1 s and time 4 trials of 2 s
# (Ray's timeit; rayish's is the same).
#
#     bash benches/compare_ray.sh                             # every benchmark below
#     NAMES="1:1 actor calls sync;single client tasks async" bash benches/compare_ray.sh
#     JSON=table.json bash benches/compare_ray.sh             # also write the rows
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${RAY_VENV:-/tmp/rayish-ray-venv}
if [ ! -x "$VENV/bin/ray" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "ray==2.*" numpy grpcio
fi
cargo build -q --release -p rayish-cli
RAYISH="$ROOT/target/release/rayish"
if [ -n "${NAMES:-}" ]; then
    IFS=';' read -r -a names <<<"$NAMES"
else
    names=( # ray_perf.py's, in its order, then rayish's get lines
        "single client get calls (Plasma Store)"
        "single client put calls (Plasma Store)"
        "multi client put calls (Plasma Store)"
        "single client put gigabytes"
        "single client tasks and get batch"
        "multi client put gigabytes"
        "single client get object containing 10k refs"
        "single client wait 1k refs"
        "single client tasks sync"
        "single client tasks async"
        "multi client tasks async"
        "1:1 actor calls sync"
        "1:1 actor calls async"
        "1:1 actor calls concurrent"
        "1:n actor calls async"
        "n:n actor calls async"
        "n:n actor calls with arg async"
        "single client get gigabytes"
        "single client get gigabytes (copied)"
    )
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
figure() { # log file, name -> "mean sd", or nothing
    grep -F "$2 per second" "$1" | head -1 | awk '{print $(NF-2), $NF}'
}
ray_figure() {
    local log
    log=$(mktemp)
    case "$1" in
    *"get gigabytes"*) # not in ray_perf.py: Ray's own timeit, our script
        (cd /tmp && TESTS_TO_RUN="$1" timeout 900 "$VENV/bin/python" "$ROOT/benches/ray_get_gigabytes.py" >"$log" 2>&1) || true ;;
    *) (cd /tmp && TESTS_TO_RUN="$1" timeout 900 "$VENV/bin/ray" microbenchmark >"$log" 2>&1) || true ;;
    esac
    figure "$log" "$1"
    rm -f "$log"
}
rayish_figure() {
    local log
    log=$(mktemp)
    (cd /tmp && TESTS_TO_RUN="$1" timeout 900 "$RAYISH" microbenchmark >"$log" 2>&1) || true
    figure "$log" "$1"
    rm -f "$log"
}
for name in "${names[@]}"; do
    r=$(ray_figure "$name")
    y=$(rayish_figure "$name")
    printf '%s\t%s\t%s\n' "$name" "${r:-?}" "${y:-?}" >>"$out"
    echo "done: $name" >&2
done
echo "Ray $("$VENV/bin/ray" --version | awk '{print $3}') vs rayish $("$RAYISH" --version | awk '{print $2}'), $(nproc) cores, $(date -u +%F)"
python3 - "$out" "${JSON:-}" <<'PY'
import json, sys
rows = []
print(f"{'benchmark':46} {'Ray':>18} {'rayish':>20} {'ratio':>8}")
for line in open(sys.argv[1]):
    name, ray, mine = line.rstrip("\n").split("\t")
    row = {"name": name, "ray": None, "rayish": None, "ratio": None}
    try:
        rm, rs = map(float, ray.split())
        row["ray"] = {"mean": rm, "sd": rs}
        ray = f"{rm:.2f} ±{rs:.1f}"
    except ValueError:
        ray = "-"
    try:
        ym, ys = map(float, mine.split())
        row["rayish"] = {"mean": ym, "sd": ys}
        mine = f"{ym:.2f} ±{ys:.1f}"
    except ValueError:
        mine = "not in rayish" if "concurrent" in name else "-"
    if row["ray"] and row["rayish"]:
        row["ratio"] = row["rayish"]["mean"] / row["ray"]["mean"]
    ratio = f"{row['ratio']:.1f}x" if row["ratio"] else "-"
    print(f"{name:46} {ray:>18} {mine:>20} {ratio:>8}")
    rows.append(row)
if sys.argv[2]:
    json.dump(rows, open(sys.argv[2], "w"), indent=1)
PY
