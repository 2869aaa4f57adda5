#!/usr/bin/env bash
# What the session and delivery-free log lines cost: messages/s of `ringmx serve --workers 1`
# storing into the durable default spool (the `log` format, fdatasync per batch) in a fresh
# temporary directory, as an MX runs, under the load generator in closed loop (50
# connections, ONE 1 KiB message per connection, so one `session ended` line per message),
# first at the default level (info), then with RUST_LOG=warn (no session lines), the same
# duration, back to back. Prints each rate and the ratio info/warn (the goal: >= 0.95).
# The server's stderr goes to a file, as to a journal. Loopback only; stops by itself.
#   bash bench/scripts/log_cost.sh [SECONDS]        (builds the release binaries first)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
cargo build --release -q -p ringmx -p ringmx-loadgen
# The build leaves a gigabyte of dirty pages on this file system; the spool's fdatasync
# would wait for their writeback during the first run (measured: 0.77 info/warn without
# this, 0.97 with), which would then be charged to the logging.
sync
BIN=target/release/ringmx
LOADGEN=target/release/ringmx-loadgen
TMP=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# run NAME [ENV...]: one server (fresh spool) and one load run; prints messages/s.
run() {
    local name=$1 port; shift
    # The same for the run before's spool (about 100 MB): each run starts on a clean disk.
    sync
    port=$(free_port)
    env "$@" "$BIN" serve --workers 1 --listen "127.0.0.1:$port" --spool "$TMP/$name.spool" \
        --hostname mx.test 2>"$TMP/$name.log" &
    PID=$!
    for _ in $(seq 300); do grep -q 'ringmx started' "$TMP/$name.log" && break; sleep 0.1; done
    "$LOADGEN" --target "127.0.0.1:$port" --mix valid=100 --connections 50 --messages-per-session 1 \
        --threads 1 --duration "${SECS}s" --source-ips 127.0.0.2-127.0.0.20 --quiet --json \
        | python3 -c 'import json,sys; s=json.load(sys.stdin); assert s["errors"]["mismatch"]==0, s["errors"]; print(round(s["throughput"]["messages_per_s"]))'
    kill -TERM "$PID"; wait "$PID" || true; PID=
    echo "$name: $(grep -c 'session ended' "$TMP/$name.log") session lines" >&2
}

info=$(run info RUST_LOG=)
warn=$(run warn RUST_LOG=warn)
echo "info: $info messages/s"
echo "warn: $warn messages/s"
python3 -c "print(f'info/warn: {$info/$warn:.3f}')"
