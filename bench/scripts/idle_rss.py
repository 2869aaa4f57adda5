#!/usr/bin/env python3
"""Opens N idle SMTP sessions to a server, reads each greeting, and prints the server's RSS growth per session.

Usage: idle_rss.py PORT SERVER_PID N [FIRST_SOURCE_IP] [SOURCE_IPS]
Connections are spread over SOURCE_IPS loopback addresses starting at FIRST_SOURCE_IP
(default 127.0.0.2, 4 addresses), so no source runs out of ephemeral ports. The caller raises
the descriptor limit (ulimit -n) first; everything is closed before exit.
"""
import ipaddress
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    first = ipaddress.IPv4Address(sys.argv[4] if len(sys.argv) > 4 else "127.0.0.2")
    sources = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    before = rss_kib(pid)
    socks = []
    deadline = time.monotonic() + 120
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((str(first + i % sources), 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        socks.append(s)
        if time.monotonic() > deadline:
            raise SystemExit(f"took too long after {i} connections")
    # Every session has been accepted and greeted before RSS is read.
    for s in socks:
        greeting = s.recv(512)
        if not greeting.startswith(b"220 "):
            raise SystemExit(f"unexpected greeting {greeting!r}")
    time.sleep(1)
    after = rss_kib(pid)
    print(f"sessions={n} rss_before_kib={before} rss_after_kib={after} "
          f"per_session_bytes={(after - before) * 1024 / n:.0f}")
    for s in socks:
        s.close()


main()
