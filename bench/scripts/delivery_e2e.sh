#!/usr/bin/env bash
# End to end on loopback: ringmx-loadgen into ringmx (log spool) with and without delivery to
# Postfix's smtp-sink, in one run. Reports messages/s accepted, delivered during the load
# window and the queue left at its end, then (at half the acceptance rate, open loop) the
# delivery latency p50/p99 from commit to the sink's 250. Nothing else should run meanwhile.
# Usage: bash bench/scripts/delivery_e2e.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
BIN=target/release/ringmx
LOADGEN=target/release/ringmx-loadgen
[ -x "$BIN" ] && [ -x "$LOADGEN" ] || cargo build --release -p ringmx -p ringmx-loadgen
command -v smtp-sink >/dev/null || { echo "needs Postfix's smtp-sink" >&2; exit 1; }
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SINK_PORT=$(free_port)
user=(); [ "$(id -u)" = 0 ] && user=(-u nobody)
smtp-sink "${user[@]}" -c "127.0.0.1:$SINK_PORT" 1000 >"$TMP/sink.log" 2>&1 &
PIDS+=($!)
sleep 0.5

# run NAME RELAY LOADGEN_ARGS...: prints accepted/s, delivered/s in the window, queue left.
run() {
    local name=$1 relay=$2; shift 2
    local port dir
    port=$(free_port); dir="$TMP/spool-$name"
    local relay_args=(); [ -n "$relay" ] && relay_args=(--relay-to "$relay")
    sync
    "$BIN" serve --listen "127.0.0.1:$port" --spool "$dir" --stats-file "$TMP/stats-$name.json" \
        "${relay_args[@]}" 2>"$TMP/server-$name.log" &
    local server=$!
    PIDS+=($server)
    for _ in $(seq 300); do grep -q 'ringmx started' "$TMP/server-$name.log" && break; sleep 0.1; done
    "$LOADGEN" --target "127.0.0.1:$port" --mix valid=100 --msg-size 1k --duration "${SECS}s" \
        --quiet --json "$@" >"$TMP/load-$name.json"
    local at_end=""
    [ -n "$relay" ] && at_end=$("$BIN" queue stats --spool "$dir")
    # Let the queue drain (bounded), then stop.
    if [ -n "$relay" ]; then
        for _ in $(seq 600); do
            [ -z "$("$BIN" queue list --spool "$dir")" ] && break
            sleep 0.1
        done
    fi
    kill -TERM "$server"; wait "$server" || true
    python3 - "$name" "$SECS" "$TMP/load-$name.json" "$TMP/stats-$name.json" "$at_end" <<'PY'
import json, sys
name, secs, load, stats, at_end = sys.argv[1:6]
l = json.load(open(load)); s = json.load(open(stats))
acc = l["throughput"]["messages_per_s"]
d = json.loads(at_end) if at_end else None
line = f"| {name} | {acc:,.0f} | {l['errors']['total']} |"
if d:
    dests = list(s["delivery"]["destinations"].values())
    lat = dests[0]["latency_us"] if dests else {}
    line += (f" {d['delivered'] / float(secs):,.0f} | {d['queue_size']:,} | {s['delivery']['delivered']:,} |"
             f" {lat.get('p50', 0) / 1000:.2f} | {lat.get('p99', 0) / 1000:.2f} | {dests[0]['connections'] if dests else 0} |")
else:
    line += " - | - | - | - | - | - |"
print(line)
PY
}

echo "| run | accepted msg/s | errors | delivered msg/s (load window) | queue at end of load | delivered in all | latency p50 ms | latency p99 ms | connections |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
run store-only "" --connections 200 --messages-per-session 100
run relay-closed "smtp:127.0.0.1:$SINK_PORT" --connections 200 --messages-per-session 100
RATE=${HALF_RATE:-}
if [ -z "$RATE" ]; then
    RATE=$(python3 -c "import json; print(int(json.load(open('$TMP/load-store-only.json'))['throughput']['messages_per_s'] / 2 / 100))")
fi
# Open loop at half the store-only rate: sessions/s of 100 messages each.
run relay-half "smtp:127.0.0.1:$SINK_PORT" --rate "$RATE" --messages-per-session 100

# The anchor: Postfix as the frontend in the same setup (smtpd -> cleanup -> qmgr -> smtp to the
# same sink), a private instance under $TMP (needs root, as Postfix's master does).
[ "$(id -u)" = 0 ] || exit 0
PF=$TMP/postfix
chmod 0755 "$TMP"
PF_PORT=$(free_port)
mkdir -p "$PF/etc" "$PF/queue" "$PF/data"
chmod 0755 "$PF" "$PF/etc" "$PF/queue"
chown postfix "$PF/data"
: >"$PF/etc/main.cf"
cat >"$PF/etc/master.cf" <<MASTER
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
smtp      unix  -       -       n       -       -       smtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
MASTER
postconf -c "$PF/etc" -e "compatibility_level = 3.6" "queue_directory = $PF/queue" \
    "data_directory = $PF/data" "maillog_file = $PF/maillog" "maillog_file_prefixes = $PF" \
    "inet_interfaces = loopback-only" "inet_protocols = ipv4" "myhostname = postfix.test" \
    "mydestination =" "mynetworks = 127.0.0.0/8" "relayhost = [127.0.0.1]:$SINK_PORT" \
    "smtp_dns_support_level = disabled" "smtpd_peername_lookup = no" "alias_maps =" \
    "alias_database =" "local_transport = error:none" "smtpd_client_connection_count_limit = 0"
postfix -c "$PF/etc" start >"$TMP/postfix-start.log" 2>&1 || { cat "$TMP/postfix-start.log" >&2; exit 1; }
trap 'postfix -c "$PF/etc" abort >/dev/null 2>&1 || true; cleanup' EXIT
sleep 2
"$LOADGEN" --target "127.0.0.1:$PF_PORT" --mix valid=100 --msg-size 1k --duration "${SECS}s" \
    --quiet --json --connections 200 --messages-per-session 100 >"$TMP/load-postfix.json" || true
left=$( (find "$PF/queue/incoming" "$PF/queue/active" "$PF/queue/deferred" -type f 2>/dev/null || true) | wc -l)
sent=$(grep -c 'status=sent' "$PF/maillog" || true)
python3 - "$SECS" "$TMP/load-postfix.json" "$left" "$sent" <<'PY'
import json, sys
secs, load, left, sent = sys.argv[1:5]
l = json.load(open(load))
acc = l["throughput"]["messages_per_s"]
sent = l["throughput"].get("messages", acc * float(secs))
print(f"| postfix frontend | {acc:,.0f} | {l['errors']['total']} | {int(sent) / float(secs):,.0f} | {int(left):,} | - | - | - | - |")
PY
