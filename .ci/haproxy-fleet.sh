#!/usr/bin/env bash
# An MX fleet behind an L4 balancer: two ringmx frontends with PROXY listeners behind HAProxy
# (mode tcp, roundrobin), one sent PROXY v2 (send-proxy-v2), the other v1 (send-proxy). A
# client bound to 127.0.0.2 sends 10 messages on 10 connections through HAProxy; both frontends
# must get a share, and every message must name the real client (127.0.0.2 and its source
# port), not HAProxy's 127.0.0.1, in its Received: header and its .json. relay_networks is
# 127.0.0.2/32 only, so that the relay decision shows whose address it was made on: a client
# from 127.0.0.3 through the same HAProxy is refused, as HAProxy's own address would be.
# A direct connection to a PROXY listener without a header gets no greeting and is closed,
# both when it speaks first (not_proxy, at once) and when it waits for a greeting (after
# proxy_header_timeout_secs). The counters in each server's stats file must agree.
# Exits non-zero on any failure, after printing the logs.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${RINGMX_BIN:-target/debug/ringmx}
[ -x "$BIN" ] || cargo build -p ringmx
PATH=$PATH:/usr/sbin:/sbin
need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
if [ "${#need[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

TMP=$(mktemp -d)
PIDS=()
HA_PID=
CLIENT_LOG=
cleanup() {
    local p
    for p in "${PIDS[@]}" $HA_PID; do
        if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
    echo "haproxy-fleet: $*" >&2
    if [ -n "$CLIENT_LOG" ] && [ -f "$CLIENT_LOG" ]; then
        echo "--- client output ($CLIENT_LOG)" >&2
        cat "$CLIENT_LOG" >&2 || true
    fi
    local n
    for n in 1 2; do
        echo "--- mx$n log" >&2
        cat "$TMP/mx$n.log" >&2 || true
    done
    echo "--- haproxy log" >&2
    cat "$TMP/haproxy.log" >&2 || true
    exit 1
}

# Both frontends: the real client 127.0.0.2 may relay, nothing else (HAProxy's 127.0.0.1
# included); a short PROXY header timeout for the silent direct client. proxy_trusted keeps its
# default, loopback.
cat >"$TMP/ringmx.toml" <<'EOF'
relay_networks = ["127.0.0.2/32"]
proxy_header_timeout_secs = 2
EOF

# --- Two frontends, port 0 each, their ports from the start lines.
PORTS=()
for n in 1 2; do
    "$BIN" serve --config "$TMP/ringmx.toml" --proxy-protocol --listen 127.0.0.1:0 \
        --spool "$TMP/spool$n" --workers 1 --hostname "mx$n.test" \
        --stats-file "$TMP/stats$n.json" 2>"$TMP/mx$n.log" &
    PIDS+=($!)
done
for n in 1 2; do
    pid=${PIDS[$((n - 1))]}
    for _ in $(seq 100); do
        grep -q 'ringmx started' "$TMP/mx$n.log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    START=$(grep -m1 'ringmx started' "$TMP/mx$n.log" || true)
    [ -n "$START" ] || fail "mx$n did not start"
    port=$(sed -n 's/.* listeners=127\.0\.0\.1:\([0-9]*\) .*/\1/p' <<<"$START")
    [ -n "$port" ] || fail "no port in mx$n's start line: $START"
    PORTS+=("$port")
done
PORT1=${PORTS[0]}
PORT2=${PORTS[1]}

# --- HAProxy in the foreground (-db), mode tcp, roundrobin, no health checks (a check would be
# one more connection to count). HAProxy cannot bind port 0: a port the kernel just handed out
# and released, with the small race that leaves.
FRONT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
cat >"$TMP/haproxy.cfg" <<EOF
global
    maxconn 64
    log stdout format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend mx
    bind 127.0.0.1:$FRONT
    default_backend fleet

backend fleet
    balance roundrobin
    server mx1 127.0.0.1:$PORT1 send-proxy-v2
    server mx2 127.0.0.1:$PORT2 send-proxy
EOF
haproxy -c -f "$TMP/haproxy.cfg" >"$TMP/haproxy-check.log" 2>&1 \
    || { CLIENT_LOG=$TMP/haproxy-check.log; fail "haproxy -c rejected the config"; }
haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
HA_PID=$!
# Listening, as the kernel sees it (/proc/net/tcp, state 0A): no probe connection, which
# HAProxy would pass on to a backend and the counts below would have to allow for.
LISTEN_ADDR=$(printf '0100007F:%04X' "$FRONT")
UP=
for _ in $(seq 100); do
    kill -0 "$HA_PID" 2>/dev/null || break
    if awk -v a="$LISTEN_ADDR" '$2 == a && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp; then
        UP=1
        break
    fi
    sleep 0.1
done
[ -n "$UP" ] || fail "haproxy did not listen on 127.0.0.1:$FRONT"

# --- Through HAProxy from 127.0.0.2: 10 messages, one connection each, every one queued. Which
# frontend took a connection is in its greeting; the client's source port is what the server
# must record. Then one client from 127.0.0.3, outside relay_networks, whose recipient must be
# refused: the relay decision is made on the real client, not on HAProxy's address.
CLIENT_LOG=$TMP/client.log
timeout 60 python3 - "$FRONT" "$TMP/sent.json" >"$CLIENT_LOG" 2>&1 <<'PY' || fail "the client through haproxy failed"
import json, smtplib, sys

front, out = int(sys.argv[1]), sys.argv[2]
sent = []
for i in range(10):
    s = smtplib.SMTP(local_hostname="fleet.example", timeout=20,
                     source_address=("127.0.0.2", 0))
    code, greeting = s.connect("127.0.0.1", front)
    assert code == 220, (i, code, greeting)
    server = greeting.split()[0].decode()
    assert server in ("mx1.test", "mx2.test"), (i, greeting)
    src = s.sock.getsockname()
    assert src[0] == "127.0.0.2", src
    code, _ = s.ehlo()
    assert code == 250, (i, code)
    code, msg = s.mail("sender@fleet.example")
    assert code == 250, (i, code, msg)
    code, msg = s.rcpt("rcpt@ci.example")
    assert code == 250, (i, code, msg)
    body = "Subject: fleet %d\r\n\r\nmessage %d through haproxy\r\n" % (i, i)
    code, msg = s.data(body.encode())
    assert code == 250 and msg.startswith(b"2.0.0 Ok: queued as "), (i, code, msg)
    queue_id = msg.split()[-1].decode()
    code, msg = s.quit()
    assert code == 221, (i, "QUIT", code, msg)
    sent.append({"n": i, "server": server, "port": src[1], "id": queue_id})
    print(i, server, "127.0.0.2:%d" % src[1], queue_id)

# Outside relay_networks: the same HAProxy, the same backends, a refused recipient.
s = smtplib.SMTP(local_hostname="outsider.example", timeout=20, source_address=("127.0.0.3", 0))
code, greeting = s.connect("127.0.0.1", front)
assert code == 220, ("outsider", code, greeting)
outsider = greeting.split()[0].decode()
s.ehlo()
code, msg = s.mail("sender@outsider.example")
assert code == 250, ("outsider", code, msg)
code, msg = s.rcpt("rcpt@ci.example")
assert code == 554 and b"Relay access denied" in msg, ("outsider", code, msg)
s.quit()
print("outsider", outsider, code, msg.decode())
with open(out, "w") as f:
    json.dump({"sent": sent, "outsider": outsider}, f)
PY

# --- Direct to the PROXY listeners from 127.0.0.1 (trusted, so a header is due), without one.
# Speaking first (SMTP's EHLO, no greeting awaited) to mx2: closed at once, nothing sent back.
CLIENT_LOG=$TMP/direct.log
timeout 30 python3 - "$PORT2" >"$CLIENT_LOG" 2>&1 <<'PY' || fail "direct connection speaking first"
import socket, sys, time

s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
began = time.monotonic()
s.sendall(b"EHLO direct.example\r\n")
got = b""
try:
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
except ConnectionResetError:
    pass
except socket.timeout:
    raise AssertionError(("not closed within 10 s", got))
took = time.monotonic() - began
print("speaking first: %r, closed after %.2f s" % (got, took))
assert got == b"", ("sent something before a PROXY header", got)
assert took < 1.5, ("not closed at once", took)
PY
# swaks to mx1, waiting for the greeting as an SMTP client does: none comes, and the
# connection is closed when proxy_header_timeout_secs (2 s) are up, so swaks fails.
CLIENT_LOG=$TMP/direct-swaks.log
BEGAN=$(date +%s%N)
STATUS=0
timeout 30 swaks --server 127.0.0.1 --port "$PORT1" --timeout 10 --helo direct.example \
    --from sender@direct.example --to rcpt@ci.example </dev/null >"$CLIENT_LOG" 2>&1 || STATUS=$?
TOOK_MS=$((($(date +%s%N) - BEGAN) / 1000000))
echo "exit status $STATUS after $TOOK_MS ms" >>"$CLIENT_LOG"
[ "$STATUS" -ne 0 ] || fail "swaks succeeded without a PROXY header"
[ "$STATUS" -ne 124 ] || fail "swaks hung on a PROXY listener"
! grep -q '^ *<-' "$CLIENT_LOG" || fail "swaks read a reply from a PROXY listener without a header"
grep -q 'Remote host closed connection unexpectedly' "$CLIENT_LOG" || fail "swaks did not see the connection closed"
if [ "$TOOK_MS" -lt 1500 ] || [ "$TOOK_MS" -ge 8000 ]; then
    fail "closed after $TOOK_MS ms, not at the 2 s PROXY header timeout"
fi
CLIENT_LOG=

# --- Stop: the frontends with SIGTERM (exit 0 each, stats files written), then HAProxy.
for n in 1 2; do
    pid=${PIDS[$((n - 1))]}
    kill -TERM "$pid"
    STATUS=0
    wait "$pid" || STATUS=$?
    PIDS[n - 1]=
    [ "$STATUS" -eq 0 ] || fail "mx$n exited with status $STATUS"
done
kill -TERM "$HA_PID" 2>/dev/null || true
wait "$HA_PID" 2>/dev/null || true
HA_PID=

# --- Each spool against what the client was told, and each server's counters. The PROXY
# version cannot be seen in either: it is told by the server (mx1 is sent v2, mx2 v1), and
# each server's proxied count must equal the connections HAProxy gave it.
# The spools are in the default log format: each must check clean, and its messages, as the
# files format would store them, come from spool export into export1/ and export2/.
for n in 1 2; do
    "$BIN" spool check --spool "$TMP/spool$n" >"$TMP/spool-check$n.log" 2>&1 \
        || { cat "$TMP/spool-check$n.log" >&2; fail "spool check found damage in mx$n's spool"; }
    "$BIN" spool export --spool "$TMP/spool$n" --to "$TMP/export$n" >/dev/null \
        || fail "spool export of mx$n's spool failed"
done
CLIENT_LOG=$TMP/check.log
python3 - "$TMP" >"$CLIENT_LOG" 2>&1 <<'PY' || fail "spool or stats check failed"
import json, os, sys

tmp = sys.argv[1]
with open(os.path.join(tmp, "sent.json")) as f:
    record = json.load(f)
sent, outsider = record["sent"], record["outsider"]
assert len(sent) == 10, sent
for n in (1, 2):
    name = "mx%d.test" % n
    mine = {m["id"]: m for m in sent if m["server"] == name}
    assert mine, (name, "got no message")
    # Every file in the spool, tmp/ included: anything but the lock and the log's segments is
    # an uncommitted leftover.
    live = os.path.join(tmp, "spool%d" % n)
    left = sorted(os.path.relpath(os.path.join(d, f), live)
                  for d, _, fs in os.walk(live) for f in fs)
    left.remove("ringmx.lock")
    assert all(f.startswith("log/") and f.endswith((".seg", ".done")) for f in left), (name, left)
    spool = os.path.join(tmp, "export%d" % n)
    files = sorted(os.listdir(spool))
    jsons = [f for f in files if f.endswith(".json") and "/" not in f]
    emls = [f for f in files if f.endswith(".eml") and "/" not in f]
    assert len(jsons) == len(mine) == len(emls) and len(files) == 2 * len(mine), (name, files, mine)
    for j in jsons:
        stem = j[:-len(".json")]
        with open(os.path.join(spool, j), encoding="utf-8") as f:
            meta = json.load(f)
        with open(os.path.join(spool, stem + ".eml"), "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
        # The message this is, by its queue id, which the Received: header must carry too.
        m = mine.get(meta.get("id"))
        assert m is not None and meta["id"] == stem, (name, j, "not a message queued here", meta)
        first = head.split("\r\n\t", 1)[0]
        assert first == "Received: from fleet.example ([127.0.0.2])", (name, j, first)
        assert "\tby %s (ringmx) with ESMTP id %s" % (name, m["id"]) in head, (name, j, head[:300])
        assert meta["client"] == "127.0.0.2:%d" % m["port"], (name, j, meta["client"], m)
        assert meta["helo"] == "fleet.example", (name, j, meta["helo"])
        assert "message %d through haproxy" % m["n"] in head, (name, j, m)
        del mine[m["id"]]
    assert not mine, (name, "queued but not in the spool", mine)

    with open(os.path.join(tmp, "stats%d.json" % n)) as f:
        stats = json.load(f)
    proxy = stats["proxy"]
    # Connections HAProxy gave this server: its messages and perhaps the outsider's.
    conns = sum(1 for m in sent if m["server"] == name) + (outsider == name)
    assert proxy["proxied"] == conns, (name, "proxied", proxy, conns)
    # mx1 sits behind send-proxy-v2, mx2 behind send-proxy: each saw only its version.
    assert proxy["v2" if n == 1 else "v1"] == conns, (name, "version", proxy, conns)
    assert proxy["v1" if n == 1 else "v2"] == 0, (name, "version", proxy)
    assert proxy["local"] == 0 and proxy["untrusted"] == 0, (name, proxy)
    for e in ("bad_v1", "bad_v2", "too_long", "unsupported_family"):
        assert proxy[e] == 0, (name, e, proxy)
    # The direct connections: mx2 got the one that spoke first, mx1 the silent one.
    assert proxy["not_proxy"] == (n == 2), (name, "not_proxy", proxy)
    assert proxy["timeout"] == (n == 1), (name, "timeout", proxy)
    assert stats["sessions_ended"].get("proxy") == 1, (name, "sessions_ended", stats["sessions_ended"])
    assert stats["messages"] == sum(1 for m in sent if m["server"] == name), (name, stats["messages"])
    print(name, "messages", stats["messages"], "proxy", proxy, "sessions_ended", stats["sessions_ended"])
PY
CLIENT_LOG=
echo "haproxy-fleet: 10 messages through HAProxy (send-proxy-v2, send-proxy) to 2 frontends, client 127.0.0.2 recorded"
