#!/usr/bin/env bash
# TLS on loopback: ringmx against Postfix's smtpd (OpenSSL) with the same certificates, in
# alternating rounds of one run, and the markdown tables that sum it up.
#
# Usage (as root, from the workspace root, after
#   cargo build --release -p ringmx -p ringmx-loadgen):
#   bench/scripts/tls_compare.sh
#   ROUNDS=3 DURATION=10s CONNS=50 RESUME_CONNS="8 50" IDLE=5000 bench/scripts/tls_compare.sh
#
# What it measures (every load generator run: ringmx-loadgen --threads 1, closed loop):
#  1. Full handshakes: --tls starttls --mix starttls=1 (EHLO, STARTTLS with a pipelined NOOP
#     the server must discard, handshake, EHLO, QUIT), no resumption, CONNS connections,
#     DURATION, certificate checked against the run's CA (--tls-ca, --tls-sni localhost), for
#     an ECDSA P-256 and an RSA-2048 certificate. Servers: ringmx --sink --workers 1, ringmx
#     with its default workers (one per CPU), Postfix smtpd.
#  2. The same with --tls-resume (rustls client, one ticket cache per loadgen thread), at each
#     of RESUME_CONNS connections, with --mix RESUME_MIX (default badparam=1: MAIL with a
#     broken address 501, MAIL 250, RSET 250, then QUIT; Postfix answers it as the load
#     generator expects, and it opens no queue file). Not the starttls class: there the reply
#     to QUIT is handled as the STARTTLS step and the load generator starts a second TLS client
#     on it, which takes a ticket from the cache and wastes it; Postfix issues one ticket per
#     full handshake and none on a resumed one, so with the starttls class it never resumes.
#     Not unimpl: Postfix answers EXPN 500, not 502. The client keeps at most 8 TLS 1.3 tickets
#     per server (rustls), so beyond 8 connections per thread fewer sessions can resume.
#  2b. Baseline: the RESUME_MIX sessions in plaintext, CONNS connections (server CPU per
#     session without TLS), and full handshakes with RESUME_MIX too; the last table subtracts
#     the baseline from both and derives the cost of one resumed handshake from the share
#     that resumed: (resume run − baseline − (1 − share) × (full − baseline)) / share.
#  3. Messages/s, ringmx --sink --workers 1, --mix valid=1 --messages-per-session 100, CONNS
#     connections, over STARTTLS and in plaintext (the same server, the same settings).
#  4. RSS per idle session (ringmx --sink --workers 1, a fresh server per mode): IDLE sessions
#     that did EHLO (plaintext), STARTTLS + EHLO, or implicit TLS + EHLO, then stay idle
#     (bench/scripts/idle_rss.py).
# Rates are wall clock; server CPU per handshake / per message is utime+stime of the server
# from /proc before and after each run (Postfix: every process of the private instance,
# master, smtpd, tlsmgr, postlogd..., including the children the master reaped), so it holds
# up when something else uses the cores. The load generator's CPU is reported too.
#
# The Postfix instance is private: a configuration, queue and data directory under OUT,
# loopback only (127.0.0.1:PORT+11 with the ECDSA certificate, PORT+12 with RSA), no
# postscreen, no port 25. Postfix is installed with apt-get if postconf is missing. The
# certificates (a CA and a leaf per key type, CN and SAN localhost) are generated under OUT at
# run time. Every server started here is stopped on exit (trap); OUT keeps the logs, the
# load generator summaries (runs/), results.jsonl, rss.jsonl and table.md.
# ringmx uses ports PORT+1..PORT+4 and PORT+21..PORT+22 (default PORT=2900).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-50}
RESUME_CONNS=${RESUME_CONNS:-"8 50"}
RESUME_MIX=${RESUME_MIX:-badparam=1}
MSG_DURATION=${MSG_DURATION:-10s}
IDLE=${IDLE:-5000}
PORT=${PORT:-2900}
BIN=${BIN:-target/release/ringmx}
LOADGEN=${LOADGEN:-target/release/ringmx-loadgen}
HERE=$(cd "$(dirname "$0")" && pwd)
HELPER="$HERE/tls_compare.py"
OUT=${OUT:-$(mktemp -d /tmp/ringmx-tls.XXXXXX)}
mkdir -p "$OUT/runs" "$OUT/certs"
# The Postfix user must reach its queue and data directories under OUT.
chmod 755 "$OUT"
RES="$OUT/results.jsonl"
RSS="$OUT/rss.jsonl"
: >"$RES"
: >"$RSS"

[ "$(id -u)" = 0 ] || { echo "run as root (Postfix instance)" >&2; exit 1; }
[ -x "$BIN" ] && [ -x "$LOADGEN" ] || { echo "build first: cargo build --release -p ringmx -p ringmx-loadgen" >&2; exit 1; }

declare -A RPID RPORT
PF=$OUT/postfix
PF_STARTED=
cleanup() {
    set +e
    for name in "${!RPID[@]}"; do
        kill -TERM "${RPID[$name]}" 2>/dev/null
    done
    for name in "${!RPID[@]}"; do
        wait "${RPID[$name]}" 2>/dev/null
    done
    if [ -n "$PF_STARTED" ]; then
        local master
        master=$(tr -d ' ' <"$PF/queue/pid/master.pid" 2>/dev/null)
        postfix -c "$PF/conf" stop >/dev/null 2>&1
        for _ in $(seq 50); do
            [ -n "$master" ] && kill -0 "$master" 2>/dev/null || break
            sleep 0.1
        done
        [ -n "$master" ] && kill -0 "$master" 2>/dev/null && kill -KILL "$master"
        # The instance's other processes (its session) exit on their own once the master
        # has gone; wait for them.
        for _ in $(seq 50); do
            [ -n "$master" ] && ps -eo sid= | grep -qx " *$master" || break
            sleep 0.1
        done
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== results in $OUT"

# --- certificates: a CA and a leaf (localhost) per key type -----------------------------
(
    cd "$OUT/certs"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >leaf.ext
    for kind in ec rsa; do
        if [ $kind = ec ]; then alg=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); else alg=(-newkey rsa:2048); fi
        openssl req -x509 "${alg[@]}" -nodes -keyout ca-$kind.key -out ca-$kind.crt -days 2 \
            -subj "/CN=ringmx bench CA $kind" -addext basicConstraints=critical,CA:TRUE \
            -addext keyUsage=critical,keyCertSign 2>/dev/null
        openssl req "${alg[@]}" -nodes -keyout $kind.key -out $kind.csr -subj /CN=localhost 2>/dev/null
        openssl x509 -req -in $kind.csr -CA ca-$kind.crt -CAkey ca-$kind.key -CAcreateserial \
            -days 2 -out $kind.crt -extfile leaf.ext 2>/dev/null
        openssl verify -CAfile ca-$kind.crt $kind.crt >/dev/null
    done
    chmod 644 ./*.crt ./*.key
)
CERTS=$OUT/certs

# --- Postfix: a private instance -------------------------------------------------------
if ! command -v postconf >/dev/null; then
    echo "== installing postfix"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y postfix >"$OUT/apt.log" 2>&1
fi
mkdir -p "$PF/conf" "$PF/queue" "$PF/data"
chown postfix "$PF/data"
cp /etc/postfix/dynamicmaps.cf "$PF/conf/" 2>/dev/null || true
[ -d /etc/postfix/dynamicmaps.cf.d ] && cp -r /etc/postfix/dynamicmaps.cf.d "$PF/conf/"
: >"$PF/conf/main.cf"
# Debian's stock services, none chrooted (the queue is in a temp dir), without the port-25
# smtpd; then one smtpd per certificate on loopback.
awk '$1 == "smtp" && $2 == "inet" { next }
     /^[a-z]/ && NF >= 8 && $2 != "inet" { $5 = "n" }
     { print }' /etc/postfix/master.cf.proto >"$PF/conf/master.cf"
cat >>"$PF/conf/master.cf" <<EOF
127.0.0.1:$((PORT + 11)) inet n - n - - smtpd -o smtpd_tls_ask_ccert=no -o smtpd_tls_chain_files=$CERTS/ec.key,$CERTS/ec.crt
127.0.0.1:$((PORT + 12)) inet n - n - - smtpd -o smtpd_tls_ask_ccert=no -o smtpd_tls_chain_files=$CERTS/rsa.key,$CERTS/rsa.crt
EOF
inet=$(grep -cE '^[^#[:space:]]+[[:space:]]+inet[[:space:]]' "$PF/conf/master.cf")
[ "$inet" = 2 ] || { echo "master.cf: expected 2 inet services, found $inet" >&2; exit 1; }
postconf -c "$PF/conf" -e \
    "queue_directory=$PF/queue" "data_directory=$PF/data" \
    compatibility_level=3.6 myhostname=localhost mydestination= \
    inet_interfaces=loopback-only inet_protocols=ipv4 mynetworks=127.0.0.0/8 \
    "smtpd_relay_restrictions=permit_mynetworks, reject_unauth_destination" \
    alias_maps= alias_database= \
    "maillog_file=$PF/maillog" "maillog_file_prefixes=$PF" \
    default_process_limit=200 \
    smtpd_client_connection_rate_limit=0 smtpd_client_connection_count_limit=0 \
    smtpd_tls_security_level=may "smtpd_tls_chain_files=$CERTS/ec.key,$CERTS/ec.crt" \
    smtpd_tls_loglevel=0 smtpd_tls_session_cache_database=
# postfix(1) writes its errors to syslog unless stderr is a terminal: give it one.
script -qec "postfix -c $PF/conf start" /dev/null >"$OUT/postfix-start.log" 2>&1 || {
    cat "$OUT/postfix-start.log" "$PF/maillog" >&2; exit 1; }
PF_STARTED=1
for _ in $(seq 50); do
    [ -s "$PF/queue/pid/master.pid" ] && break
    sleep 0.1
done
PF_MASTER=$(tr -d ' ' <"$PF/queue/pid/master.pid")
PF_CPU="sid:$PF_MASTER"
declare -A PF_PORT=([ec]=$((PORT + 11)) [rsa]=$((PORT + 12)))

# --- ringmx ----------------------------------------------------------------------------
# start_ringmx NAME PORT CERT WORKERS [more serve arguments]: WORKERS "default" leaves it out.
start_ringmx() {
    local name=$1 port=$2 cert=$3 workers=$4
    shift 4
    local w=()
    [ "$workers" != default ] && w=(--workers "$workers")
    "$BIN" serve --listen "127.0.0.1:$port" --sink "${w[@]}" --tls-cert "$CERTS/$cert.crt" \
        --tls-key "$CERTS/$cert.key" "$@" 2>"$OUT/ringmx-$name.log" &
    RPID[$name]=$!
    RPORT[$name]=$port
    for _ in $(seq 100); do
        grep -q "ringmx started" "$OUT/ringmx-$name.log" 2>/dev/null && break
        kill -0 "${RPID[$name]}" 2>/dev/null || { cat "$OUT/ringmx-$name.log" >&2; exit 1; }
        sleep 0.05
    done
    grep -q "ringmx started" "$OUT/ringmx-$name.log"
}
stop_ringmx() {
    kill -TERM "${RPID[$1]}"
    wait "${RPID[$1]}" || true
    unset "RPID[$1]"
}

NCPU=$(nproc)
start_ringmx 1w-ec $((PORT + 1)) ec 1
start_ringmx 1w-rsa $((PORT + 2)) rsa 1
start_ringmx ${NCPU}w-ec $((PORT + 3)) ec default
start_ringmx ${NCPU}w-rsa $((PORT + 4)) rsa default

{
    echo "== conditions"
    date -u +%FT%TZ
    uname -r
    echo "cpus: $NCPU; $(uptime)"
    top -bn1 | head -15
    echo "ringmx: $(git rev-parse --short HEAD 2>/dev/null) $(grep -o 'backend="[a-z]*"' "$OUT/ringmx-1w-ec.log")"
    echo "postfix: $(postconf -c "$PF/conf" -h mail_version), $(openssl version)"
} | tee "$OUT/conditions.txt"

# lg LABEL ROUND CPUSPEC PORT LOADGEN-ARGS...: one recorded run.
lg() {
    local label=$1 round=$2 spec=$3 port=$4
    shift 4
    python3 "$HELPER" run "$RES" "$label" "$round" "$spec" \
        "$OUT/runs/$(echo "$label" | tr / _)-r$round.json" -- \
        "$LOADGEN" --target "127.0.0.1:$port" --threads 1 --quiet --json "$@" </dev/null
}
TLS=(--tls starttls --tls-ca "$CERTS/ca-ec.crt" --tls-sni localhost)
tls_for() { echo --tls starttls --tls-ca "$CERTS/ca-$1.crt" --tls-sni localhost; }

# Servers in the order of a round; NAME CERT CPUSPEC PORT.
servers() {
    local cert=$1
    echo "ringmx-1w $cert pid:${RPID[1w-$cert]} ${RPORT[1w-$cert]}"
    echo "postfix $cert $PF_CPU ${PF_PORT[$cert]}"
    echo "ringmx-${NCPU}w $cert pid:${RPID[${NCPU}w-$cert]} ${RPORT[${NCPU}w-$cert]}"
}

echo "== warm-up ($WARMUP per server, not recorded)"
for cert in ec rsa; do
    while read -r name c spec port; do
        # shellcheck disable=SC2046
        "$LOADGEN" --target "127.0.0.1:$port" --threads 1 --quiet --json $(tls_for "$c") \
            --mix starttls=1 --connections "$CONNS" --duration "$WARMUP" </dev/null >/dev/null
    done < <(servers $cert)
done

for round in $(seq "$ROUNDS"); do
    echo "== round $round: $(uptime)"
    for cert in ec rsa; do
        while read -r name c spec port; do
            # shellcheck disable=SC2046
            lg "full/$name/$c/$CONNS" "$round" "$spec" "$port" $(tls_for "$c") \
                --mix starttls=1 --connections "$CONNS" --duration "$DURATION"
        done < <(servers $cert)
    done
    # Full handshakes again with the resumption runs' sessions, so that the baseline below
    # can be subtracted from both.
    for cert in ec rsa; do
        while read -r name c spec port; do
            # shellcheck disable=SC2046
            lg "fullb/$name/$c/$CONNS" "$round" "$spec" "$port" $(tls_for "$c") \
                --mix "$RESUME_MIX" --connections "$CONNS" --duration "$DURATION"
        done < <(servers $cert)
    done
    for conns in $RESUME_CONNS; do
        for cert in ec rsa; do
            while read -r name c spec port; do
                # shellcheck disable=SC2046
                lg "resume/$name/$c/$conns" "$round" "$spec" "$port" $(tls_for "$c") --tls-resume \
                    --mix "$RESUME_MIX" --connections "$conns" --duration "$DURATION"
            done < <(servers $cert)
        done
    done
    # Baseline: the same sessions as the resumption runs without TLS, what a session costs
    # apart from TLS.
    while read -r name c spec port; do
        lg "plain/$name/-/$CONNS" "$round" "$spec" "$port" \
            --mix "$RESUME_MIX" --connections "$CONNS" --duration "$DURATION"
    done < <(servers ec)
    for mode in plain starttls; do
        extra=()
        [ $mode = starttls ] && extra=("${TLS[@]}")
        lg "msgs/ringmx/$mode/$CONNS" "$round" "pid:${RPID[1w-ec]}" "${RPORT[1w-ec]}" "${extra[@]}" \
            --mix valid=1 --messages-per-session 100 --connections "$CONNS" --duration "$MSG_DURATION"
    done
done
echo "== after the rounds: $(uptime)" | tee -a "$OUT/conditions.txt"

# The load servers go before the RSS runs, so the fresh servers have the cores.
for name in "${!RPID[@]}"; do stop_ringmx "$name"; done

echo "== RSS per idle session ($IDLE sessions, fresh server each)"
ulimit -n "$(ulimit -Hn)"
for mode in plaintext starttls implicit; do
    start_ringmx idle-$mode $((PORT + 21)) ec 1 --listen-tls "127.0.0.1:$((PORT + 22))"
    sleep 0.5
    case $mode in
        plaintext) args=(--ehlo "$((PORT + 21))") ;;
        starttls) args=(--tls starttls --tls-ca "$CERTS/ca-ec.crt" "$((PORT + 21))") ;;
        implicit) args=(--tls implicit --tls-ca "$CERTS/ca-ec.crt" "$((PORT + 22))") ;;
    esac
    timeout 600 python3 "$HERE/idle_rss.py" --json "$RSS" "${args[@]}" "${RPID[idle-$mode]}" "$IDLE" 127.0.0.2 4
    stop_ringmx idle-$mode
done

echo
python3 "$HELPER" table "$RES" "$RSS" | tee "$OUT/table.md"
echo
echo "(per-run summaries: $OUT/runs; server logs: $OUT/ringmx-*.log, $PF/maillog)"
