#!/usr/bin/env bash
# What durability costs: messages/s of `ringmx serve` (default workers) with --sink, with
# --spool-format files and with --spool-format log, under the load generator (200 connections,
# 100 pipelined messages per connection, 10 s), at 1 KiB and 64 KiB, in alternating rounds of
# one run; beside them the disk's own figures (fdatasync after a 4 KiB append, sequential
# write with one fdatasync). Per run: messages/s, end-of-data-to-250 p50/p99 (the load
# generator's eod phase), and syncs per committed message from the server's --stats-file.
# Spools go under SPOOL_BASE (default ./target/spool-bench, the same file system as a
# checkout); each run's spool is deleted after it. Loopback only; stops by itself.
#   bash bench/scripts/spool_compare.sh [ROUNDS] [SECONDS]      (release binaries)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-1}
SECS=${2:-10}
BIN=target/release/ringmx
LOADGEN=target/release/ringmx-loadgen
BASE=${SPOOL_BASE:-target/spool-bench}
mkdir -p "$BASE"
TMP=$(mktemp -d)
SERVER=""
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$TMP" "$BASE"/run-*; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "disk ($(df -T "$BASE" | awk 'NR==2 {print $2}') on $(df "$BASE" | awk 'NR==2 {print $1}')):"
python3 - "$BASE" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "disk-probe")
fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
buf = b"x" * 4096
lat = []
for i in range(2000):
    os.write(fd, buf)
    t = time.perf_counter()
    os.fdatasync(fd)
    lat.append(time.perf_counter() - t)
lat.sort()
print(f"  fdatasync after a 4 KiB append: p50 {lat[1000]*1e3:.3f} ms, p99 {lat[1980]*1e3:.3f} ms")
os.ftruncate(fd, 0)
chunk = b"\0" * (1 << 20)
t = time.perf_counter()
for _ in range(1024):
    os.write(fd, chunk)
os.fdatasync(fd)
dt = time.perf_counter() - t
print(f"  sequential write of 1 GiB with one fdatasync: {1024 / dt:.0f} MiB/s")
os.close(fd)
os.unlink(path)
PY

# run MODE SIZE: one server, one load run; prints one table row.
run() {
    local mode=$1 size=$2 port dir args
    port=$(free_port)
    dir="$BASE/run-$mode-$size"
    rm -rf "$dir"
    case $mode in
        sink) args=(--sink) ;;
        files) args=(--spool "$dir" --spool-format files) ;;
        log) args=(--spool "$dir" --spool-format log) ;;
    esac
    sync
    "$BIN" serve --listen "127.0.0.1:$port" --max-message-size 1048576 --stats-file "$TMP/stats.json" \
        "${args[@]}" 2>"$TMP/server.log" &
    SERVER=$!
    for _ in $(seq 300); do grep -q 'ringmx started' "$TMP/server.log" && break; sleep 0.1; done
    "$LOADGEN" --target "127.0.0.1:$port" --connections 200 --messages-per-session 100 \
        --mix valid=100 --msg-size "$size" --duration "${SECS}s" --quiet --json >"$TMP/load.json"
    kill -TERM "$SERVER"
    wait "$SERVER" || true
    SERVER=""
    python3 - "$mode" "$size" "$TMP/load.json" "$TMP/stats.json" <<'PY'
import json, sys
mode, size, load, stats = sys.argv[1:5]
l = json.load(open(load))
s = json.load(open(stats)).get("spool", {})
eod = l["latency_us"]["eod"]
syncs = f'{s["syncs"] / s["committed"]:.3f}' if s.get("committed") else "-"
per_batch = f'{s["committed"] / s["batches"]:.1f}' if s.get("batches") else "-"
mbs = l["throughput"]["bytes_per_s"] / 1e6
print(f"| {mode} | {size} | {l['throughput']['messages_per_s']:,.0f} | {mbs:.1f} | "
      f"{eod['p50'] / 1000:.2f} | {eod['p99'] / 1000:.2f} | {syncs} | {per_batch} | {l['errors']['total']} |")
PY
    rm -rf "$dir"
}

echo
echo "| spool | size | messages/s | MB/s sent | eod p50 ms | eod p99 ms | syncs/message | messages/batch | errors |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for _ in $(seq "$ROUNDS"); do
    for size in 1k 64k; do
        for mode in sink files log; do
            run "$mode" "$size"
        done
    done
done
