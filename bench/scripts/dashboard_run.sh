#!/usr/bin/env bash
# The dashboard's picture from a real load run, on loopback: ringmx (--metrics-listen, a
# durable log spool in a temporary directory, delivery to Postfix's smtp-sink), a private
# Prometheus scraping it every second, ringmx-loadgen in phases that move every panel, then
# tuning/grafana/render.py evaluates each panel's PromQL over the run through Prometheus's
# HTTP API and draws tuning/grafana/dashboard.png. About 2.5 minutes; everything it starts is
# stopped and its directory removed at the end. Needs prometheus and smtp-sink (Debian:
# apt-get install prometheus postfix), openssl, and matplotlib for python3.
# Usage: bash bench/scripts/dashboard_run.sh [OUT.png]
#   RINGMX=path/to/ringmx  use that server binary (e.g. one built from another branch)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-tuning/grafana/dashboard.png}
LOADGEN=target/release/ringmx-loadgen
if [ -z "${RINGMX:-}" ]; then
    cargo build --release -p ringmx -p ringmx-loadgen
    RINGMX=target/release/ringmx
else
    cargo build --release -p ringmx-loadgen
fi
for tool in prometheus smtp-sink openssl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
python3 -c 'import matplotlib' || { echo "needs matplotlib (pip install matplotlib)" >&2; exit 1; }

TMP=$(mktemp -d)
PIDS=()
SERVER=""
SINK_A=""
cleanup() {
    if [ -n "$SERVER" ] && kill -TERM "$SERVER" 2>/dev/null; then sleep 1; fi
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
user=(); [ "$(id -u)" = 0 ] && user=(-u nobody)
now() { date +%s.%N; }
PHASES=()
phase() { PHASES+=("{\"start\": $(date +%s), \"name\": \"$1\"}"); echo "== $(date -u +%T) $1" >&2; }

PORT=$(free_port); PORT_TLS=$(free_port); PORT_PROXY=$(free_port); PORT_METRICS=$(free_port)
PORT_PROM=$(free_port); SINK_A_PORT=$(free_port); SINK_B_PORT=$(free_port)

# Two next hops: example.com (the load's recipients) to sink A, which the run stops, makes
# refuse and restarts; everything else (the notifications to the senders' domain) to sink B.
start_sink_a() {
    smtp-sink "${user[@]}" "$@" -c "127.0.0.1:$SINK_A_PORT" 1000 >>"$TMP/sink-a.log" 2>&1 &
    SINK_A=$!
    PIDS+=("$SINK_A")
}
stop_sink_a() { kill -KILL "$SINK_A" 2>/dev/null || true; wait "$SINK_A" 2>/dev/null || true; }
start_sink_a
smtp-sink "${user[@]}" -c "127.0.0.1:$SINK_B_PORT" 1000 >"$TMP/sink-b.log" 2>&1 &
PIDS+=($!)

# A CA the load generator trusts (STARTTLS, implicit TLS) with a leaf for the server, and a
# CA it is given instead for the implicit TLS load that must fail.
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$TMP/leaf.ext"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
for ca in good other; do
    openssl req -x509 "${ec[@]}" -keyout "$TMP/ca-$ca.key" -out "$TMP/ca-$ca.pem" -days 2 \
        -subj "/CN=dashboard run CA $ca" -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign 2>/dev/null
done
openssl req "${ec[@]}" -keyout "$TMP/leaf.key" -out "$TMP/leaf.csr" -subj /CN=localhost 2>/dev/null
openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca-good.pem" -CAkey "$TMP/ca-good.key" \
    -CAcreateserial -days 2 -out "$TMP/leaf.pem" -extfile "$TMP/leaf.ext" 2>/dev/null
echo "@example.com" >"$TMP/recipients"

cat >"$TMP/ringmx.toml" <<EOF
listen = ["127.0.0.1:$PORT", { address = "127.0.0.1:$PORT_PROXY", proxy = true }]
listen_tls = ["127.0.0.1:$PORT_TLS"]
tls_cert = "$TMP/leaf.pem"
tls_key = "$TMP/leaf.key"
hostname = "mx.dashboard.test"
spool = "$TMP/spool"
spool_format = "log"
metrics_listen = "127.0.0.1:$PORT_METRICS"
domains = ["example.com"]
recipients = "$TMP/recipients"
proxy_trusted = ["127.0.0.2/32"]
max_connections = 100
max_connections_per_client = 60
command_timeout_secs = 10
client_limits_for_relay_networks = true
relay_to = "smtp:127.0.0.1:$SINK_B_PORT"
min_backoff_secs = 3
max_backoff_secs = 8
[routes]
"example.com" = "smtp:127.0.0.1:$SINK_A_PORT"
EOF
"$RINGMX" serve --config "$TMP/ringmx.toml" --workers 1 2>"$TMP/server.log" &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT_METRICS/metrics" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$PORT_METRICS/metrics" >/dev/null \
    || { echo "no /metrics on 127.0.0.1:$PORT_METRICS" >&2; tail "$TMP/server.log" >&2; exit 1; }

cat >"$TMP/prometheus.yml" <<EOF
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: ringmx
    static_configs: [{targets: ["127.0.0.1:$PORT_METRICS"]}]
EOF
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/prometheus" \
    --web.listen-address="127.0.0.1:$PORT_PROM" >"$TMP/prometheus.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT_PROM/-/ready" >/dev/null && break; sleep 0.2; done
sleep 3
START=$(date +%s)

# PROXY headers on the proxy listener through the whole run: v1 and v2 from the trusted
# balancer address, LOCAL health checks, a header from an untrusted address, and junk.
python3 - "$PORT_PROXY" 150 >"$TMP/proxy.log" 2>&1 <<'PY' &
import random, socket, struct, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
sig = b"\r\n\r\n\x00\r\nQUIT\n"
def v2(cmd, src=None):
    if src is None:
        return sig + bytes([0x20 | cmd, 0x00]) + struct.pack("!H", 0)
    addr = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 40000, 25)
    return sig + bytes([0x20 | cmd, 0x11]) + struct.pack("!H", len(addr)) + addr
kinds = [("127.0.0.2", lambda: b"PROXY TCP4 192.0.2.%d 127.0.0.1 40000 25\r\n" % random.randint(1, 254)),
         ("127.0.0.2", lambda: v2(1, "198.51.100.%d" % random.randint(1, 254))),
         ("127.0.0.2", lambda: v2(0)),
         ("127.0.0.1", lambda: b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25\r\n"),
         ("127.0.0.2", lambda: b"EHLO not-a-balancer\r\n")]
end = time.time() + secs
while time.time() < end:
    src, header = random.choices(kinds, weights=[5, 5, 2, 1, 1])[0]
    s = None
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(src, 0))
        s.sendall(header() + b"QUIT\r\n")
        while s.recv(4096):
            pass
    except OSError:
        pass
    finally:
        if s:
            s.close()
    time.sleep(0.05)
PY
PIDS+=($!)

load() { # NAME ARGS...: one phase of load, its summary line on stderr
    local name=$1; shift
    "$LOADGEN" --target "127.0.0.1:$PORT" --threads 1 --quiet --json --out "$TMP/load-$name" "$@" \
        >"$TMP/load-$name.json" || true
    python3 - "$name" "$TMP/load-$name.json" >&2 <<'PY' || true
import json, sys
l = json.load(open(sys.argv[2]))
print(f"   {sys.argv[1]}: {l['sessions']['started']} sessions, {l['throughput']['messages_per_s']:,.0f} messages/s,"
      f" {l['errors']['total']} failed sessions",
      {k: v for k, v in l["errors"].items() if v and k != "total"} or "",
      " ".join(f"{m['class']}/{m['step']}={m['count']}" for m in l.get("mismatches", [])))
PY
    local first
    first=$(find "$TMP/load-$name/mismatches" -type f 2>/dev/null | sort | head -1)
    [ -n "$first" ] && sed 's/^/      /' "$first" | head -12 >&2
    true
}
reload() { kill -HUP "$SERVER"; }

phase "valid mail"
load valid --rate 200 --duration 25s --mix valid=100 --messages-per-session 4 --rcpts 1:2

phase "invalid commands, unknown users"
printf 'user0@example.com\nuser1@example.com\n' >"$TMP/recipients.new"
mv "$TMP/recipients.new" "$TMP/recipients"; reload
load invalid --rate 200 --duration 20s --rcpts 1:3 \
    --mix valid=40,typo=15,overlong=15,badseq=15,unimpl=10,badparam=5

phase "non-SMTP traffic"
echo "@example.com" >"$TMP/recipients.new"; mv "$TMP/recipients.new" "$TMP/recipients"; reload
load nonsmtp --rate 200 --duration 15s --mix valid=40,nonsmtp=60

phase "STARTTLS and implicit TLS"
"$LOADGEN" --target "127.0.0.1:$PORT_TLS" --threads 1 --quiet --json --tls implicit \
    --tls-ca "$TMP/ca-other.pem" --rate 10 --duration 15s --mix valid=100 >"$TMP/load-badca.json" 2>&1 || true &
BADCA=$!
PIDS+=("$BADCA")
load tls --rate 80 --duration 15s --mix valid=100 --tls starttls --tls-ca "$TMP/ca-good.pem" --tls-resume
wait "$BADCA" || true

phase "next hop down"
stop_sink_a
load hopdown --rate 100 --duration 15s --mix valid=100

phase "next hop refuses RCPT, bad reload"
start_sink_a -f RCPT
echo "not an address" >"$TMP/recipients.new"; mv "$TMP/recipients.new" "$TMP/recipients"; reload
load refuse --rate 100 --duration 15s --mix valid=100
echo "@example.com" >"$TMP/recipients.new"; mv "$TMP/recipients.new" "$TMP/recipients"

phase "next hop back, clients over the connection limits"
stop_sink_a
start_sink_a
# One client (127.0.0.3) holds idle connections up to its limit of 60 and keeps asking for
# more; they time out after command_timeout_secs (421 4.4.2) and it takes them again. For 6 s
# a second one (127.0.0.4) fills the server up to max_connections = 100.
hog() { # SOURCE SECONDS
python3 - "$PORT" "$1" "$2" >>"$TMP/hog.log" 2>&1 <<'PY' &
import socket, sys, time
port, src, secs = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
held, end = [], time.time() + secs
while time.time() < end:
    s = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(src, 0))
    try:
        banner = s.recv(512)
    except OSError:
        banner = b""
    if banner.startswith(b"220"):
        held.append(s)
    else:
        s.close()
        time.sleep(0.1)
for s in held:
    s.close()
PY
PIDS+=($!)
}
hog 127.0.0.3 20
(sleep 8; hog 127.0.0.4 6; wait) &
PIDS+=($!)
load burst --rate 100 --duration 20s --mix valid=100

phase "drain"
sleep 12
END=$(date +%s)
sleep 2

printf '[%s]\n' "$(IFS=,; echo "${PHASES[*]}")" >"$TMP/phases.json"
# How the scrapes went: a failed one (over the 1 s timeout) is a gap in every panel.
python3 - "http://127.0.0.1:$PORT_PROM" "$START" "$END" >&2 <<'PY' || true
import json, sys, urllib.parse, urllib.request
base, start, end = sys.argv[1:4]
def q(expr):
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": end})
    r = json.load(urllib.request.urlopen(url))["data"]["result"]
    return float(r[0]["value"][1]) if r else float("nan")
span = f"{int(end) - int(start)}s"
n = q(f"count_over_time(up[{span}])")
print(f"scrapes: {n:.0f}, failed {n - q(f'sum_over_time(up[{span}])'):.0f},"
      f" slowest {q(f'max_over_time(scrape_duration_seconds[{span}])'):.3f} s,"
      f" median {q(f'quantile_over_time(0.5, scrape_duration_seconds[{span}])'):.3f} s")
PY
rc=0
python3 tuning/grafana/render.py --prometheus "http://127.0.0.1:$PORT_PROM" --start "$START" \
    --end "$END" --step 1 --rate-interval 5s --phases "$TMP/phases.json" --out "$OUT" \
    --title "$( "$RINGMX" --version 2>/dev/null || echo ringmx): one load run on loopback, scraped by Prometheus every second, drawn by render.py" \
    || rc=$?
[ "$rc" = 2 ] && echo "some targets returned no series (listed above)" >&2
echo "wrote $OUT" >&2
