#!/usr/bin/env bash
# Measures the effect of the settings in tuning/README.md on this machine: each pair of
# settings is run alternately ROUNDS times (A B A B …) so that drift hits both alike.
# ONLY=REGEX (no spaces) runs only the comparisons whose title matches.
# Loopback only; every run is bounded by --duration. Needs root for sysctl; restores every
# sysctl it changes. Usage: bash tuning/measure.sh [ROUNDS] > results.txt
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DUR=${DUR:-6s}
PORT=2650
SERVER=target/release/ringmx
LOADGEN=target/release/ringmx-loadgen
[ -x "$SERVER" ] && [ -x "$LOADGEN" ] || cargo build --release -p ringmx -p ringmx-loadgen
TMP=$(mktemp -d)
SAVED=()
restore_sysctls() { # newest first, so each key ends at its value from before the script
    local i
    for ((i = ${#SAVED[@]} - 1; i >= 0; i--)); do sysctl -qw "${SAVED[i]}" || true; done
    SAVED=()
}
restore() {
    restore_sysctls
    pkill -TERM -f "$SERVER serve --listen 127.0.0.1:$PORT" 2>/dev/null || true
    rm -rf "$TMP"
}
trap restore EXIT
set_sysctl() { # key value
    SAVED+=("$1=$(sysctl -n "$1" | tr '\t' ' ')")
    sysctl -qw "$1=$2"
}

# run LABEL "SERVER ARGS" "LOADGEN ARGS": prints LABEL and the loadgen's summary figures.
run() {
    rm -rf "$TMP/spool"
    # shellcheck disable=SC2086
    $SERVER serve --listen 127.0.0.1:$PORT $2 >"$TMP/server.log" 2>&1 &
    local pid=$!
    for _ in $(seq 50); do grep -q "ringmx started" "$TMP/server.log" 2>/dev/null && break; sleep 0.1; done
    # shellcheck disable=SC2086
    $LOADGEN --target 127.0.0.1:$PORT --duration "$DUR" --quiet --json $3 >"$TMP/out.json" 2>/dev/null || true
    kill -TERM "$pid"; wait "$pid" || true
    python3 - "$1" "$TMP/out.json" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
t, ph = s["throughput"], s["latency_us"]
errors = s["errors"]["total"] + s["sessions"]["backlog"]
print(f"{label:<44} {t['messages_per_s']:>10.0f} msg/s {t['sessions_per_s']:>9.0f} sess/s "
      f"connect p99 {ph['connect']['p99'] / 1000:>7.2f} ms  session p99 {ph['session']['p99'] / 1000:>7.2f} ms  errors {errors}")
PY
}

pair() { # TITLE; then two "LABEL|SETUP|SERVER ARGS|LOADGEN ARGS" specs
    [[ "$1" =~ ${ONLY:-.} ]] || return 0
    echo "== $1"
    for _ in $(seq "$ROUNDS"); do
        for spec in "$2" "$3"; do
            IFS='|' read -r label setup sargs largs <<<"$spec"
            eval "$setup"
            run "$label" "$sargs" "$largs"
        done
    done
    restore_sysctls
}

PIPE="--connections 50 --messages-per-session 200 --mix valid=100 --threads 1"
ONE="--connections 50 --mix valid=100 --threads 1"

pair "Backend with one worker, pipelined sink" \
    "--backend uring --workers 1|:|--sink --backend uring --workers 1|$PIPE" \
    "--backend epoll --workers 1|:|--sink --backend epoll --workers 1|$PIPE"
printf 'uring_min_wait_us = 0\n' >"$TMP/nominwait.toml"
printf 'uring_min_wait_us = 50\n' >"$TMP/minwait.toml"
pair "io_uring min wait with two workers beside the load generator, pipelined sink" \
    "uring_min_wait_us=50|:|--sink --backend uring --config $TMP/minwait.toml|$PIPE" \
    "uring_min_wait_us=0|:|--sink --backend uring --config $TMP/nominwait.toml|$PIPE"
pair "io_uring min wait with one worker, pipelined sink" \
    "uring_min_wait_us=50|:|--sink --backend uring --workers 1 --config $TMP/minwait.toml|$PIPE" \
    "uring_min_wait_us=0|:|--sink --backend uring --workers 1 --config $TMP/nominwait.toml|$PIPE"
pair "TCP autocorking, pipelined sink" \
    "tcp_autocorking=1|set_sysctl net.ipv4.tcp_autocorking 1|--sink|$PIPE" \
    "tcp_autocorking=0|set_sysctl net.ipv4.tcp_autocorking 0|--sink|$PIPE"
pair "Workers beside the load generator, pipelined sink" \
    "--workers 2|:|--sink --workers 2|$PIPE" \
    "--workers 1|:|--sink --workers 1|$PIPE"
pair "Listen backlog under an open-loop burst of 12,000 sessions/s" \
    "somaxconn=4096|set_sysctl net.core.somaxconn 4096|--sink|--rate 12000 --mix valid=100 --threads 1" \
    "somaxconn=64|set_sysctl net.core.somaxconn 64|--sink|--rate 12000 --mix valid=100 --threads 1"
pair "Without TIME_WAIT reuse (tcp_tw_reuse=0), one message per connection" \
    "one source IP|set_sysctl net.ipv4.tcp_tw_reuse 0|--sink|$ONE" \
    "19 source IPs|set_sysctl net.ipv4.tcp_tw_reuse 0|--sink|$ONE --source-ips 127.0.0.2-127.0.0.20"
printf 'spool_sync = "filesystem"\n' >"$TMP/fs.toml"
pair "Spool sync, one message per connection" \
    "spool_sync=file|:|--spool $TMP/spool|$ONE" \
    "spool_sync=filesystem|:|--spool $TMP/spool --config $TMP/fs.toml|$ONE"
