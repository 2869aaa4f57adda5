#!/usr/bin/env bash
# Measures ringmx's memory per session in each state and per queued message, at scale, on both backends.
#
# Sessions (bench/scripts/session_memory.py holds them; one fresh server per run, default two
# workers): idle (after EHLO), data (mid-body, 4 KiB of it sent; 64 KiB in two more runs),
# tls-idle (after STARTTLS + EHLO), tls-data; with --sink at 1,000 / 5,000 / 10,000 sessions (a sink connection needs one
# descriptor, so 10,000 fit in the 20,000 of this machine), and in DATA with the `log` and
# the `files` spool at 1,000 / 3,000 / 6,000 (a spooling connection is counted as three
# descriptors, so about 6,600 fit). The fixed part: a fresh server, and the same after 10 s
# of load once every session has closed. Deferred delivery (io_uring, `log` spool): relaying to
# a port nothing listens on (every attempt refused, the next in an hour), messages of 1 KiB
# committed by ringmx-loadgen, 5,000 to warm up, then 20,000 / 40,000 / 60,000 in all: with
# one recipient each and with five (delivery_active_limit raised to 100,000, so the runner
# holds all of them), with one past the default limit (20,000: the rest wait as ids), and
# store-only (no delivery: the spool's index alone); RSS read once the runner has them all.
# Usage: bash bench/scripts/memory_at_scale.sh [OUT.jsonl]  (from the workspace root)
# RINGMX and LOADGEN name the binaries (default target/release/…); ports 24000-24099.
# PARTS (default "sessions fixed queue") picks what runs.
# Every process started here is stopped before the script ends.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
RINGMX=${RINGMX:-target/release/ringmx}
LOADGEN=${LOADGEN:-target/release/ringmx-loadgen}
OUT=${1:-tuning/capacity/memory.jsonl}
PORT=${PORT:-24000}
PARTS=${PARTS:-sessions fixed queue}
DEAD_PORT=$((PORT + 99))
ulimit -n "$(ulimit -Hn)"
TMP=$(mktemp -d /tmp/ringmx-memory.XXXXXX)
SERVER=
cleanup() {
    if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
: >"$OUT"

printf 'subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$TMP/leaf.ext"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$TMP/ca.key" -out "$TMP/ca.pem" -days 2 -subj "/CN=memory CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req "${ec[@]}" -keyout "$TMP/leaf.key" -out "$TMP/leaf.csr" -subj /CN=localhost 2>/dev/null
openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 2 -out "$TMP/leaf.pem" -extfile "$TMP/leaf.ext" 2>/dev/null

# start BACKEND STORE [TOML…]: a fresh server (STORE sink|log|files) on $PORT; sets SERVER.
start() {
    local backend=$1 store=$2
    shift 2
    rm -rf "$TMP/spool"
    {
        echo "listen = [\"127.0.0.1:$PORT\"]"
        echo "tls_cert = \"$TMP/leaf.pem\""
        echo "tls_key = \"$TMP/leaf.key\""
        echo "backend = \"$backend\""
        # A held body must not be cut off by the data rate floor (RFC 5321 leaves it to us).
        echo "min_data_rate = 0"
        if [ "$store" = sink ]; then
            echo "sink = true"
            echo "max_connections = 12000"
        else
            echo "spool = \"$TMP/spool\""
            echo "spool_format = \"$store\""
            echo "max_connections = 6500"
        fi
        for line in "$@"; do echo "$line"; done
    } >"$TMP/ringmx.toml"
    RUST_LOG=warn "$RINGMX" serve --config "$TMP/ringmx.toml" 2>"$TMP/server.log" &
    SERVER=$!
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.05
    done
    sleep 0.5
}

stop() {
    kill -TERM "$SERVER"
    wait "$SERVER" || true
    SERVER=
    if [ -s "$TMP/server.log" ]; then sed 's/^/  server: /' "$TMP/server.log" | tail -5; fi
}

# sessions BACKEND STORE STATE LEVELS [BODY]: one fresh server, sessions held in STATE.
sessions() {
    local backend=$1 store=$2 state=$3 levels=$4 body=${5:-4096}
    start "$backend" "$store"
    python3 "$HERE/session_memory.py" --state "$state" --levels "$levels" --tls-ca "$TMP/ca.pem" \
        --body "$body" --label "$backend/$store" --json "$OUT" "$PORT" "$SERVER"
    stop
}

part() { [[ " $PARTS " == *" $1 "* ]]; }

if part sessions; then
for backend in uring epoll; do
    for state in idle tls-idle data tls-data; do
        sessions "$backend" sink "$state" 1000,5000,10000
    done
    for state in data tls-data; do
        sessions "$backend" log "$state" 1000,3000,6000
    done
    sessions "$backend" files data 1000,3000,6000
done
# 64 KiB into the body: a full TLS record (16 KiB) last read, a full BufWriter for `files`.
sessions uring log tls-data 1000,3000,6000 65536
sessions uring files data 1000,3000,6000 65536
fi

# rss_line LABEL RCPTS MESSAGES: the server's memory now, as a JSON line.
rss_line() {
    python3 - "$SERVER" "$@" <<'EOF'
import json, sys
pid, label, rcpts, messages = sys.argv[1:5]
def kib(path, key):
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
print(json.dumps({"label": label, "rcpts": int(rcpts), "messages": int(messages),
                  "vmrss_kib": kib(f"/proc/{pid}/status", "VmRSS"),
                  "rss_anon_kib": kib(f"/proc/{pid}/status", "RssAnon"),
                  "private_dirty_kib": kib(f"/proc/{pid}/smaps_rollup", "Private_Dirty")}))
EOF
}

# queue_stat KEY: a field of `ringmx queue stats` (JSON) of the running server.
queue_stat() {
    "$RINGMX" queue stats --spool "$TMP/spool" 2>/dev/null \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1" 2>/dev/null || echo 0
}

# queue_run LABEL RCPTS ACTIVE_LIMIT [TOML…]: 5,000 messages to warm up (pooled buffers, the
# allocator, the first segment), then 20,000, 40,000 and 60,000 in all; RSS after each, once
# the runner has taken them all (deferred each recipient after a refused connect, or, past
# delivery_active_limit, kept as an id waiting for room).
queue_run() {
    local label=$1 rcpts=$2 limit=$3
    shift 3
    start uring log "delivery_active_limit = $limit" "$@"
    local total=0 got step
    for step in 5000 15000 20000 20000; do
        total=$((total + step))
        "$LOADGEN" --target "127.0.0.1:$PORT" --connections 50 --sessions $((step / 100)) \
            --messages-per-session 100 --rcpts "$rcpts:$rcpts" --msg-size 1k --mix valid=100 \
            --threads 1 --quiet --timeout 30s --json >"$TMP/loadgen.json"
        got=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["messages"])' "$TMP/loadgen.json")
        [ "$got" -eq "$step" ] || { echo "only $got of $step messages accepted" >&2; exit 1; }
        if [ "$label" != store-only ]; then
            local active=$((total < limit ? total : limit)) ok=
            for _ in $(seq 900); do
                if [ "$(queue_stat deferred)" -ge $((active * rcpts)) ] \
                    && [ "$(queue_stat queue_size)" -ge "$total" ]; then ok=1; break; fi
                sleep 0.2
            done
            [ -n "$ok" ] || { echo "$label: runner has not deferred $total messages" >&2; exit 1; }
        fi
        sleep 2
        rss_line "$label" "$rcpts" "$total" >>"$TMP/queue.jsonl"
    done
    stop
}

# The fixed part: a fresh server's RSS, then after 10 s of 200 connections sending 1 KiB to
# 2 MiB messages to 1-5 recipients (buffers pooled, io_uring's provided buffers touched, the
# allocator's arenas grown), once every session has closed; and the peak (VmHWM).
if part fixed; then
for backend in uring epoll; do
    start "$backend" log
    fresh=$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER/status")
    "$LOADGEN" --target "127.0.0.1:$PORT" --connections 200 --duration 10s --msg-size 1k:2m \
        --rcpts 1:5 --mix valid=100 --threads 1 --quiet --json >"$TMP/loadgen.json"
    sleep 2
    python3 - "$SERVER" "$backend" "$fresh" "$TMP/loadgen.json" "$OUT" <<'EOF'
import json, sys
pid, backend, fresh, summary, out = sys.argv[1:6]
def kib(path, key):
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
s = json.load(open(summary))
res = {"label": f"{backend}/log", "state": "fixed", "fresh_vmrss_kib": int(fresh),
       "warm_vmrss_kib": kib(f"/proc/{pid}/status", "VmRSS"),
       "warm_private_dirty_kib": kib(f"/proc/{pid}/smaps_rollup", "Private_Dirty"),
       "peak_vmhwm_kib": kib(f"/proc/{pid}/status", "VmHWM"),
       "load": {"messages": s["messages"], "sessions_ok": s["sessions"]["ok"],
                "errors": s["errors"]["total"], "bytes_sent": s["bytes_sent"]}}
print(f"fixed {backend}/log fresh={res['fresh_vmrss_kib']}KiB warm={res['warm_vmrss_kib']}KiB "
      f"peak={res['peak_vmhwm_kib']}KiB after {s['messages']} messages")
with open(out, "a") as f:
    f.write(json.dumps(res) + "\n")
EOF
    stop
done
fi

part queue || exit 0
: >"$TMP/queue.jsonl"
dead=("relay_to = \"smtp:127.0.0.1:$DEAD_PORT\"" "min_backoff_secs = 3600")
queue_run store-only 1 100000
queue_run deferred 1 100000 "${dead[@]}"
queue_run deferred 5 100000 "${dead[@]}"
queue_run deferred-past-limit 1 20000 "${dead[@]}"
python3 - "$TMP/queue.jsonl" "$OUT" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
runs = {}
for r in rows:
    runs.setdefault((r["label"], r["rcpts"]), []).append(r)
with open(sys.argv[2], "a") as out:
    for (label, rcpts), pts in runs.items():
        fit = [p for p in pts if p["messages"] >= 20000]
        xs = [p["messages"] for p in fit]
        def slope(key):
            ys = [p[key] * 1024 for p in fit]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        res = {"label": f"queue/{label}", "state": "queued", "rcpts": rcpts, "points": pts,
               "per_message_bytes": {"vmrss": slope("vmrss_kib"), "rss_anon": slope("rss_anon_kib"),
                                     "private_dirty": slope("private_dirty_kib")}}
        out.write(json.dumps(res) + "\n")
        print(f"queue/{label} rcpts={rcpts} " + " ".join(f"rss@{p['messages']}={p['vmrss_kib']}KiB" for p in pts)
              + f" per_message: vmrss={res['per_message_bytes']['vmrss']:.0f} private_dirty={res['per_message_bytes']['private_dirty']:.0f}")
EOF
