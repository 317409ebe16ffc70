#!/usr/bin/env bash
# How soon a head killed with SIGKILL serves again once it is started on the same
# port and storage. A head and two nodes on loopback addresses; `hello` runs once
# so its binary is cached; a driver (`cluster_driver ticks`) submits one small task
# after another (`get` each, then 10 ms) and stamps each result. Then, per run:
# kill -9 the head, start it again (no token: it takes the stored one) and time,
# from that start,
#   resumed   the ticking driver's first result from the new head (the driver
#             reconnects as the same job and its pending task runs again),
#   rejoined  every node alive in `rayish status` again (they were waiting for it,
#             and come back as themselves with their work),
#   served    a new driver (`hello`: connect, register, tasks, results) done.
# One line per run, then the medians. A resumed driver's tasks wait until every node
# alive before the restart has come back (or the node timeout has passed), so that
# nothing a node still runs runs twice; see README, "How it behaves under failure".
#
#     bash benches/head_restart.sh              # 5 runs
#     RUNS=10 bash benches/head_restart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p rayish-cli
cargo build -q --release --example hello
cargo build -q --release --bin cluster_driver
RAYISH=$PWD/target/release/rayish
HELLO=$PWD/target/release/examples/hello
TICKER=$PWD/target/release/cluster_driver
RUNS=${RUNS:-5}
PORT=${PORT:-46379}
HEAD_IP=127.0.0.2
export RAYISH_TEMP_DIR
RAYISH_TEMP_DIR=$(mktemp -d /tmp/rayish-restart-bench.XXXXXX)
TICKS=$RAYISH_TEMP_DIR/ticks.out
ticker=
cleanup() {
    touch "$RAYISH_TEMP_DIR/stop"
    [ -n "$ticker" ] && kill "$ticker" 2>/dev/null
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
# The first result stamped after $1 (ms), waiting for it.
first_tick_after() {
    local t
    while true; do
        t=$(awk -v t0="$1" '$1 == "TICK" && $2 > t0 {print $2; exit}' "$TICKS")
        [ -n "$t" ] && { echo "$t"; return; }
        sleep 0.02
    done
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
RAYISH_ADDRESS=$HEAD_IP:$PORT "$TICKER" ticks --until "$RAYISH_TEMP_DIR/stop" --pause-ms 10 \
    >"$TICKS" 2>"$RAYISH_TEMP_DIR/ticks.err" &
ticker=$!
first_tick_after 0 >/dev/null

resumed=()
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
    t3=$(first_tick_after "$t0")
    resumed+=($((t3 - t0)))
    rejoined+=($((t1 - t0)))
    served+=($((t2 - t0)))
    echo "run $run: resumed ${resumed[-1]} ms, rejoined ${rejoined[-1]} ms, served ${served[-1]} ms"
done
touch "$RAYISH_TEMP_DIR/stop"
if ! wait "$ticker"; then
    echo "the ticking driver failed:" >&2
    cat "$RAYISH_TEMP_DIR/ticks.err" >&2
    exit 1
fi
ticker=
grep '^RESULT' "$TICKS"
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median of $RUNS: resumed $(median "${resumed[@]}") ms, rejoined $(median "${rejoined[@]}") ms, served $(median "${served[@]}") ms"
