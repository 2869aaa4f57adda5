#!/usr/bin/env bash
# Tells a leak in delivery from allocator retention: does ringmx's RSS keep rising with each
# cycle of load and drain, or level off?
#
# ringmx (2 workers, durable log spool, relay_to Postfix's smtp-sink, per-client limits
# spread over 249 source addresses) takes CYCLES rounds of SESSIONS closed-loop sessions
# (200 connections, 1-5 recipients, log-normal sizes 1 KiB to 256 KiB); after each round it
# waits for the queue to empty (ringmx_queue_messages 0) and 5 s more, and prints VmRSS
# loaded and drained. FLAP=1 stops smtp-sink during each round and starts it after, so the
# whole round queues and then drains at once, as in the soak's outages.
# Usage: [FLAP=1] [CYCLES=5] [SESSIONS=15000] bash bench/scripts/rss_cycles.sh
# RINGMX, LOADGEN name the binaries (default target/release/…); ports 24610-24612. Needs
# root for smtp-sink -u nobody. Every process started here is stopped before it ends.
set -euo pipefail

RINGMX=${RINGMX:-target/release/ringmx}
LOADGEN=${LOADGEN:-target/release/ringmx-loadgen}
CYCLES=${CYCLES:-5}
SESSIONS=${SESSIONS:-15000}
PATH=$PATH:/usr/sbin
TMP=$(mktemp -d "${TMPDIR:-/var/tmp}/ringmx-rss.XXXXXX")
SINK= SERVER=
cleanup() {
    for p in $SERVER $SINK; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

start_sink() {
    smtp-sink -u nobody -h sink.test 127.0.0.1:24611 1024 &
    SINK=$!
}
stop_sink() {
    kill "$SINK"
    wait "$SINK" 2>/dev/null || true
}
cat >"$TMP/ringmx.toml" <<EOT
listen = ["127.0.0.1:24610"]
workers = 2
spool = "$TMP/spool"
spool_format = "log"
domains = ["example.com"]
relay_networks = []
metrics_listen = "127.0.0.1:24612"
relay_to = "smtp:127.0.0.1:24611"
relay_tls = "none"
min_backoff_secs = 1
max_backoff_secs = 10
EOT
start_sink
"$RINGMX" serve --config "$TMP/ringmx.toml" >"$TMP/server.log" 2>&1 &
SERVER=$!
rss() { awk '/^VmRSS/ { print int($2 / 1024) }' "/proc/$SERVER/status"; }
queue() { curl -s 127.0.0.1:24612/metrics | awk '$1 == "ringmx_queue_messages" { print $2 }'; }
for _ in $(seq 50); do [ -n "$(queue)" ] && break; sleep 0.1; done
echo "start: RSS $(rss) MiB"
for c in $(seq "$CYCLES"); do
    if [ -n "${FLAP:-}" ]; then stop_sink; fi
    "$LOADGEN" --target 127.0.0.1:24610 --connections 200 --sessions "$SESSIONS" --mix valid=1 \
        --rcpts 1:5 --msg-size 1k:256k --msg-size-dist lognormal --threads 1 \
        --source-ips 127.0.0.2-127.0.0.250 --timeout 30s --quiet >"$TMP/load.txt" 2>&1 || true
    loaded=$(rss) queued=$(queue)
    if [ -n "${FLAP:-}" ]; then start_sink; fi
    t0=$(date +%s)
    while [ "$(queue)" != 0 ] && [ $(($(date +%s) - t0)) -lt 600 ]; do sleep 1; done
    drained=$(($(date +%s) - t0))
    sleep 5
    echo "cycle $c: $(grep -m1 -o '[0-9]* ok' "$TMP/load.txt") sessions; loaded RSS $loaded MiB, queue $queued;" \
        "drained in $drained s (queue $(queue)): RSS $(rss) MiB"
done
curl -s 127.0.0.1:24612/metrics | grep -E '^ringmx_delivery_recipients_total.*(delivered|failed)'
