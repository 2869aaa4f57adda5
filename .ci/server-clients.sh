#!/usr/bin/env bash
# Two real SMTP clients against the built server: swaks with --pipeline and Python's smtplib,
# once per spool format; both messages must be committed (.json and .eml: for the log format as
# ringmx spool export writes them), swaks's byte for byte. Exits non-zero on any failure.
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

# swaks sends this as it stands (CRLF line ends), dot-stuffed, and one CRLF more before the
# final dot: the stored message must be that, byte for byte, after its Received: header.
printf 'Subject: from swaks\r\nX-Client: swaks\r\n\r\nsent by swaks with PIPELINING\r\n.leading dot\r\n..two dots\r\ntrailing blanks \t\r\n\r\nlast line\r\n' >"$TMP/swaks.eml"
printf '\r\n' | cat "$TMP/swaks.eml" - >"$TMP/swaks.expected"

# One run per spool format: FORMAT DIR. Leaves the two messages, as the files format stores
# them, in DIR/messages.
clients() {
    local format=$1 dir=$2 spool=$2/spool messages=$2/messages
    mkdir -p "$dir"
    # Port 0: the kernel picks a free port, which the start line reports.
    "$BIN" serve --listen 127.0.0.1:0 --spool "$spool" --spool-format "$format" --workers 1 \
        --hostname mx.test 2>"$TMP/log" &
    PID=$!
    for _ in $(seq 100); do
        grep -q 'ringmx started' "$TMP/log" && break
        sleep 0.1
    done
    PORT=$(grep -o 'listeners=[0-9.]*:[0-9]*' "$TMP/log" | head -n1 | sed 's/.*://')
    [ -n "$PORT" ] || fail "$format: server did not start"
    grep -q "spool=$spool ($format" "$TMP/log" || fail "$format: not the $format spool format"

    timeout 30 swaks --pipeline --server 127.0.0.1 --port "$PORT" --timeout 20 \
        --helo swaks.example --from sender@swaks.example --to rcpt@ci.example \
        --data "@$TMP/swaks.eml" >"$TMP/swaks.log" 2>&1 \
        || { cat "$TMP/swaks.log" >&2; fail "$format: swaks failed"; }
    grep -q '<-  250 2.0.0 Ok: queued as' "$TMP/swaks.log" \
        || { cat "$TMP/swaks.log" >&2; fail "$format: swaks got no queue id"; }

    timeout 30 python3 - "$PORT" <<'PY' || fail "$format: smtplib failed"
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
    [ "$STATUS" -eq 0 ] || fail "$format: server exited with status $STATUS"

    if [ "$format" = log ]; then
        # Nothing but the segments (and their done files), the lock and an empty tmp/; the
        # messages as the files format would store them come from spool export.
        OTHER=$(find "$spool" -mindepth 1 ! -path "$spool/ringmx.lock" ! -path "$spool/tmp" \
            ! -path "$spool/log" | grep -cvE "^$spool/log/[0-9A-F]{16}\.(seg|done)\$" || true)
        [ "$OTHER" -eq 0 ] || { find "$spool" >&2; fail "log: $OTHER files besides the log"; }
        "$BIN" spool check --spool "$spool" >"$TMP/check.log" 2>&1 \
            || { cat "$TMP/check.log" >&2; fail "log: spool check found damage"; }
        "$BIN" spool export --spool "$spool" --to "$messages" >/dev/null || fail "log: spool export failed"
    else
        # Anything else but the spool's lock file, including anything left in tmp/, is an
        # uncommitted leftover.
        mv "$spool" "$messages"
        rm "$messages/ringmx.lock"
        rmdir "$messages/tmp" || fail "files: uncommitted files in tmp/"
    fi
    JSON=$(find "$messages" -maxdepth 1 -type f -name '*.json' | wc -l)
    EML=$(find "$messages" -maxdepth 1 -type f -name '*.eml' | wc -l)
    OTHER=$(find "$messages" -mindepth 1 | grep -cvE "^$messages/[^/]+\.(json|eml)\$" || true)
    [ "$JSON" -eq 2 ] && [ "$EML" -eq 2 ] && [ "$OTHER" -eq 0 ] \
        || fail "$format: spool holds $JSON .json, $EML .eml and $OTHER other files; expected 2, 2, 0"
    SWAKS=$(grep -l 'sent by swaks with PIPELINING' "$messages"/*.eml) || fail "$format: swaks message missing"
    python3 - "$SWAKS" "$TMP/swaks.expected" <<'PY' || fail "$format: swaks message not stored byte-exact"
import sys
stored, sent = (open(p, "rb").read() for p in sys.argv[1:])
# The Received: header: its first line and the folded lines after it.
lines = stored.splitlines(keepends=True)
n = 1
while n < len(lines) and lines[n][:1] in (b" ", b"\t"):
    n += 1
assert lines[0].startswith(b"Received: from "), lines[0]
body = b"".join(lines[n:])
assert body == sent, (body, sent)
PY
    grep -l '^\.leading dot' "$messages"/*.eml >/dev/null || fail "$format: smtplib message missing or not unstuffed"
    grep -q '"mail_from":"sender@swaks.example"' "$messages"/*.json || fail "$format: swaks envelope missing"
    grep -q '"mail_from":"sender@python.example"' "$messages"/*.json || fail "$format: smtplib envelope missing"
}

clients files "$TMP/files"
clients log "$TMP/log-format"
echo "server-clients: swaks (pipelined, byte-exact) and smtplib messages committed in the files and log spool formats"
