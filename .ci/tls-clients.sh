#!/usr/bin/env bash
# Real TLS clients against the built server, with a throwaway CA made at run time:
#   swaks --tls (STARTTLS) and swaks --tlsc (implicit TLS), both verifying the certificate;
#   openssl s_client -starttls smtp with a scripted session (the EHLO reply inside TLS must
#   not offer STARTTLS again); Python's smtplib with starttls() and with SMTP_SSL, both
#   verifying; Postfix's own SMTP client relaying into ringmx with smtp_tls_security_level =
#   encrypt, from a private instance in a temporary directory.
# Every message must be committed in the spool (read back through ringmx spool export) with
# "with ESMTPS" in its Received header and a "tls" object in its .json. Exits non-zero on any failure, after printing the server log and
# the failing client's output.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${RINGMX_BIN:-target/debug/ringmx}
[ -x "$BIN" ] || cargo build -p ringmx

# What the clients need, installed quietly where missing. Postfix without configuration: the
# test runs its own instance from a temporary directory, never the system's.
need=()
command -v swaks >/dev/null 2>&1 || need+=(swaks)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
[ -x /usr/sbin/postfix ] || need+=(postfix)
perl -MNet::SSLeay -e 1 >/dev/null 2>&1 || need+=(libnet-ssleay-perl)
perl -MIO::Socket::SSL -e 1 >/dev/null 2>&1 || need+=(libio-socket-ssl-perl)
if [ "${#need[@]}" -gt 0 ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
PATH=$PATH:/usr/sbin:/sbin

TMP=$(mktemp -d)
# Postfix's daemons run as the postfix user and must reach their queue and the CA file here.
chmod 0755 "$TMP"
PID=
PF=$TMP/postfix
PF_STARTED=
CLIENT_LOG=

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
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -KILL "$PID" 2>/dev/null || true
    fi
    if [ -n "$PF_STARTED" ]; then
        postfix -c "$PF/etc" abort >/dev/null 2>&1 || true
        # The master's children go with it; wait (bounded) before removing their queue.
        for _ in $(seq 50); do
            [ -n "$(pf_procs)" ] || break
            sleep 0.1
        done
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
    echo "tls-clients: $*" >&2
    if [ -n "$CLIENT_LOG" ] && [ -f "$CLIENT_LOG" ]; then
        echo "--- client output ($CLIENT_LOG)" >&2
        cat "$CLIENT_LOG" >&2 || true
    fi
    echo "--- server log" >&2
    cat "$TMP/log" >&2 || true
    exit 1
}

# --- A test CA and a server certificate for mx.test and 127.0.0.1, ECDSA P-256, made here and
# gone with $TMP.
PKI=$TMP/pki
mkdir -p "$PKI"
cat >"$PKI/openssl.cnf" <<'EOF'
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = placeholder
[ ca_ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ server_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:mx.test, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
{
    openssl req -x509 -new -config "$PKI/openssl.cnf" -extensions ca_ext \
        -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$PKI/ca.key" \
        -subj "/CN=ringmx tls-clients test CA" -days 2 -out "$PKI/ca.pem"
    openssl req -new -config "$PKI/openssl.cnf" \
        -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$PKI/server.key" \
        -subj "/CN=mx.test" -out "$PKI/server.csr"
    openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" \
        -CAcreateserial -days 2 -extfile "$PKI/openssl.cnf" -extensions server_ext \
        -out "$PKI/server.pem"
    openssl verify -CAfile "$PKI/ca.pem" "$PKI/server.pem"
    # A second CA, which signed nothing here: the clients that cannot say whether they verified
    # must fail with it.
    openssl req -x509 -new -config "$PKI/openssl.cnf" -extensions ca_ext \
        -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$PKI/other-ca.key" \
        -subj "/CN=ringmx tls-clients other CA" -days 2 -out "$PKI/other-ca.pem"
} >"$TMP/pki.log" 2>&1 || { CLIENT_LOG=$TMP/pki.log; fail "making the test certificates failed"; }
chmod 0600 "$PKI/ca.key" "$PKI/other-ca.key" "$PKI/server.key"
CA=$PKI/ca.pem

# --- The server: one plain listener (offers STARTTLS) and one implicit TLS listener, port 0.
"$BIN" serve --listen 127.0.0.1:0 --listen-tls 127.0.0.1:0 \
    --tls-cert "$PKI/server.pem" --tls-key "$PKI/server.key" \
    --hostname mx.test --workers 1 --spool "$TMP/spool" 2>"$TMP/log" &
PID=$!
for _ in $(seq 100); do
    grep -q 'ringmx started' "$TMP/log" && break
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
done
START=$(grep -m1 'ringmx started' "$TMP/log" || true)
[ -n "$START" ] || fail "server did not start"
PORT=$(sed -n 's/.* listeners=127\.0\.0\.1:\([0-9]*\).*/\1/p' <<<"$START")
TLS_PORT=$(sed -n 's/.* tls_listeners=127\.0\.0\.1:\([0-9]*\).*/\1/p' <<<"$START")
if [ -z "$PORT" ] || [ -z "$TLS_PORT" ]; then
    fail "no plain or TLS port in the start line: $START"
fi
grep -q ' starttls=true' <<<"$START" || fail "start line does not say starttls=true: $START"

# A message is accepted when the reply to its data is this (and not only some 250).
QUEUED='250 2.0.0 Ok: queued as'

# --- swaks, verifying the certificate against the CA (chain only: swaks checks no name) where
# this swaks has --tls-verify, else unverified (and said so).
SWAKS_VERIFY=(--tls-verify --tls-ca-path "$CA")
if ! swaks --help 2>&1 | grep -q -- '--tls-verify'; then
    SWAKS_VERIFY=()
    echo "tls-clients: this swaks has no --tls-verify; its sessions do not verify the certificate" >&2
fi
swaks_run() { # name, then swaks options
    local name=$1
    shift
    CLIENT_LOG=$TMP/$name.log
    timeout 30 swaks --server 127.0.0.1 --timeout 20 "${SWAKS_VERIFY[@]}" \
        --helo "$name.example" --from "sender@$name.example" --to rcpt@ci.example \
        --header "Subject: from $name" --body "sent by $name" "$@" >"$CLIENT_LOG" 2>&1 \
        || fail "$name failed (exit status $?)"
    grep -q '^=== TLS started with cipher' "$CLIENT_LOG" || fail "$name did not start TLS"
    # "<~" is swaks's mark for a reply read inside TLS.
    grep -q "^ *<~  $QUEUED" "$CLIENT_LOG" || fail "$name got no queue id inside TLS"
    # The session ends with the reply to QUIT, read inside TLS, and nothing after it.
    grep -q '^ *<~  221' "$CLIENT_LOG" || fail "$name got no reply to QUIT inside TLS"
    CLIENT_LOG=
}
if [ "${#SWAKS_VERIFY[@]}" -gt 0 ]; then
    # swaks prints nothing about verification; that it verifies is shown by a CA that did not
    # sign the certificate making it fail (and no message is sent).
    CLIENT_LOG=$TMP/swaks-wrong-ca.log
    if timeout 30 swaks --server 127.0.0.1 --port "$PORT" --timeout 20 --tls --tls-verify \
        --tls-ca-path "$PKI/other-ca.pem" --from sender@wrong-ca.example --to rcpt@ci.example \
        >"$CLIENT_LOG" 2>&1; then
        fail "swaks --tls-verify accepted a certificate its CA did not sign"
    fi
    grep -q '^=== TLS started' "$CLIENT_LOG" && fail "swaks started TLS with the wrong CA"
    CLIENT_LOG=
fi
swaks_run swaks-tls --port "$PORT" --tls
# STARTTLS was offered in the plain EHLO, and the EHLO inside TLS does not offer it again.
grep -q '^ *<-  250.STARTTLS' "$TMP/swaks-tls.log" || { CLIENT_LOG=$TMP/swaks-tls.log; fail "plain EHLO reply did not offer STARTTLS"; }
! grep -q '^ *<~  250.STARTTLS' "$TMP/swaks-tls.log" || { CLIENT_LOG=$TMP/swaks-tls.log; fail "EHLO reply inside TLS offers STARTTLS again"; }
swaks_run swaks-tlsc --port "$TLS_PORT" --tlsc
# Implicit TLS: nothing is read in the clear, the greeting included.
! grep -q '^ *<-  ' "$TMP/swaks-tlsc.log" || { CLIENT_LOG=$TMP/swaks-tlsc.log; fail "swaks --tlsc read a reply in the clear"; }

# --- openssl s_client: STARTTLS done by s_client, verified against the CA with mx.test as SNI,
# then a session fed line by line (paced, as a person would type it) until QUIT. -quiet shows
# only what the server sends inside TLS, from the reply to our EHLO on.
CLIENT_LOG=$TMP/s_client.log
{
    sleep 1
    for line in 'EHLO openssl.example' 'MAIL FROM:<sender@openssl.example>' \
        'RCPT TO:<rcpt@ci.example>' 'DATA'; do
        printf '%s\r\n' "$line"
        sleep 0.3
    done
    printf 'Subject: from openssl s_client\r\n\r\nsent by openssl s_client\r\n.\r\n'
    sleep 0.5
    printf 'QUIT\r\n'
    sleep 0.5
} | timeout 30 openssl s_client -starttls smtp -connect "127.0.0.1:$PORT" -CAfile "$CA" \
    -verify_return_error -verify_hostname mx.test -servername mx.test -quiet \
    >"$CLIENT_LOG" 2>&1 || fail "openssl s_client failed"
tr -d '\r' <"$CLIENT_LOG" >"$CLIENT_LOG.lf"
grep -q '^verify return:1' "$CLIENT_LOG.lf" || fail "s_client did not verify the certificate"
grep -q '^depth=0 CN = mx.test' "$CLIENT_LOG.lf" || fail "s_client saw no certificate for mx.test"
# The reply to our EHLO, inside TLS: from its first line to its last ("250 "). (s_client may
# echo the last line of its own, plaintext EHLO reply before it.)
sed -n '/^250-mx\.test$/,/^250 /p' "$CLIENT_LOG.lf" >"$CLIENT_LOG.ehlo"
grep -q '^250 ' "$CLIENT_LOG.ehlo" || fail "s_client saw no EHLO reply inside TLS"
! grep -qi '^250[- ]STARTTLS' "$CLIENT_LOG.ehlo" || fail "EHLO reply inside TLS offers STARTTLS again"
grep -q "^$QUEUED" "$CLIENT_LOG.lf" || fail "s_client got no queue id"
grep -q '^221' "$CLIENT_LOG.lf" || fail "s_client got no reply to QUIT"
CLIENT_LOG=

# --- Python's smtplib, verifying the certificate against the CA for host 127.0.0.1 (in the
# SAN): starttls() on the plain port, SMTP_SSL on the TLS port.
CLIENT_LOG=$TMP/smtplib.log
timeout 30 python3 - "$PORT" "$TLS_PORT" "$CA" >"$CLIENT_LOG" 2>&1 <<'PY' || fail "smtplib failed"
import smtplib, ssl, sys

port, tls_port, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname

def send(s, name):
    code, _ = s.ehlo(name + ".example")
    assert code == 250, (name, code)
    assert not s.has_extn("starttls"), (name, "STARTTLS offered inside TLS")
    version = s.sock.version()
    assert version and version.startswith("TLSv1."), (name, version)
    code, msg = s.mail("sender@%s.example" % name)
    assert code == 250, (name, code, msg)
    code, msg = s.rcpt("rcpt@ci.example")
    assert code == 250, (name, code, msg)
    code, msg = s.data(("Subject: from %s\r\n\r\nsent by %s\r\n" % (name, name)).encode())
    assert code == 250 and msg.startswith(b"2.0.0 Ok: queued as"), (name, code, msg)
    print(name, version, s.sock.cipher()[0], code, msg.decode())
    # The reply to QUIT must arrive inside TLS (smtplib's "with" would swallow its loss).
    code, msg = s.quit()
    assert code == 221, (name, "QUIT", code, msg)

with smtplib.SMTP("127.0.0.1", port, local_hostname="smtplib-starttls.example", timeout=20) as s:
    s.ehlo()
    assert s.has_extn("starttls"), "STARTTLS not offered"
    code, msg = s.starttls(context=ctx)
    assert code == 220, (code, msg)
    send(s, "smtplib-starttls")
with smtplib.SMTP_SSL("127.0.0.1", tls_port, local_hostname="smtplib-ssl.example",
                      timeout=20, context=ctx) as s:
    send(s, "smtplib-ssl")
PY
CLIENT_LOG=

# --- Postfix's SMTP client relaying into ringmx with smtp_tls_security_level = encrypt: a
# private instance (its own config, queue and data directories under $TMP, no listener),
# mail injected with its sendmail, logged to a file.
mkdir -p "$PF/etc" "$PF/queue" "$PF/data"
chmod 0755 "$PF" "$PF/etc" "$PF/queue"
chown postfix "$PF/data"
: >"$PF/etc/main.cf"
cat >"$PF/etc/master.cf" <<'EOF'
# service type  private unpriv  chroot  wakeup  maxproc command
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
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
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
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
    "local_transport = error:no local delivery here" \
    "alias_maps =" \
    "alias_database =" \
    "relayhost = [127.0.0.1]:$PORT" \
    "smtp_tls_security_level = encrypt" \
    "smtp_tls_CAfile = $CA" \
    "smtp_tls_loglevel = 1" \
    "smtp_dns_support_level = disabled" \
    "smtp_helo_name = postfix.test"
CLIENT_LOG=$PF/maillog
postfix -c "$PF/etc" check >"$TMP/postfix-check.log" 2>&1 \
    || { cat "$TMP/postfix-check.log" >&2; fail "postfix check failed"; }
PF_STARTED=1
postfix -c "$PF/etc" start >"$TMP/postfix-start.log" 2>&1 \
    || { cat "$TMP/postfix-start.log" >&2; fail "postfix start failed"; }
printf 'From: sender@postfix.test\nTo: rcpt@ci.example\nSubject: from postfix\n\nsent by postfix\n' \
    | timeout 30 sendmail -C "$PF/etc" -f sender@postfix.test rcpt@ci.example \
    || fail "postfix's sendmail failed"
timeout 30 postqueue -c "$PF/etc" -f || fail "postqueue -f failed"
# Until Postfix logs the delivery to ringmx (bounded), failing at once if it deferred or bounced
# the message (a deferral waits minutes for its retry; no waiting for that here).
PF_OK=
for _ in $(seq 600); do
    if grep -qs 'status=sent' "$PF/maillog"; then
        PF_OK=1
        break
    fi
    if grep -qsE 'status=(deferred|bounced)' "$PF/maillog"; then
        break
    fi
    sleep 0.1
done
[ -n "$PF_OK" ] || {
    postqueue -c "$PF/etc" -p >&2 || true
    fail "postfix did not relay the message into ringmx"
}
grep -q "status=sent .*250 2.0.0 Ok: queued as" "$PF/maillog" || fail "postfix saw no queue id"
# With the CA given, Postfix says "Trusted" only when the chain verified.
grep -q 'Trusted TLS connection established to 127.0.0.1' "$PF/maillog" \
    || fail "postfix did not log a trusted TLS connection"
postfix -c "$PF/etc" stop >"$TMP/postfix-stop.log" 2>&1 \
    || { cat "$TMP/postfix-stop.log" >&2; fail "postfix stop failed"; }
for _ in $(seq 100); do
    [ -n "$(pf_procs)" ] || break
    sleep 0.1
done
[ -z "$(pf_procs)" ] || fail "postfix did not stop: processes $(pf_procs | tr '\n' ' ')left"
PF_STARTED=
CLIENT_LOG=

# --- Stop the server; its spool must hold exactly the six messages, each committed under TLS.
kill -TERM "$PID"
STATUS=0
wait "$PID" || STATUS=$?
PID=
[ "$STATUS" -eq 0 ] || fail "server exited with status $STATUS"

# The spool is in the default log format: nothing but its segments (and their done files), an
# empty tmp/ and the lock; it must check clean, and its messages, as the files format would
# store them, come from spool export.
OTHER=$(find "$TMP/spool" -type f ! -path "$TMP/spool/ringmx.lock" \
    | grep -cvE "^$TMP/spool/log/[0-9A-F]{16}\.(seg|done)\$" || true)
[ "$OTHER" -eq 0 ] || fail "spool holds $OTHER files besides its log segments and lock"
"$BIN" spool check --spool "$TMP/spool" >"$TMP/check.log" 2>&1 \
    || { cat "$TMP/check.log" >&2; fail "spool check found damage"; }
"$BIN" spool export --spool "$TMP/spool" --to "$TMP/messages" >/dev/null || fail "spool export failed"
JSON=$(find "$TMP/messages" -maxdepth 1 -type f -name '*.json' | wc -l)
EML=$(find "$TMP/messages" -maxdepth 1 -type f -name '*.eml' | wc -l)
if [ "$JSON" -ne 6 ] || [ "$EML" -ne 6 ]; then
    fail "spool export wrote $JSON .json and $EML .eml; expected 6 and 6"
fi
CLIENT_LOG=$TMP/spool-check.log
python3 - "$TMP/messages" >"$CLIENT_LOG" 2>&1 <<'PY' || fail "spool check failed"
import json, os, sys

spool = sys.argv[1]
senders = {"sender@%s.example" % n for n in
           ("swaks-tls", "swaks-tlsc", "openssl", "smtplib-starttls", "smtplib-ssl")}
senders.add("sender@postfix.test")
seen = set()
for name in sorted(os.listdir(spool)):
    if not name.endswith(".json"):
        continue
    stem = name[:-len(".json")]
    with open(os.path.join(spool, name), encoding="utf-8") as f:
        meta = json.load(f)
    tls = meta.get("tls")
    assert isinstance(tls, dict), (name, "no tls object", meta)
    assert str(tls.get("version", "")).startswith("TLSv1."), (name, tls)
    assert tls.get("cipher"), (name, tls)
    with open(os.path.join(spool, stem + ".eml"), "rb") as f:
        head = f.read(4096)
    # The first header, unfolded: ringmx's own Received: line.
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"Received: "), (name, lines[0])
    received = lines[0]
    for line in lines[1:]:
        if not line[:1] in (b" ", b"\t"):
            break
        received += b" " + line.strip()
    received = received.decode("utf-8", "replace")
    assert " with ESMTPS " in received, (name, received)
    assert "(using %s with cipher %s)" % (tls["version"], tls["cipher"]) in received, (name, received)
    sender = meta.get("mail_from")
    # s_client sent mx.test as SNI; the others connect to 127.0.0.1, which is no SNI name.
    sni = "mx.test" if sender == "sender@openssl.example" else None
    assert tls.get("sni") == sni, (name, sender, "sni", tls)
    assert sender in senders and sender not in seen, (name, "unexpected or repeated sender", sender)
    seen.add(sender)
    print(sender, tls, received)
assert seen == senders, ("missing", senders - seen)
PY
CLIENT_LOG=
echo "tls-clients: swaks --tls, swaks --tlsc, openssl s_client, smtplib starttls, smtplib SMTP_SSL, postfix (encrypt) messages committed over TLS"
