#!/usr/bin/env bash
# What policy costs: messages/s of `ringmx serve --sink --workers 1` under the load generator
# (50 connections × 100 pipelined 1 KiB messages, one thread, 5 s), with and without policy,
# direct and through HAProxy, in alternating rounds of one run. Policy on: `domains` plus a
# 1,000,000-address recipients file (every RCPT looked up), per-client limits counted for
# loopback too; through HAProxy, PROXY v2 headers as well. Loopback only; stops by itself.
#   bash bench/scripts/policy_cost.sh [ROUNDS]      (needs haproxy; release binaries)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
BIN=target/release/ringmx
LOADGEN=target/release/ringmx-loadgen
command -v haproxy >/dev/null || { echo "needs haproxy" >&2; exit 1; }
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

python3 - "$TMP/recipients" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    # The load generator's recipients are user0..user149@example.com (its RCPT pool; more listed).
    for i in range(1024):
        f.write(f"user{i}@example.com\n")
    for i in range(1_000_000 - 1024):
        f.write(f"someone{i:07}@example.com\n")
PY
cat >"$TMP/policy.toml" <<TOML
domains = ["example.com"]
recipients = "$TMP/recipients"
max_connections_per_client = 1000
client_limits_for_relay_networks = true
TOML
: >"$TMP/none.toml"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME CONFIG [--proxy-protocol]: a server on a free port, left in $PORT (not a
# command substitution: its subshell would own the server and run the EXIT trap).
start() {
    local port; port=$(free_port)
    "$BIN" serve --sink --workers 1 --listen "127.0.0.1:$port" --config "$2" "${@:3}" 2>"$TMP/$1.log" &
    PIDS+=($!)
    for _ in $(seq 300); do grep -q 'ringmx started' "$TMP/$1.log" && break; sleep 0.1; done
    PORT=$port
}

# haproxy NAME BACKEND_PORT PROXY_OPTION: a tcp-mode HAProxy in front, its port in $PORT.
haproxy_front() {
    local port; port=$(free_port)
    cat >"$TMP/$1.cfg" <<CFG
global
    maxconn 512
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend f
    bind 127.0.0.1:$port
    default_backend b
backend b
    server s1 127.0.0.1:$2 $3
CFG
    haproxy -db -f "$TMP/$1.cfg" >"$TMP/$1.hlog" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),1).close()" 2>/dev/null && break
        sleep 0.1
    done
    PORT=$port
}

start plain "$TMP/none.toml"; plain=$PORT
start policy "$TMP/policy.toml"; policy=$PORT
grep -o 'addresses=[0-9]*' "$TMP/policy.log" | head -1 >&2
start proxied "$TMP/policy.toml" --proxy-protocol; proxied=$PORT
haproxy_front hplain "$plain" ""; h_plain=$PORT
haproxy_front hproxied "$proxied" "send-proxy-v2"; h_proxied=$PORT

rate() { # PORT: messages/s of one run
    "$LOADGEN" --target "127.0.0.1:$1" --connections 50 --messages-per-session 100 \
        --threads 1 --duration 5s --quiet --json \
        | python3 -c 'import json,sys; s=json.load(sys.stdin); assert s["errors"]["mismatch"]==0, s["errors"]; print(round(s["throughput"]["messages_per_s"]))'
}

echo "| round | direct, no policy | direct, policy | HAProxy, no policy | HAProxy + PROXY v2, policy |"
echo "| --- | --- | --- | --- | --- |"
for r in $(seq "$ROUNDS"); do
    echo "| $r | $(rate "$plain") | $(rate "$policy") | $(rate "$h_plain") | $(rate "$h_proxied") |"
done
