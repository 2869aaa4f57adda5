#!/usr/bin/env bash
# Runs the capacity sweeps of the realistic MX mix against a durable ringmx (with and without TLS, `files` and `log` spool, 1 and 2 workers) and plots them.
#
# The mix (issue 14): 60% valid with 1-5 recipients and log-normal sizes from 1 KiB to 2 MiB,
# 20% STARTTLS (the `tls` class, a valid transaction after STARTTLS), 5% each typo,
# unknown_user, relay, nonsmtp, slowloris; without TLS the 20% goes to valid. The server:
# `domains = ["example.com"]` with the load generator's recipients (user0..user149) in its
# table, `relay_networks = []` (so the loopback client is refused at a foreign domain:
# `554 5.7.1`), per-client limits off (every client is 127.0.0.x), the spool on the real file
# system in a fresh directory, no delivery (a store-only frontend). Each sweep is open loop,
# STEP_S seconds per step, from its FROM to TO by STEP until p99 corrected session latency
# exceeds 500 ms or errors exceed 0.1% of sessions, after a warm-up of STEP_S at FROM that is
# no step (a fresh server's first seconds, slower, would otherwise break the first step).
# Slowloris sessions count in their own `held` phase, not in session latency; those the
# server has not closed when a step ends are counted as aborted, not as errors.
# The load generator runs on the same two cores with one thread (--threads 1).
# Usage: bash bench/scripts/capacity_sweeps.sh [probe]   (from the workspace root)
#   probe: one short sweep per TLS setting and spool (2 workers, 4 s steps) to pick ranges.
# Writes tuning/capacity/mix-{plain,tls}-{log,files}-w{1,2}.json (the sweep.json of each),
# mix-cpu.jsonl (CPU seconds of the server and of the load generator over each sweep), and
# mix-plain.svg, mix-tls.svg (ringmx-loadgen plot). RINGMX, LOADGEN name the binaries (default
# target/release/…), OUT the directory (default tuning/capacity); ports 24100-24199.
# Every process started here is stopped before the script ends.
set -euo pipefail

RINGMX=${RINGMX:-target/release/ringmx}
LOADGEN=${LOADGEN:-target/release/ringmx-loadgen}
OUT=${OUT:-tuning/capacity}
STEP_S=${STEP_S:-10}
PORT=${PORT:-24100}
MODE=${1:-sweep}
ulimit -n "$(ulimit -Hn)"
TMP=$(mktemp -d /tmp/ringmx-capacity.XXXXXX)
SERVER=
cleanup() {
    if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

# The ranges (sessions/s offered): the runs of 2026-12-03 broke inside them (tuning/capacity/README.md).
declare -A RANGE=(
    [plain-log-w1]=${RANGE_PLAIN_LOG_W1:-1000:4000:500}
    [plain-log-w2]=${RANGE_PLAIN_LOG_W2:-2000:5000:500}
    [plain-files-w1]=${RANGE_PLAIN_FILES_W1:-600:2600:200}
    [plain-files-w2]=${RANGE_PLAIN_FILES_W2:-600:2600:200}
    [tls-log-w1]=${RANGE_TLS_LOG_W1:-1000:3500:500}
    [tls-log-w2]=${RANGE_TLS_LOG_W2:-1500:4500:500}
    [tls-files-w1]=${RANGE_TLS_FILES_W1:-600:2600:200}
    [tls-files-w2]=${RANGE_TLS_FILES_W2:-600:2600:200}
)

printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$TMP/leaf.ext"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$TMP/ca.key" -out "$TMP/ca.pem" -days 2 -subj "/CN=capacity CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req "${ec[@]}" -keyout "$TMP/leaf.key" -out "$TMP/leaf.csr" -subj /CN=localhost 2>/dev/null
openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 2 -out "$TMP/leaf.pem" -extfile "$TMP/leaf.ext" 2>/dev/null
# The load generator's valid recipients: user{i}@example.com, i in 0..RCPT_POOL (150).
for i in $(seq 0 149); do echo "user$i@example.com"; done >"$TMP/recipients"

# start SPOOL WORKERS: a fresh durable server on $PORT; sets SERVER.
start() {
    local spool=$1 workers=$2
    rm -rf "$TMP/spool"
    cat >"$TMP/ringmx.toml" <<EOF
listen = ["127.0.0.1:$PORT"]
hostname = "mx.capacity.test"
tls_cert = "$TMP/leaf.pem"
tls_key = "$TMP/leaf.key"
spool = "$TMP/spool"
spool_format = "$spool"
workers = $workers
domains = ["example.com"]
recipients = "$TMP/recipients"
relay_networks = []
max_connections_per_client = 0
max_connections = 6000
EOF
    RUST_LOG=warn "$RINGMX" serve --config "$TMP/ringmx.toml" 2>"$TMP/server.log" &
    SERVER=$!
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.05
    done
    sleep 0.5
    kill -0 "$SERVER" || { cat "$TMP/server.log" >&2; exit 1; }
}

stop() {
    kill -TERM "$SERVER"
    wait "$SERVER" || true
    SERVER=
    if [ -s "$TMP/server.log" ]; then sed 's/^/  server: /' "$TMP/server.log" | tail -5; fi
}

# The mix and its message sizes; MIX_PLAIN, MIX_TLS, SIZES and TLS_ARGS replace them (for a
# load generator without issue 14's classes: see tuning/capacity/README.md).
MIX_PLAIN=${MIX_PLAIN:-valid=80,typo=5,unknown_user=5,relay=5,nonsmtp=5,slowloris=5}
MIX_TLS=${MIX_TLS:-valid=60,tls=20,typo=5,unknown_user=5,relay=5,nonsmtp=5,slowloris=5}
SIZES=${SIZES:---msg-size 1k:2m --msg-size-dist lognormal}
TLS_ARGS=${TLS_ARGS:-}

# cpu_s PID: CPU seconds (user + system) the process has used so far.
cpu_s() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}

# sweep NAME TLS SPOOL WORKERS RANGE STEP_S: one sweep into $TMP/NAME, and what it cost (the
# server's and the load generator's CPU seconds over the whole sweep) in $TMP/NAME/cpu.json.
sweep() {
    local name=$1 tls=$2 spool=$3 workers=$4 range=$5 step=$6 server_cpu gen_cpu mix
    mix=(--mix "$MIX_PLAIN")
    if [ "$tls" = tls ]; then mix=(--mix "$MIX_TLS" --tls-ca "$TMP/ca.pem" --tls-sni localhost $TLS_ARGS); fi
    start "$spool" "$workers"
    sync
    echo "== $name: --sweep $range, ${step}s steps ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
    /usr/bin/time -f '%U %S' -o "$TMP/$name.time" \
        "$LOADGEN" --target "127.0.0.1:$PORT" --threads 1 --rcpts 1:5 $SIZES "${mix[@]}" \
        --source-ips 127.0.0.2-127.0.0.30 --timeout 5s \
        --sweep "$range" --slo p99=500ms --error-budget 0.1 --step-duration "${step}s" \
        --sweep-warmup "${step}s" \
        --out "$TMP/$name" --quiet | tail -n 20
    server_cpu=$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$SERVER/stat")
    gen_cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$TMP/$name.time")
    printf '{"name": "%s", "range": "%s", "step_s": %s, "workers": %s, "args": "%s", "server_cpu_s": %s, "loadgen_cpu_s": %s}\n' \
        "$name" "$range" "$step" "$workers" "${mix[*]//$TMP\//} $SIZES" "$server_cpu" "$gen_cpu" >"$TMP/$name/cpu.json"
    echo "cpu: server $server_cpu s, load generator $gen_cpu s"
    stop
}

if [ "$MODE" = probe ]; then
    for tls in plain tls; do
        for spool in log files; do
            sweep "probe-$tls-$spool" "$tls" "$spool" 2 "${PROBE_RANGE:-200:2000:300}" 4
        done
    done
    exit 0
fi

# SWEEPS="plain-files-w1 tls-files-w2 ..." runs only those again (their files and lines of
# mix-cpu.jsonl replaced, the others kept), e.g. with a wider RANGE_…; the default runs all.
SWEEPS=${SWEEPS:-all}
if [ "$SWEEPS" = all ]; then : >"$OUT/mix-cpu.jsonl"; fi
for tls in plain tls; do
    for spool in log files; do
        for w in 1 2; do
            name=$tls-$spool-w$w
            if [ "$SWEEPS" != all ] && [[ " $SWEEPS " != *" $name "* ]]; then continue; fi
            sweep "$name" "$tls" "$spool" "$w" "${RANGE[$name]}" "$STEP_S"
            cp "$TMP/$name/sweep.json" "$OUT/mix-$name.json"
            grep -v "\"name\": \"$name\"" "$OUT/mix-cpu.jsonl" >"$TMP/cpu.jsonl" || true
            cat "$TMP/cpu.jsonl" "$TMP/$name/cpu.json" >"$OUT/mix-cpu.jsonl"
        done
    done
done
for tls in plain tls; do
    "$LOADGEN" plot "$OUT/mix-$tls.svg" --slo 500ms \
        "log, 1 worker=$OUT/mix-$tls-log-w1.json" "log, 2 workers=$OUT/mix-$tls-log-w2.json" \
        "files, 1 worker=$OUT/mix-$tls-files-w1.json" "files, 2 workers=$OUT/mix-$tls-files-w2.json"
done
python3 "$(dirname "$0")/capacity_table.py" "$OUT"
