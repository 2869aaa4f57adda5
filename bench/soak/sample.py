"""What a run samples once a second while it lasts: ringmx's metrics, its RSS, its descriptors by
kind and what it read.
"""

import os
import re
import threading
import urllib.request

from common import now


METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


WANTED = ("ringmx_queue_messages", "ringmx_sessions_active", "ringmx_replies_total",
          "ringmx_config_reloads_total", "ringmx_messages_accepted_total",
          "ringmx_delivery_recipients_total", "ringmx_connections_total",
          "ringmx_spool_commit_failures_total", "ringmx_accept_errors_total",
          "ringmx_messages_rejected_total", "ringmx_sessions_closed_total")


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=3) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = METRIC_RE.match(line)
        if m and m.group(1).startswith(WANTED):
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def fd_kinds(pid):
    kinds = {}
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return None
    for n in names:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, n))
        except OSError:
            continue
        if target.startswith("socket:"):
            k = "socket"
        elif target.startswith("anon_inode:"):
            k = target[len("anon_inode:"):].strip("[]")
        elif target.startswith("pipe:"):
            k = "pipe"
        elif target.endswith(".seg"):
            k = "segment"
        else:
            k = "file"
        kinds[k] = kinds.get(k, 0) + 1
    return kinds


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def read_chars(pid):
    """Octets the process has read with read()/pread() and the like (/proc/PID/io rchar): the
    spool's reads by delivery and the delivery sockets' replies (the workers receive through
    io_uring, which this does not count)."""
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Sampler(threading.Thread):
    """Once a second: the server's RSS and descriptor count, and its /metrics."""

    def __init__(self, run):
        super().__init__(daemon=True)
        self.soak = run
        self.rows = []  # dicts
        self.halt = threading.Event()

    def run(self):
        nxt = now()
        while not self.halt.is_set():
            pid = self.soak.server.pid
            row = {"t": round(self.soak.t(), 3), "pid": pid}
            if pid:
                row["rss_kib"] = rss_kib(pid)
                row["rchar"] = read_chars(pid)
                kinds = fd_kinds(pid)
                row["fds"] = sum(kinds.values()) if kinds else None
            loaded = self.soak.server.queue_loaded()
            try:
                row["metrics"] = scrape(self.soak.ports["metrics"])
                if not loaded:
                    row["metrics"].pop("ringmx_queue_messages", None)
            except Exception:  # noqa: BLE001 (a dead or restarting server is a sample too)
                row["metrics"] = None
            self.rows.append(row)
            nxt += 1.0
            self.halt.wait(max(0.0, nxt - now()))
