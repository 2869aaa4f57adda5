#!/usr/bin/env bash
# Two real SMTP clients against the built server: swaks with --pipeline and Python's smtplib;
# both messages must be committed in the spool (.json and .eml). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${RINGMX_BIN:-target/debug/ringmx}
[ -x "$BIN" ] || cargo build -p ringmx
if ! command -v swaks >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq swaks >/dev/null
fi

TMP=$(mktemp -d)
PID=
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -KILL "$PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
    echo "server-clients: $*" >&2
    echo "--- server log" >&2
    cat "$TMP/log" >&2 || true
    exit 1
}

# Port 0: the kernel picks a free port, which the start line reports.
"$BIN" serve --listen 127.0.0.1:0 --spool "$TMP/spool" --workers 1 --hostname mx.test 2>"$TMP/log" &
PID=$!
for _ in $(seq 100); do
    grep -q 'ringmx started' "$TMP/log" && break
    sleep 0.1
done
PORT=$(grep -o 'listeners=[0-9.]*:[0-9]*' "$TMP/log" | head -n1 | sed 's/.*://')
[ -n "$PORT" ] || fail "server did not start"

timeout 30 swaks --pipeline --server 127.0.0.1 --port "$PORT" --timeout 20 \
    --helo swaks.example --from sender@swaks.example --to rcpt@ci.example \
    --header "Subject: from swaks" --body "sent by swaks with PIPELINING" >"$TMP/swaks.log" 2>&1 \
    || { cat "$TMP/swaks.log" >&2; fail "swaks failed"; }
grep -q '<-  250 2.0.0 Ok: queued as' "$TMP/swaks.log" || { cat "$TMP/swaks.log" >&2; fail "swaks got no queue id"; }

timeout 30 python3 - "$PORT" <<'PY' || fail "smtplib failed"
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="python.example", timeout=20) as s:
    code, _ = s.ehlo()
    assert code == 250, code
    refused = s.sendmail("sender@python.example", ["rcpt@ci.example"],
                         b"Subject: from smtplib\r\n\r\nsent by smtplib\r\n.leading dot\r\n")
    assert refused == {}, refused
PY

kill -TERM "$PID"
STATUS=0
wait "$PID" || STATUS=$?
PID=
[ "$STATUS" -eq 0 ] || fail "server exited with status $STATUS"

JSON=$(find "$TMP/spool" -maxdepth 1 -type f -name '*.json' | wc -l)
EML=$(find "$TMP/spool" -maxdepth 1 -type f -name '*.eml' | wc -l)
# Anything else but the spool's lock file, including anything left in tmp/, is an
# uncommitted leftover.
OTHER=$(find "$TMP/spool" -type f ! -path "$TMP/spool/ringmx.lock" \
    | grep -cvE "^$TMP/spool/[^/]+\.(json|eml)\$" || true)
[ "$JSON" -eq 2 ] && [ "$EML" -eq 2 ] && [ "$OTHER" -eq 0 ] \
    || fail "spool holds $JSON .json, $EML .eml and $OTHER other files; expected 2, 2, 0"
grep -l 'sent by swaks with PIPELINING' "$TMP"/spool/*.eml >/dev/null || fail "swaks message missing"
grep -l '^\.leading dot' "$TMP"/spool/*.eml >/dev/null || fail "smtplib message missing or not unstuffed"
grep -q '"mail_from":"sender@swaks.example"' "$TMP"/spool/*.json || fail "swaks envelope missing"
grep -q '"mail_from":"sender@python.example"' "$TMP"/spool/*.json || fail "smtplib envelope missing"
echo "server-clients: swaks (pipelined) and smtplib messages committed"
