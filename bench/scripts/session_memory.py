#!/usr/bin/env python3
"""Holds SMTP sessions open in one state at several levels and fits the server's memory per session.

Usage: session_memory.py --state idle|data|tls-idle|tls-data [--levels 1000,5000,10000]
                         [--tls-ca FILE] [--body OCTETS] [--first 127.0.0.2] [--sources 4]
                         [--label TEXT] [--json FILE] PORT SERVER_PID

States, each session held by this client after:
  idle      the greeting and EHLO;
  data      EHLO, MAIL, RCPT, DATA 354 and --body octets of the message (default 4096),
            without its end: a session in the middle of a body;
  tls-idle  EHLO, STARTTLS, the handshake, EHLO inside TLS (RFC 3207 4.2);
  tls-data  tls-idle, then the data state's transaction inside TLS.
Before the first level and once each level is open (after a 2 s settle), it reads the
server's VmRSS and RssAnon (/proc/PID/status) and Private_Dirty (/proc/PID/smaps_rollup),
and the kernel's Slab and SUnreclaim (/proc/meminfo) and TCP socket buffer pages
(/proc/net/sockstat). Bytes per session are the least-squares slope over the levels (the
point before them is left out of the fit, so one-time costs such as allocator arenas, the
first pooled buffers and io_uring's provided buffers do not count), and, for comparison,
(last - before) / last. The kernel figures cover both ends of each connection (client and
server sockets live in the same kernel over loopback). The caller raises the descriptor
limit (ulimit -n) and makes the server's data limits allow a held body (min_data_rate = 0);
everything is closed before exit. --json appends one JSON object per run to FILE.
"""
import argparse
import ipaddress
import json
import select
import socket
import ssl
import time

SETTLE_S = 2.0


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} for {pid}")


def rollup_kib(pid, key):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in smaps_rollup of {pid}")


def meminfo_kib(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/meminfo")


def sockstat_tcp():
    """TCP sockets in use and their buffer memory in pages (/proc/net/sockstat)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                w = line.split()[1:]
                d = dict(zip(w[::2], (int(x) for x in w[1::2])))
                return d["inuse"], d["mem"]
    raise RuntimeError("no TCP line in /proc/net/sockstat")


def sample(pid, sessions):
    inuse, mem_pages = sockstat_tcp()
    return {
        "sessions": sessions,
        "vmrss_kib": status_kib(pid, "VmRSS"),
        "rss_anon_kib": status_kib(pid, "RssAnon"),
        "private_dirty_kib": rollup_kib(pid, "Private_Dirty"),
        "slab_kib": meminfo_kib("Slab"),
        "sunreclaim_kib": meminfo_kib("SUnreclaim"),
        "tcp_inuse": inuse,
        "tcp_mem_pages": mem_pages,
    }


def slope(points, key, factor=1024):
    """Least-squares bytes per session of `key` (KiB) over the points."""
    xs = [p["sessions"] for p in points]
    ys = [p[key] * factor for p in points]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def reply(s, code):
    """Reads one (possibly multiline) reply; exits unless it has the expected code."""
    buf = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit(f"closed while waiting for {code}, after {buf!r}")
        buf += chunk
        lines = buf.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            if not buf.startswith(code.encode()):
                raise SystemExit(f"expected {code}, got {buf!r}")
            return buf


def body_prefix(octets, n):
    """A message's header and lines, `octets` long, without the end of data."""
    head = (f"From: <sender@memory.example>\r\nTo: <user0@example.com>\r\n"
            f"Subject: held message {n}\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    out = bytearray(head)
    while len(out) < octets:
        out += line
    return bytes(out[:octets])


def main():
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("--state", required=True, choices=["idle", "data", "tls-idle", "tls-data"])
    ap.add_argument("--levels", default="1000,5000,10000")
    ap.add_argument("--tls-ca")
    ap.add_argument("--body", type=int, default=4096)
    ap.add_argument("--first", default="127.0.0.2")
    ap.add_argument("--sources", type=int, default=4)
    ap.add_argument("--label", default="")
    ap.add_argument("--json")
    ap.add_argument("port", type=int)
    ap.add_argument("pid", type=int)
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    first = ipaddress.IPv4Address(a.first)
    tls = a.state.startswith("tls")
    data = a.state.endswith("data")
    ctx = None
    if tls:
        if a.tls_ca:
            ctx = ssl.create_default_context(cafile=a.tls_ca)
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    socks = []
    versions = {}
    deadline = time.monotonic() + 600

    def open_one():
        n = len(socks)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((str(first + n % a.sources), 0))
        s.settimeout(20)
        s.connect(("127.0.0.1", a.port))
        reply(s, "220")
        s.sendall(b"EHLO client.example\r\n")
        reply(s, "250")
        if tls:
            s.sendall(b"STARTTLS\r\n")
            reply(s, "220")
            s = ctx.wrap_socket(s, server_hostname="localhost")
            s.sendall(b"EHLO client.example\r\n")
            reply(s, "250")
            versions[s.version()] = versions.get(s.version(), 0) + 1
        if data:
            s.sendall(b"MAIL FROM:<sender@memory.example>\r\n")
            reply(s, "250")
            s.sendall(f"RCPT TO:<user{n % 1000}@example.com>\r\n".encode())
            reply(s, "250")
            s.sendall(b"DATA\r\n")
            reply(s, "354")
            s.sendall(body_prefix(a.body, n))
        return s

    points = [sample(a.pid, 0)]
    t0 = time.monotonic()
    for level in levels:
        while len(socks) < level:
            socks.append(open_one())
            if time.monotonic() > deadline:
                raise SystemExit(f"took too long after {len(socks)} connections")
        time.sleep(SETTLE_S)
        points.append(sample(a.pid, level))
    took = time.monotonic() - t0
    # Every session must still be open: a server that closed some (a timeout, a limit) would
    # make the figure per session wrong. A readable socket here means EOF or a reply.
    poll = select.poll()
    for s in socks:
        poll.register(s, select.POLLIN)
    readable = poll.poll(0)
    if readable:
        raise SystemExit(f"{len(readable)} of {len(socks)} sessions got data or closed while held")
    fit = points[1:]
    result = {
        "label": a.label,
        "state": a.state,
        "body_octets": a.body if data else 0,
        "levels": levels,
        "open_s": round(took, 1),
        "versions": versions,
        "points": points,
        "per_session_bytes": {
            "vmrss": slope(fit, "vmrss_kib"),
            "rss_anon": slope(fit, "rss_anon_kib"),
            "private_dirty": slope(fit, "private_dirty_kib"),
            "vmrss_from_start": (points[-1]["vmrss_kib"] - points[0]["vmrss_kib"]) * 1024 / levels[-1],
            "kernel_slab_both_ends": slope(fit, "slab_kib"),
            "kernel_tcp_buffers_both_ends": slope(fit, "tcp_mem_pages", factor=4096),
        },
    }
    p = result["per_session_bytes"]
    print(f"{a.label} state={a.state} levels={a.levels} "
          + " ".join(f"rss@{q['sessions']}={q['vmrss_kib']}KiB" for q in points)
          + f" per_session: vmrss={p['vmrss']:.0f} private_dirty={p['private_dirty']:.0f}"
          f" from_start={p['vmrss_from_start']:.0f} kernel_slab(both ends)={p['kernel_slab_both_ends']:.0f}"
          f" open_s={took:.1f}" + (f" versions={versions}" if versions else ""))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    for s in socks:
        s.close()


main()
