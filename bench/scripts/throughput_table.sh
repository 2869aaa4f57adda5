#!/usr/bin/env bash
# README's server throughput table: messages/s of ringmx (io_uring and epoll, one and two
# workers, --sink) and Postfix's smtp-sink under smtp-source and under ringmx-loadgen, in
# ROUNDS alternating rounds of one run, 1 KiB messages, loopback.
# Run as root from the workspace root after `cargo build --release -p ringmx -p ringmx-loadgen`,
# with Postfix installed (smtp-source, smtp-sink). BASE_BIN=path adds the same ringmx targets
# run from that binary (base-uring1, …), for an A/B of two builds in one run. Every server
# started here is stopped.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
BIN=target/release/ringmx
LOADGEN=target/release/ringmx-loadgen
OUT=$(mktemp -d /tmp/ringmx-throughput.XXXXXX)
PORT=${PORT:-2800}
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true; }
trap cleanup EXIT

# start TARGET PORT: uring1|epoll1|uring2|epoll2 (backend, workers) or sink.
start() {
    local target=$1 port=$2
    if [ "$target" = sink ]; then
        smtp-sink -u nobody "127.0.0.1:$port" 1000 &
        SERVER_PID=$!
        sleep 0.5
        return
    fi
    local bin=$BIN kind=$target
    if [[ $target == base-* ]]; then
        bin=$BASE_BIN
        kind=${target#base-}
    fi
    RINGMX_BACKEND= "$bin" serve --listen "127.0.0.1:$port" --sink --backend "${kind%?}" \
        --workers "${kind: -1}" 2>"$OUT/log-$target-$port" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        grep -q "ringmx started" "$OUT/log-$target-$port" 2>/dev/null && break
        sleep 0.05
    done
    grep -q "backend=\"${kind%?}\"" "$OUT/log-$target-$port"
}

stop() {
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=
}

smtp_source_rate() {
    local start end
    start=$(date +%s.%N)
    timeout 120 smtp-source -s 50 -m 50000 -l 1024 -d "127.0.0.1:$1"
    end=$(date +%s.%N)
    echo "50000 / ($end - $start)" | bc -l | xargs printf '%.0f'
}

loadgen_rate() {
    "$LOADGEN" --target "127.0.0.1:$1" --threads 1 --quiet --json --connections 50 \
        --messages-per-session 200 --duration "$DURATION" | tee "$OUT/loadgen-$1.json" \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["throughput"]["messages_per_s"]), d["errors"]["total"])'
}

echo "== messages/s, $ROUNDS rounds, results in $OUT"
for round in $(seq "$ROUNDS"); do
    targets="uring1 epoll1 uring2 epoll2"
    [ -n "${BASE_BIN:-}" ] && targets="$targets base-uring1 base-epoll1 base-uring2 base-epoll2"
    for target in $targets sink; do
        PORT=$((PORT + 1))
        start "$target" "$PORT"
        src=$(smtp_source_rate "$PORT")
        read -r lg errors <<<"$(loadgen_rate "$PORT")"
        stop
        echo "round=$round target=$target smtp_source=$src loadgen=$lg loadgen_errors=$errors"
    done
done
