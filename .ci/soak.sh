#!/usr/bin/env bash
# The soak and fault harness in its short form (bench/soak/soak.py --short, bench/soak/README.md):
# ringmx with a durable log spool, 2 workers, a recipients table and metrics, half the load
# through HAProxy (send-proxy-v2), delivering to Postfix's smtp-sink that is down for 5 s of
# every 15; 1,000 closed-loop connections of ringmx-loadgen for 15 s, three runs: the baseline,
# kill -9 twice at seeded moments (restarted at once), and SIGHUP every second alternating a
# good and a broken configuration. Each run must show 0 mismatches (except where a fault is
# visible to clients), every acknowledged message delivered downstream (duplicates only where
# a crash explains them), RSS flat after 5 s and no descriptor leak. About 3 minutes on 2
# cores. Needs root (smtp-sink -u nobody); installs haproxy and postfix (debconf "No
# configuration": only smtp-sink is used, no Postfix instance is started) if missing.
# Prints "soak: passed", or every run's results and the logs' tails and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${RINGMX_BIN:-target/debug/ringmx}
LOADGEN=${RINGMX_LOADGEN_BIN:-target/debug/ringmx-loadgen}
[ -x "$BIN" ] || cargo build -p ringmx
[ -x "$LOADGEN" ] || cargo build -p ringmx-loadgen
PATH=$PATH:/usr/sbin:/sbin
[ "$(id -u)" -eq 0 ] || { echo "soak: needs root (smtp-sink -u nobody)" >&2; exit 1; }

need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
[ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v prlimit >/dev/null 2>&1 || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# SIGTERM at the bound: soak.py unwinds through its cleanup (every process it started killed).
STATUS=0
timeout --kill-after=30 600 python3 bench/soak/soak.py --short --ringmx "$BIN" --loadgen "$LOADGEN" \
    --out "$OUT/runs" >"$OUT/soak.log" 2>&1 || STATUS=$?
if [ "$STATUS" -ne 0 ]; then
    cat "$OUT/soak.log" >&2
    for f in "$OUT"/runs/*/ringmx-*.log "$OUT"/runs/*/haproxy.log "$OUT"/runs/*/loadgen-*.log; do
        [ -s "$f" ] || continue
        echo "--- $f (last 20 lines)" >&2
        tail -n 20 "$f" | cut -c1-400 >&2
    done
    echo "soak: failed (status $STATUS)" >&2
    exit 1
fi
echo "soak: passed"
