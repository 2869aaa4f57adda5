#!/usr/bin/env bash
# Compares ringmx's io_uring and epoll backends (and Postfix's smtp-sink) under the same loads on loopback.
#
# Measures, per target: messages/s with `smtp-source -s 50 -m 50000 -l 1024 -d` and with
# ringmx-loadgen (200 pipelining connections, 100 messages per session, 10 s), interleaved over
# ROUNDS rounds; system calls per message under `strace -c -f` for a fixed loadgen run; RSS per
# idle session at IDLE sessions. The server (one worker) runs on CPU 0, the clients on CPU 1.
# Run as root from the workspace root after `cargo build --release -p ringmx -p ringmx-loadgen`.
# Every server and client started here is stopped before the script ends.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
# 20,000 idle sessions need that many descriptors in the server and in the client; where the
# hard limit cannot be raised (no CAP_SYS_RESOURCE), stay 1,000 under it.
ulimit -n 100000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
LIMIT=$(ulimit -n)
IDLE=${IDLE:-$(( LIMIT - 1000 < 20000 ? LIMIT - 1000 : 20000 ))}
BIN=target/release/ringmx
LOADGEN=target/release/ringmx-loadgen
OUT=$(mktemp -d /tmp/ringmx-bench.XXXXXX)
PORT=${PORT:-2700}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# start TARGET PORT: starts ringmx (TARGET uring|epoll) or smtp-sink; sets SERVER_PID.
start() {
    local target=$1 port=$2
    if [ "$target" = sink ]; then
        taskset -c 0 smtp-sink -u nobody "127.0.0.1:$port" 1000 &
        SERVER_PID=$!
        sleep 0.5
    else
        RINGMX_BACKEND= taskset -c 0 "$BIN" serve --listen "127.0.0.1:$port" --sink --workers 1 \
            --max-connections $((IDLE + 1000)) --backend "$target" \
            --stats-file "$OUT/stats-$target-$port" 2>"$OUT/log-$target-$port" &
        SERVER_PID=$!
        for _ in $(seq 100); do
            grep -q "ringmx started" "$OUT/log-$target-$port" 2>/dev/null && break
            sleep 0.05
        done
        grep -q "backend=\"$target\"" "$OUT/log-$target-$port"
    fi
    PIDS+=("$SERVER_PID")
}

# CPU seconds (user + system) the server has used so far.
cpu_s() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$SERVER_PID/stat"
}

stop() {
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
}

smtp_source_rate() {
    local start end
    start=$(date +%s.%N)
    taskset -c 1 timeout 120 smtp-source -s 50 -m 50000 -l 1024 -d "127.0.0.1:$1"
    end=$(date +%s.%N)
    echo "50000 / ($end - $start)" | bc -l | xargs printf '%.0f'
}

# loadgen PORT ARGS...: runs the load generator, keeps its summary in $OUT, prints it.
loadgen() {
    taskset -c 1 "$LOADGEN" --target "127.0.0.1:$1" --threads 1 --quiet --json "${@:2}" \
        | tee "$OUT/loadgen-$1.json"
}

field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

echo "== messages/s (smtp-source | loadgen), $ROUNDS rounds, results in $OUT"
for round in $(seq "$ROUNDS"); do
    for target in uring epoll sink; do
        PORT=$((PORT + 1))
        start "$target" "$PORT"
        c0=$(cpu_s)
        src=$(smtp_source_rate "$PORT")
        c1=$(cpu_s)
        lg=$(loadgen "$PORT" --connections 200 --messages-per-session 100 --duration 10s \
            | field 'd["messages"], round(d["throughput"]["messages_per_s"]), d["errors"]["total"]')
        c2=$(cpu_s)
        stop
        read -r lg_msgs lg_rate lg_errors <<<"$(tr -d '(),' <<<"$lg")"
        src_us=$(echo "($c1 - $c0) * 1000000 / 50000" | bc -l | xargs printf '%.1f')
        lg_us=$(echo "($c2 - $c1) * 1000000 / $lg_msgs" | bc -l | xargs printf '%.1f')
        echo "round=$round target=$target smtp_source_msgs_per_s=$src server_cpu_us_per_msg=$src_us" \
            "loadgen_msgs_per_s=$lg_rate server_cpu_us_per_msg=$lg_us loadgen_errors=$lg_errors"
    done
done

echo "== system calls per message (strace -c -f, loadgen 200 connections x 100 messages, 400 sessions)"
for target in uring epoll; do
    PORT=$((PORT + 1))
    start "$target" "$PORT"
    strace -c -f -p "$SERVER_PID" -o "$OUT/strace-$target" &
    STRACE=$!
    PIDS+=("$STRACE")
    sleep 1
    msgs=$(loadgen "$PORT" --connections 200 --messages-per-session 100 --sessions 400 --timeout 30s \
        | field 'd["messages"] if d["errors"]["total"] == 0 else sys.exit("loadgen errors")')
    kill -INT "$STRACE"
    wait "$STRACE" || true
    stop
    python3 - "$OUT/strace-$target" "$msgs" "$target" <<'PY'
import sys
path, msgs, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calls = {}
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[3].isdigit() and f[-1] != "total":
        calls[f[-1]] = int(f[3])
total = sum(calls.values())
top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
print(f"target={target} messages={msgs} syscalls={total} per_message={total / msgs:.3f} "
      + " ".join(f"{k}={v / msgs:.3f}" for k, v in top))
PY
done

echo "== RSS per idle session ($IDLE sessions)"
for target in uring epoll; do
    PORT=$((PORT + 1))
    start "$target" "$PORT"
    sleep 0.5
    python3 bench/scripts/idle_rss.py "$PORT" "$SERVER_PID" "$IDLE" 127.0.0.2 4 | sed "s/^/target=$target /"
    stop
done
