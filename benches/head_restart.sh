#!/usr/bin/env bash
# How soon a head killed with SIGKILL serves again once it is started on the same
# port and storage. A head and two nodes on loopback addresses; `hello` runs once
# so its binary is cached; then, per run: kill -9 the head, start it again (no
# token: it takes the stored one) and time, from that start,
#   rejoined  every node alive in `rayish status` again (they were waiting for it),
#   served    a new driver (`hello`: connect, register, tasks, results) done.
# One line per run, then the medians. The nodes rejoin as new nodes (they do not yet
# keep their tasks through a restart; see README, "How it behaves under failure").
#
#     bash benches/head_restart.sh              # 5 runs
#     RUNS=10 bash benches/head_restart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p rayish-cli
cargo build -q --release --example hello
RAYISH=$PWD/target/release/rayish
HELLO=$PWD/target/release/examples/hello
RUNS=${RUNS:-5}
PORT=${PORT:-46379}
HEAD_IP=127.0.0.2
export RAYISH_TEMP_DIR
RAYISH_TEMP_DIR=$(mktemp -d /tmp/rayish-restart-bench.XXXXXX)
cleanup() {
    "$RAYISH" stop --force >/dev/null 2>&1 || true
    rm -rf "$RAYISH_TEMP_DIR"
}
trap cleanup EXIT

ms() { echo $(($(date +%s%N) / 1000000)); }
head_pid() { pgrep -f "rayish start --head --port $PORT" | head -1; }
alive_nodes() {
    "$RAYISH" status --json 2>/dev/null |
        python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin)["nodes"] if n["alive"]))' \
            2>/dev/null || echo 0
}
start_head() {
    "$RAYISH" start --head --port "$PORT" --node-ip-address "$HEAD_IP" --num-cpus 2 \
        --dashboard-port 0 >/dev/null
}

start_head
RAYISH_TOKEN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' \
    "$RAYISH_TEMP_DIR/current_cluster.json")
export RAYISH_TOKEN
for ip in 127.0.0.3 127.0.0.4; do
    "$RAYISH" start --address "$HEAD_IP:$PORT" --node-ip-address "$ip" --num-cpus 2 >/dev/null
done
until [ "$(alive_nodes)" = 3 ]; do sleep 0.1; done
"$HELLO" --address "$HEAD_IP:$PORT" >/dev/null

rejoined=()
served=()
for run in $(seq "$RUNS"); do
    pid=$(head_pid)
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    t0=$(ms)
    (unset RAYISH_TOKEN; start_head)
    until [ "$(alive_nodes)" = 3 ]; do sleep 0.02; done
    t1=$(ms)
    "$HELLO" --address "$HEAD_IP:$PORT" >/dev/null
    t2=$(ms)
    rejoined+=($((t1 - t0)))
    served+=($((t2 - t0)))
    echo "run $run: rejoined ${rejoined[-1]} ms, served ${served[-1]} ms"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median of $RUNS: rejoined $(median "${rejoined[@]}") ms, served $(median "${served[@]}") ms"
