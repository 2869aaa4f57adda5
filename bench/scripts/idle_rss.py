#!/usr/bin/env python3
"""Opens N idle SMTP sessions to a server, reads each greeting, and prints the server's RSS growth per session.

Usage: idle_rss.py PORT SERVER_PID N [FIRST_SOURCE_IP] [SOURCE_IPS]
RSS is read after the first WARM (1,000) sessions and after all N, and the growth between the
two divided by N - WARM, so one-time costs (allocator arenas, first buffers) do not count.
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
    warm = min(1000, n // 2)
    socks = []
    deadline = time.monotonic() + 120

    def open_until(count):
        while len(socks) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((str(first + len(socks) % sources), 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            # Every session has been accepted and greeted before RSS is read.
            greeting = s.recv(512)
            if not greeting.startswith(b"220 "):
                raise SystemExit(f"unexpected greeting {greeting!r}")
            socks.append(s)
            if time.monotonic() > deadline:
                raise SystemExit(f"took too long after {len(socks)} connections")
        time.sleep(1)
        return rss_kib(pid)

    start = rss_kib(pid)
    before = open_until(warm)
    after = open_until(n)
    print(f"sessions={n} rss_start_kib={start} rss_at_{warm}_kib={before} rss_at_{n}_kib={after} "
          f"per_session_bytes={(after - before) * 1024 / (n - warm):.0f}")
    for s in socks:
        s.close()


main()
