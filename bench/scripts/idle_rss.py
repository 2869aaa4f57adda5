#!/usr/bin/env python3
"""Opens N idle SMTP sessions to a server, reads each greeting, and prints the server's RSS growth per session.

Usage: idle_rss.py [--ehlo] [--tls starttls|implicit] [--tls-ca FILE] [--json FILE]
                   PORT SERVER_PID N [FIRST_SOURCE_IP] [SOURCE_IPS]
RSS is read after the first WARM (1,000) sessions and after all N, and the growth between the
two divided by N - WARM, so one-time costs (allocator arenas, first buffers) do not count.
Connections are spread over SOURCE_IPS loopback addresses starting at FIRST_SOURCE_IP
(default 127.0.0.2, 4 addresses), so no source runs out of ephemeral ports. The caller raises
the descriptor limit (ulimit -n) first; everything is closed before exit.
--ehlo sends EHLO after the greeting and waits for its reply. --tls starttls: EHLO, STARTTLS,
the handshake, EHLO inside TLS; --tls implicit: the handshake, the greeting and EHLO inside
TLS; either way each session then stays idle with its TLS state. The certificate is checked
against --tls-ca (for the name localhost), else not at all. --json appends the figures to FILE
as one JSON line.
"""
import argparse
import ipaddress
import json
import socket
import ssl
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def reply(s, code):
    """Reads one (possibly multiline) reply; exits unless it has the expected code."""
    buf = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit(f"closed while waiting for {code}, after {buf!r}")
        buf += chunk
        lines = buf.split(b"\r\n")
        # The last complete line (lines[-1] is what follows the last CRLF).
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            if not buf.startswith(code.encode()):
                raise SystemExit(f"expected {code}, got {buf!r}")
            return buf


def main():
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("--ehlo", action="store_true")
    ap.add_argument("--tls", choices=["starttls", "implicit"])
    ap.add_argument("--tls-ca")
    ap.add_argument("--json")
    ap.add_argument("port", type=int)
    ap.add_argument("pid", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("first", nargs="?", default="127.0.0.2")
    ap.add_argument("sources", nargs="?", type=int, default=4)
    a = ap.parse_args()
    port, pid, n = a.port, a.pid, a.n
    first = ipaddress.IPv4Address(a.first)
    sources = a.sources
    ctx = None
    if a.tls:
        if a.tls_ca:
            ctx = ssl.create_default_context(cafile=a.tls_ca)
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    warm = min(1000, n // 2)
    socks = []
    deadline = time.monotonic() + 300
    versions = {}

    def open_one():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((str(first + len(socks) % sources), 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        if a.tls == "implicit":
            s = ctx.wrap_socket(s, server_hostname="localhost")
        # Every session has been accepted and greeted before RSS is read.
        reply(s, "220")
        if a.ehlo or a.tls:
            s.sendall(b"EHLO client.example\r\n")
            reply(s, "250")
        if a.tls == "starttls":
            s.sendall(b"STARTTLS\r\n")
            reply(s, "220")
            s = ctx.wrap_socket(s, server_hostname="localhost")
            s.sendall(b"EHLO client.example\r\n")
            reply(s, "250")
        if a.tls:
            versions[s.version()] = versions.get(s.version(), 0) + 1
        return s

    def open_until(count):
        while len(socks) < count:
            socks.append(open_one())
            if time.monotonic() > deadline:
                raise SystemExit(f"took too long after {len(socks)} connections")
        time.sleep(1)
        return rss_kib(pid)

    start = rss_kib(pid)
    t0 = time.monotonic()
    before = open_until(warm)
    after = open_until(n)
    took = time.monotonic() - t0
    per = (after - before) * 1024 / (n - warm)
    mode = a.tls or ("plaintext+ehlo" if a.ehlo else "plaintext")
    print(f"sessions={n} rss_start_kib={start} rss_at_{warm}_kib={before} rss_at_{n}_kib={after} "
          f"per_session_bytes={per:.0f}"
          + ("" if mode == "plaintext" else
             f" mode={mode} per_session_from_start_bytes={(after - start) * 1024 / n:.0f}"
             f" open_s={took:.1f}" + (f" versions={versions}" if versions else "")))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps({
                "mode": mode, "sessions": n, "warm": warm, "rss_start_kib": start,
                "rss_warm_kib": before, "rss_end_kib": after, "per_session_bytes": per,
                "open_s": took, "versions": versions,
            }) + "\n")
    for s in socks:
        s.close()


main()
