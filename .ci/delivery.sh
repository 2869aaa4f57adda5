#!/usr/bin/env bash
# Delivery to real next hops on loopback: a private Postfix (smtpd into Maildirs through its
# virtual delivery agent, for pf.test) and a private Dovecot LMTP server (passwd-file users
# alice and bob at lmtp.test, Maildirs), each on a free port of 127.0.0.1. First each next hop
# is checked on its own with swaks; then ringmx relays to them:
#   a. swaks -> ringmx -> Postfix: the message arrives once, byte for byte past the trace
#      headers, lines of ".", ".x" and "..x" included (dot-stuffing on the way out).
#   b. swaks -> ringmx -> Dovecot LMTP ([routes]): alice and bob get it once each, byte for
#      byte; nobody@lmtp.test is refused with a 5xx and its sender (at pf.test, through
#      relay_to to Postfix) gets exactly one DSN (multipart/report, delivery-status, Action:
#      failed). The same failure for a message from <> makes no DSN.
#   c. The next hop down when mail comes in: three messages deferred (ringmx queue list
#      --json); one held and one deleted (queue hold, queue delete); once Postfix listens on
#      that port the third is delivered by its own retry within seconds (backoff 1..2 s), the
#      held one only after queue release (and flush), the deleted one never.
#   d. SMTP smuggling: for each of <LF>.<LF>, <LF>.<CR><LF>, <CR><LF>.<LF> and <CR>.<CR>
#      before a smuggled MAIL/RCPT/DATA, sent raw to ringmx, Postfix gets one message with the
#      whole body and no second transaction.
#   e. kill -9 while 200 messages are being delivered, restart on the same spool: every
#      message (by its X-Seq header) arrives at least once; the duplicates are counted.
# Needs root (Postfix's master runs as root). Exits non-zero on any failure, after printing
# the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
BEGAN_ALL=$(date +%s%N)

BIN=${RINGMX_BIN:-target/debug/ringmx}
[ -x "$BIN" ] || cargo build -p ringmx
BIN=$(realpath "$BIN")
PATH=$PATH:/usr/sbin:/sbin
[ "$(id -u)" -eq 0 ] || { echo "delivery: needs root (Postfix's master runs as root)" >&2; exit 1; }

# What the next hops need, installed quietly where missing. Postfix and Dovecot without
# configuration: the test runs its own instances from a temporary directory, never the
# system's (which are not started).
need=()
command -v swaks >/dev/null 2>&1 || need+=(swaks)
[ -x /usr/sbin/postfix ] || need+=(postfix)
[ -x /usr/sbin/dovecot ] || need+=(dovecot-core)
[ -x /usr/lib/dovecot/lmtp ] || need+=(dovecot-lmtpd)
if [ "${#need[@]}" -gt 0 ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

TMP=$(mktemp -d)
# Postfix's and Dovecot's daemons run as their own users and as the mailbox owner, and must
# reach their directories here.
chmod 0755 "$TMP"
PF=$TMP/postfix
DV=$TMP/dovecot
PF_STARTED=
DV_PID=
RX_PID=
RX_LOG=
RX_PIDS=()
CLIENT_LOG=
# The Maildirs' owner: nobody (Postfix's virtual and Dovecot refuse root).
MUID=$(id -u nobody)
MGID=$(id -g nobody)

# The private Postfix's processes: every Postfix daemon works in its queue directory.
pf_procs() {
    local d
    for d in /proc/[0-9]*; do
        case $(readlink "$d/cwd" 2>/dev/null) in
        "$PF/queue" | "$PF/queue/"*) echo "${d#/proc/}" ;;
        esac
    done
}

cleanup() {
    local p
    for p in "${RX_PIDS[@]}"; do
        if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    if [ -n "$DV_PID" ] && kill -0 "$DV_PID" 2>/dev/null; then
        # Dovecot's master takes its children with it.
        kill -TERM "$DV_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$DV_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$DV_PID" 2>/dev/null || true
    fi
    if [ -n "$PF_STARTED" ]; then
        postfix -c "$PF/etc" abort >/dev/null 2>&1 || true
        for _ in $(seq 50); do
            [ -n "$(pf_procs)" ] || break
            sleep 0.1
        done
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
    echo "delivery: $*" >&2
    if [ -n "$CLIENT_LOG" ] && [ -f "$CLIENT_LOG" ]; then
        echo "--- client output ($CLIENT_LOG)" >&2
        cat "$CLIENT_LOG" >&2 || true
    fi
    local f
    for f in "$TMP"/rx-*.log; do
        [ -f "$f" ] || continue
        echo "--- ringmx log ($(basename "$f"))" >&2
        cat "$f" >&2 || true
    done
    echo "--- postfix log" >&2
    cat "$PF/maillog" >&2 || true
    echo "--- dovecot log" >&2
    cat "$DV/dovecot.log" >&2 || true
    exit 1
}

# Milliseconds since a date +%s%N, for the timing lines.
since() { echo $((($(date +%s%N) - $1) / 1000000)); }
TIMES=()
step_done() { # name, start
    TIMES+=("$1 $(since "$2") ms")
}

# N distinct free ports for Postfix and Dovecot (which cannot bind port 0), from below the
# kernel's ephemeral range, so that no outgoing connection (ringmx's to a next hop) takes one
# meanwhile: ports that bind now, with the small race that leaves.
free_ports() { # n
    python3 - "$1" <<'PY'
import random, socket, sys
n, got = int(sys.argv[1]), []
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for port in random.sample(range(max(1024, lo - 12000), lo), 200):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    got.append(port)
    if len(got) == n:
        break
assert len(got) == n, got
print(" ".join(map(str, got)))
PY
}
# Whether something listens on 127.0.0.1:PORT, as the kernel sees it (no probe connection).
listening() {
    local a
    a=$(printf '0100007F:%04X' "$1")
    awk -v a="$a" '$2 == a && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp
}
wait_listening() { # port, what
    for _ in $(seq 100); do
        listening "$1" && return 0
        sleep 0.1
    done
    fail "$2 did not listen on 127.0.0.1:$1"
}

# The messages in a Maildir (new/ and cur/), 0 for none yet.
count() {
    local n=0 d
    for d in "$1/new" "$1/cur"; do
        [ -d "$d" ] && n=$((n + $(find "$d" -type f | wc -l)))
    done
    echo "$n"
}
# Until the Maildir holds at least N messages, bounded by SECONDS.
wait_count() { # maildir, n, seconds, what
    for _ in $(seq $(($3 * 10))); do
        [ "$(count "$1")" -ge "$2" ] && return 0
        sleep 0.1
    done
    fail "$4: $(count "$1") messages in $1 after $3 s, expected $2"
}

# Postfix's smtpd, Dovecot's LMTP, and where nothing listens until scenario c has Postfix
# listen there.
read -r PF_PORT DV_PORT LATE_PORT <<<"$(free_ports 3)"
[ -n "$LATE_PORT" ] || fail "no free ports"

# --- Postfix: a private instance (config, queue and data directories under $TMP) whose smtpd
# on 127.0.0.1:$PF_PORT takes mail for the users of pf.test, each with a Maildir under
# $PF/mail, delivered by virtual(8) as nobody; nothing leaves it, and it adds no header of its
# own but the trace fields (no header rewriting for any client). Bare LF is refused
# (smtpd_forbid_bare_newline, for every client): ringmx must send CRLF only.
T0=$(date +%s%N)
mkdir -p "$PF/etc" "$PF/queue" "$PF/data" "$PF/mail"
chmod 0755 "$PF" "$PF/etc" "$PF/queue"
chown postfix "$PF/data"
chown "$MUID:$MGID" "$PF/mail"
: >"$PF/etc/main.cf"
cat >"$PF/etc/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
EOF
# A self-signed certificate, so Postfix offers STARTTLS and ringmx's default relay_tls = "may"
# takes it (any certificate, the handshake still checked); the Received header Postfix adds
# then names the TLS version, which scenario a asserts.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=postfix.test \
    -keyout "$PF/etc/key.pem" -out "$PF/etc/cert.pem" >/dev/null 2>&1
# The users of pf.test, each with its own Maildir (the trailing slash) named after it.
for u in check rcpt-a sender-b late smuggle-1 smuggle-2 smuggle-3 smuggle-4 victim crash; do
    echo "$u@pf.test $u/"
done >"$PF/etc/vmailbox"
postconf -c "$PF/etc" -e \
    "compatibility_level = 3.6" \
    "queue_directory = $PF/queue" \
    "data_directory = $PF/data" \
    "maillog_file = $PF/maillog" \
    "maillog_file_prefixes = $PF" \
    "inet_interfaces = loopback-only" \
    "inet_protocols = ipv4" \
    "myhostname = postfix.test" \
    "mydomain = test" \
    "myorigin = \$myhostname" \
    "mydestination =" \
    "mynetworks = 127.0.0.0/8" \
    "local_transport = error:no local delivery here" \
    "default_transport = error:nothing leaves this instance" \
    "relay_transport = error:nothing leaves this instance" \
    "alias_maps =" \
    "alias_database =" \
    "virtual_mailbox_domains = pf.test" \
    "virtual_mailbox_base = $PF/mail" \
    "virtual_mailbox_maps = texthash:$PF/etc/vmailbox" \
    "virtual_uid_maps = static:$MUID" \
    "virtual_gid_maps = static:$MGID" \
    "local_header_rewrite_clients =" \
    "smtpd_peername_lookup = no" \
    "smtpd_forbid_bare_newline = yes" \
    "smtpd_forbid_bare_newline_exclusions =" \
    "smtp_dns_support_level = disabled" \
    "smtpd_banner = \$myhostname ESMTP Postfix" \
    "smtpd_tls_cert_file = $PF/etc/cert.pem" \
    "smtpd_tls_key_file = $PF/etc/key.pem" \
    "smtpd_tls_security_level = may" \
    "smtpd_tls_received_header = yes"
CLIENT_LOG=$TMP/postfix-check.log
postfix -c "$PF/etc" check >"$CLIENT_LOG" 2>&1 || fail "postfix check failed"
PF_STARTED=1
CLIENT_LOG=$TMP/postfix-start.log
postfix -c "$PF/etc" start >"$CLIENT_LOG" 2>&1 || fail "postfix start failed"
CLIENT_LOG=
wait_listening "$PF_PORT" postfix

# Postfix alone: swaks to a pf.test address lands in that Maildir.
CLIENT_LOG=$TMP/swaks-postfix.log
timeout 30 swaks --server 127.0.0.1 --port "$PF_PORT" --timeout 20 --helo swaks.example \
    --from someone@swaks.example --to check@pf.test --header "Subject: postfix alone" \
    --body "straight to postfix" >"$CLIENT_LOG" 2>&1 || fail "swaks to postfix failed"
grep -q '^<-  250 2.0.0 Ok: queued as' "$CLIENT_LOG" || fail "postfix did not queue swaks's message"
CLIENT_LOG=
wait_count "$PF/mail/check" 1 15 "postfix alone"
grep -q '^straight to postfix' "$PF/mail/check/new/"* || fail "postfix delivered something else"
step_done "postfix up and checked" "$T0"

# --- Dovecot: LMTP only, on 127.0.0.1:$DV_PORT, its own base and state directories, a
# passwd-file of two users at lmtp.test (both nobody), each with a Maildir in its home.
T0=$(date +%s%N)
mkdir -p "$DV/run" "$DV/state" "$DV/home/alice" "$DV/home/bob"
chown "$MUID:$MGID" "$DV/home/alice" "$DV/home/bob"
for u in alice bob; do
    echo "$u@lmtp.test::$MUID:$MGID::$DV/home/$u::"
done >"$DV/users"
cat >"$DV/dovecot.conf" <<EOF
base_dir = $DV/run
state_dir = $DV/state
log_path = $DV/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
first_valid_uid = 1
mail_location = maildir:~/Maildir
postmaster_address = postmaster@lmtp.test
hostname = dovecot.test
passdb {
  driver = passwd-file
  args = $DV/users
}
userdb {
  driver = passwd-file
  args = $DV/users
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $DV_PORT
  }
}
EOF
CLIENT_LOG=$TMP/doveconf.log
doveconf -c "$DV/dovecot.conf" -n >"$CLIENT_LOG" 2>&1 || fail "doveconf rejected the config"
CLIENT_LOG=
dovecot -F -c "$DV/dovecot.conf" >"$TMP/dovecot.out" 2>&1 &
DV_PID=$!
wait_listening "$DV_PORT" dovecot

# Dovecot alone: an LMTP session delivers to alice, and an unknown user is refused with 550.
CLIENT_LOG=$TMP/swaks-lmtp.log
timeout 30 swaks --protocol LMTP --server 127.0.0.1 --port "$DV_PORT" --timeout 20 \
    --helo swaks.example --from someone@swaks.example --to alice@lmtp.test \
    --header "Subject: dovecot alone" --body "straight to dovecot" >"$CLIENT_LOG" 2>&1 \
    || fail "swaks to dovecot lmtp failed"
grep -q '^<-  250 2.0.0 <alice@lmtp.test> .* Saved' "$CLIENT_LOG" || fail "dovecot did not save the message"
CLIENT_LOG=$TMP/swaks-lmtp-unknown.log
STATUS=0
timeout 30 swaks --protocol LMTP --server 127.0.0.1 --port "$DV_PORT" --timeout 20 \
    --helo swaks.example --from someone@swaks.example --to nobody@lmtp.test \
    >"$CLIENT_LOG" 2>&1 || STATUS=$?
[ "$STATUS" -ne 0 ] || fail "swaks to an unknown lmtp user succeeded"
grep -q '^<\*\* 550 5\.1\.1 <nobody@lmtp.test>' "$CLIENT_LOG" || fail "dovecot did not refuse nobody@lmtp.test with 550"
CLIENT_LOG=
wait_count "$DV/home/alice/Maildir" 1 15 "dovecot alone"
grep -q '^straight to dovecot' "$DV/home/alice/Maildir/new/"* || fail "dovecot delivered something else"
step_done "dovecot up and checked" "$T0"
# The checks' messages out of the way: the Maildirs start empty for ringmx.
rm -rf "$PF/mail/check" "$DV/home/alice/Maildir"


# --- ringmx. Helpers in Python: a delivered message against what was sent, a DSN, the queue
# as ringmx queue list --json shows it, and scenario e's messages.
cat >"$TMP/check.py" <<'PY'
import email, email.policy, json, os, re, sys

TRACE = (b"return-path", b"x-original-to", b"delivered-to", b"received")

def split_trace(data):
    """The trace header fields the hops prepended (unfolded), and the rest."""
    lines = data.split(b"\n")
    i, trace = 0, []
    while i < len(lines) and lines[i].split(b":", 1)[0].lower() in TRACE:
        field = [lines[i]]
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            field.append(lines[i].strip())
            i += 1
        trace.append(b" ".join(field).decode("utf-8", "replace"))
    return trace, b"\n".join(lines[i:])

def maildir(d):
    out = []
    for sub in ("new", "cur"):
        p = os.path.join(d, sub)
        if os.path.isdir(p):
            out += [os.path.join(p, f) for f in sorted(os.listdir(p))]
    return out

def expected_lf(raw, cr_space):
    # The Maildirs hold LF line ends; Postfix stores a bare CR as a space.
    out = raw.replace(b"\r\n", b"\n")
    return out.replace(b"\r", b" ") if cr_space else out

def same(path, sent, cr_space):
    """The one delivered copy at PATH is SENT past the trace fields; the field next to the
    original header is ringmx's Received, the only one."""
    data = open(path, "rb").read()
    trace, rest = split_trace(data)
    want = expected_lf(open(sent, "rb").read(), cr_space)
    if rest != want:
        raise AssertionError("%s differs from what was sent:\n--- delivered past the trace fields\n%r\n--- sent\n%r" % (path, rest, want))
    ours = [t for t in trace if t.startswith("Received:") and "(ringmx)" in t]
    assert len(ours) == 1, (path, "not one ringmx Received field", trace)
    assert trace[-1] == ours[0], (path, "ringmx's Received is not next to the original header", trace)
    assert re.search(r"\bby mx\.test \(ringmx\)", ours[0]), (path, ours[0])
    return trace

def main():
    cmd = sys.argv[1]
    if cmd == "same":  # same MAILDIR SENT [cr-space]: MAILDIR holds one message, SENT's
        files = maildir(sys.argv[2])
        assert len(files) == 1, (sys.argv[2], files)
        trace = same(files[0], sys.argv[3], len(sys.argv) > 4)
        print("/".join(sys.argv[2].split("/")[-2:]), "byte-exact past", len(trace), "trace fields:", " | ".join(t[:60] for t in trace))
    elif cmd == "find":  # find MAILDIR SUBJECT: the one message with that Subject
        hits = [f for f in maildir(sys.argv[2])
                if re.search(rb"^Subject: " + re.escape(sys.argv[3].encode()) + rb"$", open(f, "rb").read(), re.M)]
        assert len(hits) == 1, (sys.argv[2], sys.argv[3], hits)
        print(hits[0])
    elif cmd == "dsn":  # dsn MAILDIR RCPT SUBJECT: MAILDIR holds one DSN, a failure for RCPT
        files = maildir(sys.argv[2])
        assert len(files) == 1, (sys.argv[2], "not one message", files)
        data = open(files[0], "rb").read()
        trace, rest = split_trace(data)
        assert "Return-Path: <>" in trace, ("not from <>", trace)
        msg = email.message_from_bytes(rest, policy=email.policy.default)
        assert msg.get_content_type() == "multipart/report", msg.get_content_type()
        assert msg.get_param("report-type") == "delivery-status", msg.get("content-type")
        text = rest.decode("utf-8", "replace")
        rcpt = re.escape(sys.argv[3])
        assert re.search(r"(?mi)^Final-Recipient: *rfc822; *" + rcpt + r"\s*$", text), ("no Final-Recipient", text)
        assert re.search(r"(?mi)^Action: *failed\s*$", text), ("no Action: failed", text)
        assert re.search(r"(?mi)^Status: *5\.", text), ("no 5.x.x Status", text)
        assert re.search(r"(?mi)^Diagnostic-Code: *[\w-]+; *550", text), ("no Diagnostic-Code with the 550", text)
        assert len(re.findall(r"(?mi)^Final-Recipient:", text)) == 1, ("a report for more than the one", text)
        assert "Subject: " + sys.argv[4] in text, ("the original's header is not returned", text)
        print("DSN", files[0], "for", sys.argv[3], "| From:", msg.get("from"), "| Subject:", msg.get("subject"))
    elif cmd == "queue":  # queue JSONLINES: one line per message: ID STATE,STATE... REPLIES
        for n, line in enumerate(open(sys.argv[2], encoding="utf-8")):
            if not line.strip():
                continue
            m = json.loads(line)
            for k in ("id", "sender", "recipients"):
                assert k in m, ("no %s in queue list line %d" % (k, n + 1), m)
            rs = m["recipients"]
            assert isinstance(rs, list) and rs, m
            for r in rs:
                for k in ("address", "state", "reply", "next_attempt"):
                    assert k in r, ("no %s in a recipient" % k, m)
                assert r["state"] in ("pending", "deferred", "held", "failed", "done"), m
            print(m["id"], ",".join(r["state"] for r in rs), " | ".join(str(r["reply"]) for r in rs))

if __name__ == "__main__":
    main()
PY
# Scenario e's messages: X-Seq N, a body of its own with lines that need dot-stuffing.
cat >"$TMP/crash.py" <<'PY'
def make(seq):
    head = ("From: load <crash-sender@load.example>\r\nTo: crash@pf.test\r\n"
            "Subject: crash %d\r\nMessage-ID: <crash.%d@load.example>\r\n"
            "Date: Wed, 02 Dec 2026 12:00:00 +0000\r\nX-Seq: %d\r\n\r\n") % (seq, seq, seq)
    body = "".join(("." if i % 5 == 0 else "") + "seq %d line %d %s\r\n" % (seq, i, "x" * (i * 3))
                   for i in range(16))
    return (head + body).encode()
PY

# ringmx serve with CONFIG on SPOOL, port 0, its log rx-NAME.log and stats stats-NAME.json;
# sets RX_PID and RX_PORT.
start_rx() { # name, config, spool
    RX_LOG=$TMP/rx-$1.log
    "$BIN" serve --config "$2" --listen 127.0.0.1:0 --spool "$3" --workers 1 --hostname mx.test \
        --stats-file "$TMP/stats-$1.json" 2>"$RX_LOG" &
    RX_PID=$!
    RX_PIDS+=("$RX_PID")
    for _ in $(seq 100); do
        grep -q 'ringmx started' "$RX_LOG" && break
        kill -0 "$RX_PID" 2>/dev/null || break
        sleep 0.1
    done
    local start
    start=$(grep -m1 'ringmx started' "$RX_LOG" || true)
    [ -n "$start" ] || fail "ringmx ($1) did not start"
    RX_PORT=$(sed -n 's/.* listeners=127\.0\.0\.1:\([0-9]*\).*/\1/p' <<<"$start")
    [ -n "$RX_PORT" ] || fail "no port in ringmx's start line: $start"
}
stop_rx() { # what
    kill -TERM "$RX_PID"
    for _ in $(seq 300); do
        kill -0 "$RX_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$RX_PID" 2>/dev/null && fail "$1: ringmx did not exit within 30 s of SIGTERM"
    local status=0
    wait "$RX_PID" || status=$?
    RX_PID=
    [ "$status" -eq 0 ] || fail "$1: ringmx exited with status $status"
}
# The queue, one JSON line per message, in $TMP/q.json, summarised in $TMP/q.txt.
queue() { # spool
    CLIENT_LOG=$TMP/queue-list.err
    timeout 10 "$BIN" queue list --spool "$1" --json >"$TMP/q.json" 2>"$CLIENT_LOG" \
        || fail "ringmx queue list failed"
    CLIENT_LOG=$TMP/q.json
    python3 "$TMP/check.py" queue "$TMP/q.json" >"$TMP/q.txt" 2>"$TMP/q.err" \
        || { cat "$TMP/q.err" >&2; fail "ringmx queue list --json: not the expected shape"; }
    CLIENT_LOG=
}
queue_wait_empty() { # spool, seconds, what
    for _ in $(seq $(($2 * 5))); do
        queue "$1"
        [ -s "$TMP/q.txt" ] || return 0
        sleep 0.2
    done
    cat "$TMP/q.txt" >&2
    fail "$3: the queue is not empty after $2 s"
}
# A control command that must succeed: queue VERB ARGS...
queue_do() {
    CLIENT_LOG=$TMP/queue-$1.log
    timeout 10 "$BIN" queue "$@" >"$CLIENT_LOG" 2>&1 || fail "ringmx queue $* failed"
    CLIENT_LOG=
}
# swaks into ringmx; the queue id it was given in QID.
swaks_rx() { # name, swaks options
    local name=$1
    shift
    CLIENT_LOG=$TMP/swaks-$name.log
    timeout 30 swaks --server 127.0.0.1 --port "$RX_PORT" --timeout 20 --helo swaks.example "$@" \
        >"$CLIENT_LOG" 2>&1 || fail "swaks ($name) into ringmx failed"
    QID=$(sed -n 's/^<-  250 2\.0\.0 Ok: queued as \([^ ]*\).*/\1/p' "$CLIENT_LOG" | tr -d '\r')
    [ -n "$QID" ] || fail "swaks ($name): ringmx gave no queue id"
    CLIENT_LOG=
}
# The stats file's delivery member checked with a Python expression over it (d), and shown.
stats_check() { # name, expression
    CLIENT_LOG=$TMP/stats-$1.json
    python3 - "$TMP/stats-$1.json" "$2" <<'PY' || fail "$1: the stats file's delivery counts are not as expected"
import json, sys
d = json.load(open(sys.argv[1]))["delivery"]
for k in ("queued", "delivered", "deferred", "bounced", "dsn_sent"):
    assert isinstance(d.get(k), int), ("no count", k, d)
assert eval(sys.argv[2], {}, {"d": d}), (sys.argv[2], d)
print(" ".join("%s=%s" % kv for kv in sorted(d.items()) if isinstance(kv[1], int)))
PY
    CLIENT_LOG=
}

# One server for a, b and d: relay_to Postfix (over STARTTLS, relay_tls = "may"), lmtp.test
# routed to Dovecot, short backoff.
cat >"$TMP/main.toml" <<EOF
relay_to = "smtp:127.0.0.1:$PF_PORT"
min_backoff_secs = 1
max_backoff_secs = 2
relay_tls = "may"

[routes]
"lmtp.test" = "lmtp:127.0.0.1:$DV_PORT"
EOF
start_rx main "$TMP/main.toml" "$TMP/spool-main"
MAIN_SPOOL=$TMP/spool-main

# --- a. swaks -> ringmx -> Postfix. swaks dot-stuffs what it sends and ends it with one CRLF
# more; ringmx takes the stuffing off and must put it back on the way out, or Postfix would
# end the message at the line of one dot.
T0=$(date +%s%N)
printf 'From: Sender A <sender-a@swaks.example>\r\nTo: rcpt-a@pf.test\r\nSubject: scenario a\r\nMessage-ID: <a.1@swaks.example>\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\nX-Scenario: a\r\n\r\nfirst line\r\n.\r\n.leading dot\r\n..two dots\r\n...three dots\r\n .space dot\r\nMAIL FROM:<not@a.command>\r\ntrailing blanks \t\r\n\r\nlast line\r\n' >"$TMP/a.eml"
printf '\r\n' | cat "$TMP/a.eml" - >"$TMP/a.sent"
swaks_rx a --from sender-a@swaks.example --to rcpt-a@pf.test --data "@$TMP/a.eml"
wait_count "$PF/mail/rcpt-a" 1 15 "a"
queue_wait_empty "$MAIN_SPOOL" 10 "a"
sleep 0.5
[ "$(count "$PF/mail/rcpt-a")" -eq 1 ] || fail "a: $(count "$PF/mail/rcpt-a") copies delivered, expected 1"
CLIENT_LOG=$TMP/a.check
python3 "$TMP/check.py" same "$PF/mail/rcpt-a" "$TMP/a.sent" >"$CLIENT_LOG" 2>&1 || fail "a: not delivered byte-exact"
sed 's/^/delivery: a: /' "$CLIENT_LOG"
# Relayed over STARTTLS (RFC 3207): Postfix's own Received header says with which version.
grep -q 'using TLSv1\.[23]' "$PF"/mail/rcpt-a/new/* \
    || fail "a: not relayed over TLS (no 'using TLS' in Postfix's Received header)"
echo "delivery: a: relayed over STARTTLS ($(grep -o 'using TLSv1\.[23][^)]*' "$PF"/mail/rcpt-a/new/* | head -n1))"
CLIENT_LOG=
step_done a "$T0"

# --- b. swaks -> ringmx -> Dovecot LMTP (the lmtp.test route) for alice, bob and nobody, from
# sender-b@pf.test (relay_to, Postfix): alice and bob get it once each, byte for byte;
# nobody is refused (550) and sender-b gets exactly one DSN. Then the same failure for a
# message from <>, which must make no DSN at all.
T0=$(date +%s%N)
printf 'From: Sender B <sender-b@pf.test>\r\nTo: alice@lmtp.test, bob@lmtp.test, nobody@lmtp.test\r\nSubject: scenario b\r\nMessage-ID: <b.1@pf.test>\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\n\r\nto three over LMTP\r\n.\r\n..two dots\r\nend\r\n' >"$TMP/b.eml"
printf '\r\n' | cat "$TMP/b.eml" - >"$TMP/b.sent"
PF_FROM_NULL_BEFORE=$(grep -c 'qmgr.*from=<>,' "$PF/maillog" || true)
swaks_rx b --from sender-b@pf.test --to alice@lmtp.test,bob@lmtp.test,nobody@lmtp.test --data "@$TMP/b.eml"
wait_count "$DV/home/alice/Maildir" 1 15 "b (alice)"
wait_count "$DV/home/bob/Maildir" 1 15 "b (bob)"
wait_count "$PF/mail/sender-b" 1 15 "b (the DSN to sender-b)"
queue_wait_empty "$MAIN_SPOOL" 10 "b"
sleep 0.5
for u in alice bob; do
    CLIENT_LOG=$TMP/b-$u.check
    python3 "$TMP/check.py" same "$DV/home/$u/Maildir" "$TMP/b.sent" >"$CLIENT_LOG" 2>&1 \
        || fail "b: not delivered to $u once, byte-exact"
    sed 's/^/delivery: b: /' "$CLIENT_LOG"
done
CLIENT_LOG=$TMP/b-dsn.check
python3 "$TMP/check.py" dsn "$PF/mail/sender-b" nobody@lmtp.test "scenario b" >"$CLIENT_LOG" 2>&1 \
    || fail "b: not exactly one DSN for nobody@lmtp.test"
sed 's/^/delivery: b: /' "$CLIENT_LOG"
# From <>: alice gets it, nobody fails, and nobody hears of it.
CLIENT_LOG=$TMP/b-null.log
timeout 30 python3 - "$RX_PORT" >"$CLIENT_LOG" 2>&1 <<'PY' || fail "b: the message from <> was not queued"
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="null.example", timeout=20) as s:
    refused = s.sendmail("", ["nobody@lmtp.test", "alice@lmtp.test"],
                         b"From: MAILER-DAEMON@null.example\r\nSubject: from the null sender\r\n\r\nbounce of a bounce\r\n")
    assert refused == {}, refused
PY
wait_count "$DV/home/alice/Maildir" 2 15 "b (alice, from <>)"
queue_wait_empty "$MAIN_SPOOL" 10 "b (from <>)"
# A DSN would have gone at once; give it two backoffs to show up anyway.
sleep 2
[ "$(count "$PF/mail/sender-b")" -eq 1 ] || fail "b: sender-b got $(count "$PF/mail/sender-b") messages, expected the one DSN"
PF_FROM_NULL=$(( $(grep -c 'qmgr.*from=<>,' "$PF/maillog" || true) - PF_FROM_NULL_BEFORE ))
[ "$PF_FROM_NULL" -eq 1 ] || fail "b: postfix got $PF_FROM_NULL messages from <>, expected the one DSN"
grep -q '^Subject: from the null sender' "$DV/home/alice/Maildir/new/"* || fail "b: alice did not get the message from <>"
step_done b "$T0"

# --- d. SMTP smuggling: each sample hides a second transaction behind an end of data that is
# not <CRLF>.<CRLF>. ringmx takes each as one message (bare LF made CRLF); relaying it, its
# line of one dot must go out stuffed, and its bare LF as CRLF (Postfix here refuses bare LF),
# so that Postfix, too, sees one message with the whole body, and no MAIL from x@y.example.
T0=$(date +%s%N)
PF_LINES_BEFORE=$(wc -l <"$PF/maillog")
CLIENT_LOG=$TMP/d.log
timeout 60 python3 - "$RX_PORT" "$TMP" >"$CLIENT_LOG" 2>&1 <<'PY' || fail "d: sending the samples failed"
import socket, sys

port, tmp = int(sys.argv[1]), sys.argv[2]
variants = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r"]

def replies(f, want):
    while True:
        line = f.readline()
        assert line, "connection closed"
        if line[3:4] != b"-":
            assert line.startswith(want), (want, line)
            return line

for n, v in enumerate(variants, 1):
    body = (b"From: smuggler <sender-d@smuggle.example>\r\nTo: smuggle-%d@pf.test\r\n"
            b"Subject: smuggling %d\r\nMessage-ID: <d.%d@smuggle.example>\r\n"
            b"Date: Wed, 02 Dec 2026 12:00:00 +0000\r\n\r\n" % (n, n, n)
            + b"before" + v + b"MAIL FROM:<x@y.example>\r\nRCPT TO:<victim@pf.test>\r\nDATA\r\n"
            + b"Subject: smuggled\r\n\r\nsmuggled body" + v + b"after\r\n")
    with open("%s/d-%d.sent" % (tmp, n), "wb") as f:
        # As ringmx stores it: bare LF as CRLF.
        f.write(body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    f = s.makefile("rb")
    replies(f, b"220")
    for cmd, want in ((b"EHLO smuggle.example", b"250"), (b"MAIL FROM:<sender-d@smuggle.example>", b"250"),
                      (b"RCPT TO:<smuggle-%d@pf.test>" % n, b"250"), (b"DATA", b"354")):
        s.sendall(cmd + b"\r\n")
        replies(f, want)
    s.sendall(body + b".\r\n")
    print(n, repr(v), replies(f, b"250 2.0.0 Ok: queued as").decode().strip())
    s.sendall(b"QUIT\r\n")
    replies(f, b"221")
    s.close()
PY
for n in 1 2 3 4; do
    wait_count "$PF/mail/smuggle-$n" 1 15 "d (sample $n)"
done
queue_wait_empty "$MAIN_SPOOL" 10 "d"
sleep 0.5
for n in 1 2 3 4; do
    [ "$(count "$PF/mail/smuggle-$n")" -eq 1 ] || fail "d: sample $n delivered $(count "$PF/mail/smuggle-$n") times"
    CLIENT_LOG=$TMP/d-$n.check
    python3 "$TMP/check.py" same "$PF/mail/smuggle-$n" "$TMP/d-$n.sent" cr-space >"$CLIENT_LOG" 2>&1 \
        || fail "d: sample $n not delivered whole"
    CLIENT_LOG=
done
[ "$(count "$PF/mail/victim")" -eq 0 ] || fail "d: a smuggled message reached victim@pf.test"
tail -n +$((PF_LINES_BEFORE + 1)) "$PF/maillog" >"$TMP/d-maillog"
CLIENT_LOG=$TMP/d-maillog
TRANSACTIONS=$(grep -cE 'smtpd\[[0-9]+\]: [0-9A-F]+: client=' "$TMP/d-maillog" || true)
[ "$TRANSACTIONS" -eq 4 ] || fail "d: postfix logged $TRANSACTIONS transactions, expected 4"
! grep -q 'x@y\.example' "$TMP/d-maillog" || fail "d: postfix saw the smuggled sender"
! grep -qiE 'bare <LF>|improper command pipelining' "$TMP/d-maillog" || fail "d: postfix saw bare LF or a pipelined command"
CLIENT_LOG=
echo "delivery: d: 4 smuggling samples, one message each, whole, no second transaction"
step_done d "$T0"

stop_rx main
stats_check main 'd["delivered"] >= 8 and d["bounced"] >= 2 and d["dsn_sent"] == 1'

# --- c. The next hop down when mail comes in: relay_to a port where nothing listens yet.
# Three messages, all deferred (connection refused); one is held, one deleted. Postfix then
# listens there: the first arrives by its own retry (backoff 1..2 s), the held one not until
# released (and flushed), the deleted one never.
T0=$(date +%s%N)
cat >"$TMP/late.toml" <<EOF
relay_to = "smtp:127.0.0.1:$LATE_PORT"
min_backoff = 1
max_backoff = 2
relay_tls = "none"
EOF
start_rx late "$TMP/late.toml" "$TMP/spool-late"
LATE_SPOOL=$TMP/spool-late
C_IDS=()
for what in retried held deleted; do
    printf 'From: <sender-c@swaks.example>\r\nTo: late@pf.test\r\nSubject: c %s\r\nMessage-ID: <c.%s@swaks.example>\r\n\r\nthe next hop was down\r\n' \
        "$what" "$what" >"$TMP/c-$what.eml"
    printf '\r\n' | cat "$TMP/c-$what.eml" - >"$TMP/c-$what.sent"
    swaks_rx "c-$what" --from sender-c@swaks.example --to late@pf.test --data "@$TMP/c-$what.eml"
    C_IDS+=("$QID")
done
C_RETRIED=${C_IDS[0]}
C_HELD=${C_IDS[1]}
C_DELETED=${C_IDS[2]}
DEFERRED=
for _ in $(seq 50); do
    queue "$LATE_SPOOL"
    if [ "$(grep -c ' deferred ' "$TMP/q.txt" || true)" -eq 3 ]; then
        DEFERRED=1
        break
    fi
    sleep 0.2
done
[ -n "$DEFERRED" ] || { cat "$TMP/q.txt" >&2; fail "c: the three messages were not all deferred"; }
sed 's/^/delivery: c: deferred: /' "$TMP/q.txt"
queue_do hold "$C_HELD" --spool "$LATE_SPOOL"
queue_do delete "$C_DELETED" --spool "$LATE_SPOOL"
queue "$LATE_SPOOL"
grep -q "^$C_HELD held " "$TMP/q.txt" || { cat "$TMP/q.txt" >&2; fail "c: $C_HELD is not held"; }
! grep -q "^$C_DELETED " "$TMP/q.txt" || { cat "$TMP/q.txt" >&2; fail "c: $C_DELETED was not deleted"; }
grep -q "^$C_RETRIED deferred " "$TMP/q.txt" || { cat "$TMP/q.txt" >&2; fail "c: $C_RETRIED is not deferred"; }
# Postfix starts listening on the port (a reload of its master.cf).
sed -i "1a 127.0.0.1:$LATE_PORT inet n - n - - smtpd" "$PF/etc/master.cf"
CLIENT_LOG=$TMP/postfix-reload.log
postfix -c "$PF/etc" reload >"$CLIENT_LOG" 2>&1 || fail "postfix reload failed"
CLIENT_LOG=
wait_listening "$LATE_PORT" "postfix (reloaded)"
UP=$(date +%s%N)
wait_count "$PF/mail/late" 1 15 "c (the retried message)"
echo "delivery: c: delivered $(since "$UP") ms after postfix listened"
# Past the longest backoff: the held message stays in the queue, held.
sleep 2.5
[ "$(count "$PF/mail/late")" -eq 1 ] || fail "c: $(count "$PF/mail/late") messages delivered while one was held"
queue "$LATE_SPOOL"
[ "$(wc -l <"$TMP/q.txt")" -eq 1 ] && grep -q "^$C_HELD held " "$TMP/q.txt" \
    || { cat "$TMP/q.txt" >&2; fail "c: the queue is not just the held message"; }
queue_do release "$C_HELD" --spool "$LATE_SPOOL"
queue_do flush --spool "$LATE_SPOOL"
wait_count "$PF/mail/late" 2 15 "c (the released message)"
queue_wait_empty "$LATE_SPOOL" 10 "c"
sleep 0.5
[ "$(count "$PF/mail/late")" -eq 2 ] || fail "c: $(count "$PF/mail/late") messages delivered, expected 2 (the deleted one never)"
for what in retried held; do
    CLIENT_LOG=$TMP/c-$what.check
    F=$(python3 "$TMP/check.py" find "$PF/mail/late" "c $what" 2>"$CLIENT_LOG") || fail "c: not one '$what' message"
    mkdir -p "$TMP/c-$what.md/new"
    cp "$F" "$TMP/c-$what.md/new/"
    python3 "$TMP/check.py" same "$TMP/c-$what.md" "$TMP/c-$what.sent" >"$CLIENT_LOG" 2>&1 \
        || fail "c: the $what message not delivered byte-exact"
    CLIENT_LOG=
done
stop_rx late
stats_check late 'd["delivered"] == 2 and d["deferred"] >= 3 and d["bounced"] == 0 and d["dsn_sent"] == 0'
echo "delivery: c: deferred while down; retried, held then released, and deleted as told"
step_done c "$T0"

# --- e. kill -9 during delivery: 200 messages (X-Seq 1..200) on one connection; once 40 have
# arrived, SIGKILL. Then a restart on the same spool, the messages the client was not told
# were queued sent again, and the queue drained: every X-Seq must arrive, at least once.
T0=$(date +%s%N)
cat >"$TMP/crash.toml" <<EOF
relay_to = "smtp:127.0.0.1:$PF_PORT"
min_backoff_secs = 1
max_backoff_secs = 2
relay_tls = "none"
EOF
CRASH_SPOOL=$TMP/spool-crash
cat >"$TMP/send.py" <<'PY'
import smtplib, sys
sys.path.insert(0, sys.argv[4])
from crash import make

port, seqs, accepted, strict = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[5] == "strict"
seqs = [int(x) for x in open(seqs).read().split()]
done = 0
with open(accepted, "a") as out:
    try:
        s = smtplib.SMTP("127.0.0.1", port, local_hostname="load.example", timeout=20)
        for seq in seqs:
            refused = s.sendmail("crash-sender@load.example", ["crash@pf.test"], make(seq))
            assert refused == {}, refused
            out.write("%d\n" % seq)
            out.flush()
            done += 1
        s.quit()
    except (OSError, smtplib.SMTPException) as e:
        if strict:
            raise
        print("stopped after %d messages: %r" % (done, e))
print("sent %d of %d" % (done, len(seqs)))
PY
seq 1 200 >"$TMP/seqs-all"
: >"$TMP/accepted"
start_rx crash-1 "$TMP/crash.toml" "$CRASH_SPOOL"
timeout 60 python3 "$TMP/send.py" "$RX_PORT" "$TMP/seqs-all" "$TMP/accepted" "$TMP" lenient \
    >"$TMP/send-1.log" 2>&1 &
SENDER=$!
KILLED=
for _ in $(seq 600); do
    if [ "$(count "$PF/mail/crash")" -ge 40 ]; then
        kill -KILL "$RX_PID"
        KILLED=1
        break
    fi
    sleep 0.05
done
[ -n "$KILLED" ] || { CLIENT_LOG=$TMP/send-1.log; fail "e: 40 messages did not arrive within 30 s"; }
AT_KILL=$(count "$PF/mail/crash")
wait "$RX_PID" 2>/dev/null || true
RX_PID=
STATUS=0
wait "$SENDER" || STATUS=$?
CLIENT_LOG=$TMP/send-1.log
[ "$STATUS" -eq 0 ] || fail "e: the first sender failed (status $STATUS)"
CLIENT_LOG=
ACCEPTED_1=$(wc -l <"$TMP/accepted")
# The stopped server's queue, read from the spool: what the kill left undelivered.
queue "$CRASH_SPOOL"
LEFT=$(wc -l <"$TMP/q.txt")
echo "delivery: e: killed with $AT_KILL delivered, $ACCEPTED_1 accepted, $LEFT left in the queue"
[ "$LEFT" -gt 0 ] || fail "e: nothing left in the queue at the kill: delivery was not in progress"
sleep 1
start_rx crash-2 "$TMP/crash.toml" "$CRASH_SPOOL"
grep -vxF -f "$TMP/accepted" "$TMP/seqs-all" >"$TMP/seqs-rest" || true
RESENT=$(wc -l <"$TMP/seqs-rest")
if [ "$RESENT" -gt 0 ]; then
    CLIENT_LOG=$TMP/send-2.log
    timeout 60 python3 "$TMP/send.py" "$RX_PORT" "$TMP/seqs-rest" "$TMP/accepted" "$TMP" strict \
        >"$CLIENT_LOG" 2>&1 || fail "e: sending the rest after the restart failed"
    CLIENT_LOG=
fi
queue_wait_empty "$CRASH_SPOOL" 60 "e"
sleep 1
CLIENT_LOG=$TMP/e.check
python3 - "$PF/mail/crash" "$TMP" >"$CLIENT_LOG" 2>&1 <<'PY' || fail "e: not every message arrived whole"
import collections, os, re, sys
sys.path.insert(0, sys.argv[2])
from crash import make
from check import maildir, split_trace, expected_lf
seen = collections.Counter()
for path in maildir(sys.argv[1]):
    data = open(path, "rb").read()
    m = re.search(rb"^X-Seq: (\d+)$", data, re.M)
    assert m, (path, "no X-Seq")
    seq = int(m.group(1))
    trace, rest = split_trace(data)
    assert rest == expected_lf(make(seq), False), (path, "not the message sent as X-Seq %d" % seq)
    seen[seq] += 1
missing = sorted(set(range(1, 201)) - set(seen))
assert not missing, ("missing", missing)
dups = sum(n - 1 for n in seen.values())
print("%d messages, %d X-Seq, %d duplicates (%s)" % (sum(seen.values()), len(seen), dups,
      ", ".join("X-Seq %d x%d" % (s, n) for s, n in sorted(seen.items()) if n > 1) or "none"))
PY
E_RESULT=$(tail -n1 "$CLIENT_LOG")
CLIENT_LOG=
stop_rx crash-2
echo "delivery: e: $E_RESULT; $RESENT sent again after the restart"
step_done e "$T0"

echo "delivery: timing: ${TIMES[*]}; total $(since "$BEGAN_ALL") ms"
echo "delivery: postfix smtpd and dovecot lmtp alone; relay to postfix byte-exact, lmtp with DSN, retry after the next hop came up, 4 smuggling samples, kill -9 during delivery ($E_RESULT) passed"
