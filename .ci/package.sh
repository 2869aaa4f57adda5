#!/usr/bin/env bash
# The Debian package and the systemd unit, for real (as root, on this machine): checks the
# unit (systemd-analyze verify, and the offline security score), builds the .deb with cargo
# deb, installs it, checks the user, the group, the spool, the conffile and `ringmx check`,
# runs the installed server by hand on a loopback port with the unit's three capabilities
# (as root, so it must drop to ringmx itself) and sends it a message with swaks, then removes
# and purges the package (spool kept) and installs and purges it again with the
# /etc/ringmx/purge-spool switch (spool gone). Leaves nothing installed. Ends with one
# `package: passed` line; exits non-zero on any failure.
#
# The .deb is built from the release profile, as shipped (a fresh build took 9 minutes here
# with other builds running). PACKAGE_PORT (526) is the loopback port, below 1024 so that
# binding it needs CAP_NET_BIND_SERVICE.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH=$PATH:/usr/sbin:/sbin

[ "$(id -u)" -eq 0 ] || { echo "package: needs root (dpkg -i, a system user)" >&2; exit 1; }
PORT=${PACKAGE_PORT:-526}
SPOOL=/var/spool/ringmx
CONF=/etc/ringmx/ringmx.toml
UNIT=/usr/lib/systemd/system/ringmx.service
# The unit's CapabilityBoundingSet, for setpriv: "+net_bind_service,+setuid,+setgid".
CAPS=$(sed -n 's/^CapabilityBoundingSet=//p' tuning/ringmx.service | tr '[:upper:]' '[:lower:]' \
    | sed 's/cap_/+/g; s/ /,/g')

since() { echo $(($(date +%s) - $1)); }
BEGAN=$(date +%s)
TIMES=()
step() { # name, start
    TIMES+=("$1 $(since "$2") s")
}

TMP=$(mktemp -d)
PID=
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -KILL "$PID" 2>/dev/null || true
    fi
    # Whatever happened, nothing of the package stays: purge it with its spool.
    if dpkg-query -W -f='${Status}' ringmx 2>/dev/null | grep -q 'config-files\|installed'; then
        mkdir -p /etc/ringmx && touch /etc/ringmx/purge-spool
        dpkg -P ringmx >/dev/null 2>&1 || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
    echo "package: $*" >&2
    if [ -s "$TMP/log" ]; then
        echo "--- server log" >&2
        cat "$TMP/log" >&2
    fi
    exit 1
}

# A failure that does not stop the later steps (remove, purge, reinstall still run and are
# checked); the script fails at the end, listing them.
PROBLEMS=()
problem() {
    echo "package: FAILED: $*" >&2
    PROBLEMS+=("$1")
}

if dpkg-query -W -f='${Status}' ringmx 2>/dev/null | grep -q 'installed\|config-files'; then
    # The cleanup would purge it: never touch an installation this script did not make.
    trap - EXIT
    echo "package: a ringmx package is installed here; this test installs and purges its own" >&2
    exit 1
fi
getent passwd ringmx >/dev/null && { trap - EXIT; fail "a user ringmx exists already"; }
[ -e "$SPOOL" ] && { trap - EXIT; fail "$SPOOL exists already"; }

# --- tools ------------------------------------------------------------------------------
T0=$(date +%s)
need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
if [ "${#need[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked
step "tools" "$T0"

shellcheck packaging/debian/postinst packaging/debian/postrm .ci/package.sh \
    || fail "shellcheck: the maintainer scripts or this script"

# --- the .deb ---------------------------------------------------------------------------
T0=$(date +%s)
rm -rf target/debian
cargo deb
# As .ci/test does: write the build's dirty pages back before the spool fsyncs.
sync
DEB=$(ls target/debian/ringmx_*.deb)
step "cargo deb" "$T0"

# --- the unit ---------------------------------------------------------------------------
# systemd-analyze verify wants ExecStart's binary to exist, which /usr/bin/ringmx does not
# before the install: verify a copy pointing at the binary just built (and the installed
# unit itself after the install).
T0=$(date +%s)
BUILT=$(cargo metadata --format-version 1 --no-deps | python3 -c \
    'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release/ringmx
[ -x "$BUILT" ] || fail "no built binary at $BUILT"
sed "s|/usr/bin/ringmx|$BUILT|g" tuning/ringmx.service >"$TMP/ringmx.service"
systemd-analyze verify "$TMP/ringmx.service" || fail "systemd-analyze verify tuning/ringmx.service"
# The exposure score, 0 (locked down) to 10; a change that loosens the sandbox past 3 fails.
systemd-analyze security --offline=yes "$TMP/ringmx.service" >"$TMP/security" 2>&1 \
    || { cat "$TMP/security" >&2; fail "systemd-analyze security"; }
SCORE=$(sed -n 's/.*Overall exposure level for ringmx.service: \([0-9.]*\).*/\1/p' "$TMP/security")
[ -n "$SCORE" ] || { cat "$TMP/security" >&2; fail "no exposure score"; }
awk -v s="$SCORE" 'BEGIN { exit !(s <= 3.0) }' || fail "exposure score $SCORE, above 3.0"
step "unit checks" "$T0"

# --- install ----------------------------------------------------------------------------
T0=$(date +%s)
# No systemd here (PID 1 is not systemd): the scripts must not try to start anything.
dpkg -i "$DEB" >"$TMP/dpkg.log" 2>&1 || { cat "$TMP/dpkg.log" >&2; fail "dpkg -i"; }
[ -x /usr/bin/ringmx ] || fail "no /usr/bin/ringmx"
cmp -s "$UNIT" tuning/ringmx.service || fail "$UNIT is not tuning/ringmx.service"
systemd-analyze verify "$UNIT" || fail "systemd-analyze verify $UNIT"
cmp -s "$CONF" packaging/ringmx.toml || fail "$CONF is not packaging/ringmx.toml"
dpkg-query -W -f='${Conffiles}' ringmx | grep -q "^ $CONF " || fail "$CONF is not a conffile"
IFS=: read -r _ _ RUID RGID _ RHOME RSHELL < <(getent passwd ringmx) || fail "no user ringmx"
[ "$RUID" -lt 1000 ] || fail "ringmx has uid $RUID, not a system uid"
[ "$(getent group ringmx | cut -d: -f3)" = "$RGID" ] || fail "ringmx's primary group is not ringmx"
[ "$RHOME" = "$SPOOL" ] || fail "ringmx's home is $RHOME"
case "$RSHELL" in */nologin | */false) ;; *) fail "ringmx has the shell $RSHELL" ;; esac
[ "$(stat -c '%U:%G %a' "$SPOOL")" = "ringmx:ringmx 750" ] \
    || fail "$SPOOL is $(stat -c '%U:%G %a' "$SPOOL"), not ringmx:ringmx 750"
# The postinst again (a retried configure): nothing changes, nothing fails.
DPKG_MAINTSCRIPT_PACKAGE=ringmx DPKG_MAINTSCRIPT_NAME=postinst \
    /var/lib/dpkg/info/ringmx.postinst configure "$(dpkg-query -W -f='${Version}' ringmx)" >/dev/null \
    || fail "the postinst run a second time failed"
[ "$(stat -c '%U:%G %a' "$SPOOL")" = "ringmx:ringmx 750" ] || fail "second postinst changed $SPOOL"
step "install" "$T0"

# --- ringmx check -----------------------------------------------------------------------
T0=$(date +%s)
if ! /usr/bin/ringmx check --help >/dev/null 2>&1; then
    problem "ringmx check: no such subcommand in this build (it lands with the lead's check)"
elif ! /usr/bin/ringmx check --config "$CONF" >"$TMP/check" 2>&1; then
    cat "$TMP/check" >&2
    problem "ringmx check --config $CONF exited non-zero"
else
    for want in 'spool = "/var/spool/ringmx"' 'user = "ringmx"'; do
        grep -qF "$want" "$TMP/check" || problem "ringmx check does not print $want"
    done
fi
step "ringmx check" "$T0"

# --- the installed server, by hand ------------------------------------------------------
# As the unit starts it: root, but only the unit's bounding set (setpriv), no new
# privileges, the unit's UMask. It must bind the port below 1024, then run as ringmx (the
# file's `user`), and what it writes in the spool must be ringmx's.
T0=$(date +%s)
ss -ltnH "sport = :$PORT" | grep -q . && fail "port $PORT is in use here (PACKAGE_PORT)"
start() { # how: "unit" (the unit's capabilities) or "root" (all of root's)
    local pre=()
    [ "$1" = unit ] && pre=(setpriv "--bounding-set=-all,$CAPS" --inh-caps=-all --no-new-privs)
    : >"$TMP/log"
    (umask 0027 && exec "${pre[@]}" /usr/bin/ringmx serve --config "$CONF" \
        --listen "127.0.0.1:$PORT" --workers 1 --hostname mx.test) 2>"$TMP/log" &
    PID=$!
    for _ in $(seq 100); do
        grep -q 'ringmx started' "$TMP/log" && return 0
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    return 1
}
stop() {
    kill -TERM "$PID"
    local status=0
    for _ in $(seq 350); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$PID" 2>/dev/null; then
        kill -KILL "$PID"
        problem "the server did not stop within 35 s of SIGTERM"
    fi
    wait "$PID" || status=$?
    PID=
    [ "$status" -eq 0 ] || problem "the server exited with status $status after SIGTERM"
}
SERVED=
if start unit; then
    SERVED=unit
else
    echo "--- server log (the unit's capabilities: $CAPS)" >&2
    cat "$TMP/log" >&2
    problem "the server did not start as root with only the unit's capabilities ($CAPS): it must drop to ringmx before it opens $SPOOL (ringmx's, 0750; root has no CAP_DAC_OVERRIDE there)"
    if [ -n "$PID" ]; then kill -KILL "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi
    # Go on with all of root's capabilities, to check the rest.
    if start root; then SERVED=root; else problem "the server did not start as root either"; fi
fi
if [ -n "$SERVED" ]; then
    RUNS_AS=$(ps -o user= -p "$PID" | tr -d ' ')
    [ "$RUNS_AS" = ringmx ] \
        || problem "the server runs as $RUNS_AS, not ringmx (started as root with user = \"ringmx\": the privilege drop)"
    printf 'Subject: package test\r\n\r\ninstalled ringmx\r\n' >"$TMP/msg.eml"
    if timeout 30 swaks --server 127.0.0.1 --port "$PORT" --timeout 20 --helo ci.example \
        --from sender@ci.example --to rcpt@ci.example --data "@$TMP/msg.eml" >"$TMP/swaks.log" 2>&1 \
        && grep -q '<-  250 2.0.0 Ok: queued as' "$TMP/swaks.log"; then
        NOT_OURS=$(find "$SPOOL" ! -user ringmx -printf '%p %u\n')
        [ -z "$NOT_OURS" ] || problem "spool files not ringmx's: $(echo "$NOT_OURS" | tr '\n' ' ')"
        [ -n "$(find "$SPOOL" -type f -newer "$TMP/msg.eml")" ] || problem "nothing written in $SPOOL"
    else
        cat "$TMP/swaks.log" >&2
        problem "swaks got no 250 from the installed server"
    fi
    stop
fi
step "serve as $SERVED" "$T0"

# --- remove: binary and unit gone, configuration, user and spool kept ------------------
T0=$(date +%s)
dpkg -r ringmx >"$TMP/dpkg.log" 2>&1 || { cat "$TMP/dpkg.log" >&2; fail "dpkg -r"; }
[ ! -e /usr/bin/ringmx ] || fail "dpkg -r left /usr/bin/ringmx"
[ ! -e "$UNIT" ] || fail "dpkg -r left $UNIT"
[ -f "$CONF" ] || fail "dpkg -r removed the conffile $CONF"
dpkg-query -W -f='${Status}' ringmx | grep -q config-files || fail "not in config-files state"
getent passwd ringmx >/dev/null || fail "dpkg -r removed the user"
[ -d "$SPOOL" ] || fail "dpkg -r removed $SPOOL"

# --- purge: configuration, user and group gone, spool kept -----------------------------
dpkg -P ringmx >"$TMP/dpkg.log" 2>&1 || { cat "$TMP/dpkg.log" >&2; fail "dpkg -P"; }
[ ! -e "$CONF" ] || fail "dpkg -P left $CONF"
[ ! -e /etc/ringmx ] || fail "dpkg -P left /etc/ringmx"
! getent passwd ringmx >/dev/null || fail "dpkg -P left the user ringmx"
! getent group ringmx >/dev/null || fail "dpkg -P left the group ringmx"
[ -d "$SPOOL" ] || fail "dpkg -P removed $SPOOL without the purge-spool switch"
grep -q "kept" "$TMP/dpkg.log" || fail "dpkg -P did not say the spool was kept"
step "remove, purge" "$T0"

# --- again: the kept spool is handed to the new user; purge with the switch removes it --
T0=$(date +%s)
# The kept spool belongs to a uid that no longer has a name; the new ringmx user may get
# that uid again or another one. Make it another one (and make the files written above by a
# server that ran as root like the rest), so the postinst must hand it over.
chown -R 64999:64999 "$SPOOL"
dpkg -i "$DEB" >"$TMP/dpkg.log" 2>&1 || { cat "$TMP/dpkg.log" >&2; fail "second dpkg -i"; }
[ -z "$(find "$SPOOL" ! -user ringmx)" ] || fail "the kept spool is not the new ringmx user's"
[ "$(stat -c '%U:%G %a' "$SPOOL")" = "ringmx:ringmx 750" ] || fail "$SPOOL after reinstall"
touch /etc/ringmx/purge-spool
dpkg -P ringmx >"$TMP/dpkg.log" 2>&1 || { cat "$TMP/dpkg.log" >&2; fail "second dpkg -P"; }
[ ! -e "$SPOOL" ] || fail "dpkg -P with /etc/ringmx/purge-spool left $SPOOL"
[ ! -e /etc/ringmx ] || fail "dpkg -P with the switch left /etc/ringmx"
! getent passwd ringmx >/dev/null || fail "second dpkg -P left the user ringmx"
step "reinstall, purge with the switch" "$T0"

echo "package: timing: $(printf '%s, ' "${TIMES[@]}")total $(since "$BEGAN") s; unit exposure $SCORE"
if [ "${#PROBLEMS[@]}" -gt 0 ]; then
    echo "package: failed: $(printf '%s; ' "${PROBLEMS[@]}")" >&2
    exit 1
fi
echo "package: passed (unit verified, exposure $SCORE; installed, served as ringmx with the unit's capabilities, removed, purged with and without the spool)"
