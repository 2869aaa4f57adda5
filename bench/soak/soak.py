#!/usr/bin/env python3
"""Soak and fault runs of ringmx under an MX's traffic mix, with the pass criteria checked.

One run: ringmx (2 workers, a durable `log` spool, a recipients table, relay_networks that
hold none of the clients, metrics on, delivery to a real downstream) behind a real HAProxy
(send-proxy-v2) for half of the load, the other half direct; the downstream is Postfix's
smtp-sink, stopped for 10 s of every 30 (scaled with --short) and started again; ringmx-loadgen
processes in closed loop. Optionally one fault during the load (--fault). Then the load
drains (every session closed, the delivery queue empty) and the script checks:

  - mismatches: 0 in every class whose replies are defined (VARYING below are reported only);
  - delivery: every message a client was answered 250 for (acked.txt of the load generator;
    ringmx's session log lines where the load generator has no acked.txt) reached the
    downstream, each of its recipients exactly once (smtp-sink's dump, keyed by the queue id
    in ringmx's Received header); a second copy counts as a duplicate only when a crash
    explains it (ringmx killed, or the downstream killed with the message in flight);
  - RSS flat after the warm-up (see rss_verdict for the definition and why);
  - no descriptor leak: /proc/PID/fd after the drain against before the load (fd_verdict).

Faults: spool_full (the spool's tmpfs filled by a file, then freed), kill9 (SIGKILL at seeded
random moments, restarted at once), downstream_4xx (smtp-sink answering 4xx to every RCPT),
fd_exhaustion (prlimit of the running server's RLIMIT_NOFILE, then back), sighup (SIGHUP every
second, alternately with a good and a broken configuration). Each reports what the clients saw,
what was lost, and the recovery time measured from the fault's end.

Everything is on 127.0.0.0/8, ports from --port-base (23000 full, 23500 short), bounded in
time, and every process this script starts is killed on the way out, whatever happened.

Usage: soak.py [--short] [--fault none|spool_full|kill9|downstream_4xx|fd_exhaustion|sighup|all]
               [--out DIR] [--ringmx BIN] [--loadgen BIN] [--seed N]
Needs root (smtp-sink -u nobody, the tmpfs mount of spool_full), haproxy, smtp-sink, openssl,
prlimit. Exit status 0 when every run passed.
"""

import argparse
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chart  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FAULTS = ["none", "spool_full", "kill9", "downstream_4xx", "fd_exhaustion", "sighup"]
# Classes whose replies are defined to vary: a non-SMTP opener may get one 5xx or nothing, a
# slowloris connection is closed with or without a 421, at a moment the server's timers pick.
VARYING = {"nonsmtp", "slowloris"}
# The descriptor limit of every process here: the machine's hard limit is 20,000.
NOFILE = 20000
WORKERS = 2
# ringmx's delivery connections to one destination (destination_concurrency's default): the
# messages that can be in flight to the downstream at once.
DEST_CONCURRENCY = 20


@dataclass
class Profile:
    name: str
    connections: int
    duration: int  # s of load
    warmup: int  # s after which RSS must stay flat
    steady: int  # s from which the clients' error rate before the fault is the baseline
    flap_period: int  # the downstream is down for [flap_down) of every flap_period s
    flap_down: tuple
    fault: tuple  # (start, end), s from the load's start
    kills: int  # kill -9 count in the kill9 fault
    drain_timeout: int  # s the queue gets to empty after the load
    msg_size: str
    rcpts: str
    port_base: int
    # Slowloris: how long a command may take (command_timeout_secs), and the grace before
    # min_data_rate applies (min_data_rate_grace_secs; None: its default, 30 s).
    command_timeout: int = 30
    data_grace: int = None


FULL = Profile("full", 10000, 60, 10, 10, 30, (20, 30), (30, 45), 3, 600, "1k:2m", "1:5", 23000)
# CI: the same machinery in about a minute per run on 2 cores; smaller messages (median 16 KiB
# instead of 45 KiB) so that the queue drains within the bound.
SHORT = Profile("short", 1000, 15, 5, 2, 15, (5, 10), (6, 11), 2, 90, "1k:256k", "1:5", 23500,
                command_timeout=10, data_grace=10)


def now():
    return time.monotonic()


def parse_size(text):
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower()
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


def log(*a):
    print("soak:", *a, flush=True)


# --- the load generator's interface, as the binary given has it ------------------------------


def loadgen_features(loadgen):
    """What this ringmx-loadgen offers: its classes (from the error naming the known ones) and
    the flags of its --help. The harness uses the new classes and flags when present."""
    help_text = subprocess.run([loadgen, "--help"], capture_output=True, text=True, timeout=30).stdout
    probe = subprocess.run(
        [loadgen, "--target", "127.0.0.1:1", "--mix", "soak-probe=1", "--sessions", "1"],
        capture_output=True, text=True, timeout=30)
    m = re.search(r"known: ([^)]*)\)", probe.stderr)
    classes = {c.strip() for c in m.group(1).split(",")} if m else {"valid"}
    return {
        "classes": classes,
        "proxy": "--proxy" in help_text,
        "proxy_sources": "--proxy-sources" in help_text,
        "rcpt_domain": "--rcpt-domain" in help_text,
        "size_dist": "--msg-size-dist" in help_text,
    }


@dataclass
class Stream:
    """One ringmx-loadgen process."""
    name: str
    target: str
    connections: int
    mix: str
    source_ips: str
    extra: list


def split_connections(total, fitted):
    """(direct, through HAProxy, HAProxy's server maxconn or None). Half and half when ringmx
    fits them all. When its descriptor budget fits fewer (max_connections lowered), ringmx
    gets as many direct connections as HAProxy may pass on, together 90% of what it fits (a
    closed loop's next connection can arrive before ringmx has counted the last one closed,
    and a refusal is a 421 to the client), and HAProxy holds the rest of its clients in its
    queue: the clients still have `total` connections open, and ringmx's load is half
    through HAProxy."""
    if fitted is None or fitted >= total + total // 10:
        return total - total // 2, total // 2, None
    each = int(fitted * 0.9) // 2
    return each, total - each, each


def plan_streams(features, split, ports, ca):
    """Direct and through HAProxy. With the load generator's tls class and --proxy, each is
    one process with the whole mix and the direct one sends PROXY v2 headers of outside clients
    to the PROXY listener; without them, STARTTLS is two more processes (--tls starttls, a fifth
    of each side's connections) and the direct side goes to a plain listener (its clients,
    127.0.2.x, are outside relay_networks all the same)."""
    full_mix = [("valid", 60), ("tls", 20), ("typo", 5), ("unknown_user", 5), ("relay", 5),
                ("nonsmtp", 5), ("slowloris", 5)]
    have = features["classes"]
    direct_n, ha_n, _ = split
    ha = "127.0.0.1:%d" % ports["haproxy"]
    common = []
    if features["size_dist"]:
        common += ["--msg-size-dist", "lognormal"]
    if features["rcpt_domain"]:
        common += ["--rcpt-domain", "example.com"]
    if "tls" in have:
        mix = ",".join("%s=%d" % (c, w) for c, w in full_mix if c in have)
        tls = ["--tls-ca", ca]
        streams = [Stream("haproxy", ha, ha_n, mix, "127.0.1.1-127.0.1.250", common + tls)]
        if features["proxy"]:
            direct = ["--proxy", "v2"]
            if features["proxy_sources"]:
                # IPv4 /24s and an IPv6 /48: a /64 is one client to ringmx (client_ipv6_prefix),
                # so the v6 share must spread over many /64s to stay under the per-client limit.
                direct += ["--proxy-sources",
                           "192.0.2.0/24,198.51.100.0/24,203.0.113.0/24,2001:db8::/48"]
            streams.append(Stream("direct", "127.0.0.1:%d" % ports["proxy"], direct_n, mix,
                                  "127.0.2.1-127.0.2.250", common + tls + direct))
        else:
            streams.append(Stream("direct", "127.0.0.1:%d" % ports["plain"], direct_n, mix,
                                  "127.0.2.1-127.0.2.250", common + tls))
        return streams
    plain = ",".join("%s=%d" % (c, w) for c, w in full_mix if c in have and c != "tls")
    starttls = ["--tls", "starttls", "--tls-ca", ca]
    return [
        Stream("haproxy", ha, ha_n - ha_n // 5, plain, "127.0.1.1-127.0.1.250", common),
        Stream("direct", "127.0.0.1:%d" % ports["plain"], direct_n - direct_n // 5, plain,
               "127.0.2.1-127.0.2.250", common),
        Stream("haproxy-tls", ha, ha_n // 5, "valid=1", "127.0.3.1-127.0.3.250", common + starttls),
        Stream("direct-tls", "127.0.0.1:%d" % ports["plain"], direct_n // 5, "valid=1",
               "127.0.4.1-127.0.4.250", common + starttls),
    ]


# --- processes ---------------------------------------------------------------------------------


def limit_nofile():
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


class Procs:
    """Every process started, each in its own process group, killed at the end."""

    def __init__(self, out):
        self.out = out
        self.all = []

    def spawn(self, name, argv, **kw):
        logf = open(os.path.join(self.out, name + ".log"), "ab")
        p = subprocess.Popen(argv, stdout=kw.pop("stdout", logf), stderr=logf,
                             stdin=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=limit_nofile, **kw)
        p.soak_name = name
        self.all.append(p)
        return p

    @staticmethod
    def stop(p, sig=signal.SIGTERM, timeout=30.0):
        """Signal the process (its group for SIGKILL) and wait; SIGKILL if it does not exit."""
        if p.poll() is None:
            try:
                if sig == signal.SIGKILL:
                    os.killpg(p.pid, signal.SIGKILL)
                else:
                    p.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
        return p.returncode

    def kill_all(self):
        for p in self.all:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.all:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass


def listening(port):
    """Whether 127.0.0.1:PORT is in LISTEN state, as the kernel sees it (no probe connection)."""
    want = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in list(f)[1:])


def wait_for(cond, timeout, what, step=0.1):
    end = now() + timeout
    while now() < end:
        if cond():
            return
        time.sleep(step)
    raise RuntimeError("%s: not within %.0f s" % (what, timeout))


# --- the downstream ----------------------------------------------------------------------------


class Downstream:
    """smtp-sink on ports['sink'], writing its dump into a FIFO that sinkread.py reads. Each
    start is an incarnation (the -S marker says which); stopping is SIGKILL, as an outage is."""

    def __init__(self, run):
        self.run = run
        self.procs = run.procs
        self.port = run.ports["sink"]
        self.dir = run.sinkdir
        self.fifo = os.path.join(self.dir, "dump.fifo")
        self.p = None
        self.mode = "down"
        self.incarnation = 0
        self.events = []  # (t, "up"|"up4xx"|"down", incarnation)
        self.lock = threading.Lock()

    def set(self, mode):
        with self.lock:
            if mode == self.mode:
                return
            if self.p is not None:
                Procs.stop(self.p, signal.SIGKILL)
                self.p = None
                self.events.append((self.run.t(), "down", self.incarnation))
            if mode != "down":
                self.incarnation += 1
                argv = ["smtp-sink", "-u", "nobody", "-h", "sink.soak.test", "-t", "60", "-m", "512",
                        "-S", "\\001SOAK %d\\n" % self.incarnation, "-D", self.fifo]
                if mode == "up4xx":
                    argv += ["-r", "RCPT"]
                argv += ["127.0.0.1:%d" % self.port, "1024"]
                self.p = self.procs.spawn("sink-%d" % self.incarnation, argv)
                wait_for(lambda: listening(self.port) or self.p.poll() is not None, 10, "smtp-sink listening")
                if self.p.poll() is not None:
                    raise RuntimeError("smtp-sink exited with status %s" % self.p.returncode)
                self.events.append((self.run.t(), mode, self.incarnation))
            self.mode = mode


# --- ringmx ------------------------------------------------------------------------------------


class Server:
    def __init__(self, run, bin_path, config):
        self.run = run
        self.bin = bin_path
        self.config = config
        self.p = None
        self.incarnation = 0
        self.fitted = None  # max_connections as lowered to the descriptor limit, if it was
        self.starts = []  # (t, seconds to "ringmx started")
        self.kills = []  # t
        self.loaded = 0  # the incarnation whose delivery queue is known loaded
        self.restarts = []  # after each kill: when it was back, after how many failed starts
        self.failed_starts = []  # (t, the log's reason, the error)
        self.failed_starts_now = 0

    @property
    def pid(self):
        return self.p.pid if self.p is not None and self.p.poll() is None else None

    def log_path(self, n):
        return os.path.join(self.run.out, "ringmx-%d.log" % n)

    def start(self):
        self.incarnation += 1
        name = "ringmx-%d" % self.incarnation
        began = now()
        self.p = self.run.procs.spawn(name, [self.bin, "serve", "--config", self.config])
        path = self.log_path(self.incarnation)

        def started():
            if self.p.poll() is not None:
                raise RuntimeError("ringmx exited with status %s at start; see %s" % (self.p.returncode, path))
            with open(path, "rb") as f:
                return b"ringmx started" in f.read()
        wait_for(started, 120, "ringmx started", step=0.05)
        self.starts.append((self.run.t(), now() - began))
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if "max_connections lowered" in line:
                    m = re.search(r'"lowered":(\d+)', line) or re.search(r"lowered=(\d+)", line)
                    if m:
                        self.fitted = int(m.group(1))

    def queue_loaded(self):
        """Whether this incarnation's delivery queue is loaded from the spool: until then its
        ringmx_queue_messages is 0 whatever the spool holds."""
        if self.loaded == self.incarnation:
            return True
        try:
            with open(self.log_path(self.incarnation), "rb") as f:
                if b'"delivery queue loaded"' in f.read():
                    self.loaded = self.incarnation
                    return True
        except OSError:
            pass
        return False

    def kill9_restart(self):
        """SIGKILL, then a restart at once; a start that fails (the dead process's listeners
        can outlive it for a moment: its io_uring is torn down after it exits) is tried
        again every 0.5 s for 60 s, as a supervisor would, and each failure is recorded."""
        self.kills.append(self.run.t())
        os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(30)
        killed_at = now()
        while True:
            try:
                self.start()
                self.restarts.append({"at_s": round(self.run.t(), 2), "failed_starts": self.failed_starts_now,
                                      "down_s": round(now() - killed_at, 2)})
                self.failed_starts_now = 0
                return
            except RuntimeError as e:
                self.failed_starts_now += 1
                self.failed_starts.append((round(self.run.t(), 2), self.first_error(), str(e)[:200]))
                if now() - killed_at > 60:
                    raise
                time.sleep(0.5)

    def first_error(self):
        """The line of the last incarnation's log that says why it stopped."""
        try:
            with open(self.log_path(self.incarnation), encoding="utf-8", errors="replace") as f:
                lines = [x.strip() for x in f if x.startswith("ringmx:") or '"ERROR"' in x]
            return lines[-1][:300] if lines else None
        except OSError:
            return None

    def stop(self):
        """SIGTERM, 90 s to exit (the systemd unit's TimeoutStopSec), then SIGKILL."""
        began = now()
        rc = Procs.stop(self.p, signal.SIGTERM, timeout=90)
        self.stop_s = round(now() - began, 1)
        return rc


# --- sampling ----------------------------------------------------------------------------------

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


# --- one run -----------------------------------------------------------------------------------


class Run:
    def __init__(self, args, prof, fault, out, features):
        self.args = args
        self.prof = prof
        self.fault = fault
        self.out = out
        self.features = features
        self.t0 = None
        self.procs = Procs(out)
        b = prof.port_base
        self.ports = {"proxy": b + 25, "plain": b + 26, "haproxy": b + 125, "sink": b + 225,
                      "metrics": b + 90}
        self.rng = random.Random(args.seed * 1000 + FAULTS.index(fault))
        self.mounted = None
        self.events = []  # (t, what)
        self.server = None
        self.sink = None
        self.sampler = None
        self.reloads_sent = {"good": 0, "broken": 0}
        self.fault_span = None
        self.load_done = False
        self.queued_after = None

    def t(self):
        return now() - self.t0 if self.t0 is not None else 0.0

    def event(self, what):
        self.events.append((round(self.t(), 3), what))
        log("[%s] %6.1f s %s" % (self.fault, self.t(), what))

    # Setup --------------------------------------------------------------------------------

    def certificates(self):
        d = os.path.join(self.out, "tls")
        os.makedirs(d, exist_ok=True)
        ext = os.path.join(d, "leaf.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
        q = {"check": True, "capture_output": True, "timeout": 60}
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "2", "-subj", "/CN=soak test CA", "-keyout", d + "/ca.key",
                        "-out", d + "/ca.pem"], **q)
        subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-subj", "/CN=localhost", "-keyout", d + "/leaf.key", "-out", d + "/leaf.csr"], **q)
        subprocess.run(["openssl", "x509", "-req", "-in", d + "/leaf.csr", "-CA", d + "/ca.pem", "-CAkey",
                        d + "/ca.key", "-CAcreateserial", "-days", "2", "-extfile", ext, "-out",
                        d + "/leaf.pem"], **q)
        subprocess.run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", d + "/leaf.key", "-out",
                        d + "/leaf.p8"], **q)
        return d

    def config_text(self, variant="good", flip=0):
        """The server's configuration. variant good (flip toggles max_errors 20/19, a live key,
        so that each good reload changes something), or one of the broken ones."""
        c = self.cfg
        lines = [
            'hostname = "mx.soak.test"',
            'listen = [{ address = "127.0.0.1:%d", proxy = true }, "127.0.0.1:%d"]'
            % (self.ports["proxy"], self.ports["plain"]),
            "workers = %d" % WORKERS,
            'spool = "%s"' % c["spool"],
            'spool_format = "log"',
            'domains = ["example.com"]',
            'recipients = "%s"' % (c["recipients"] if variant != "missing_recipients"
                                   else c["recipients"] + ".missing"),
            "relay_networks = []",
            'proxy_trusted = ["127.0.0.0/8"]',
            'metrics_listen = "127.0.0.1:%d"' % self.ports["metrics"],
            'relay_to = "smtp:127.0.0.1:%d"' % self.ports["sink"],
            'relay_tls = "none"',
            'tls_cert = "%s/leaf.pem"' % c["tls"],
            'tls_key = "%s/leaf.p8"' % c["tls"],
            'log_format = "json"',
            # Backoff short enough that a 10 s outage costs seconds, not Postfix's minutes, and
            # not so short that every queued message is retried (and its state file written)
            # several times in each outage.
            "min_backoff_secs = 1",
            "max_backoff_secs = 10",
            "max_connections = 12000",
            # Slowloris: a command must end within 30 s (RFC 5321's 5 minutes would outlast
            # the run; 10 s short); a message keeps min_data_rate's default (1 KiB/s after
            # 30 s; 10 s short, whose messages are smaller), since a shorter grace cut off
            # valid 2 MiB messages of clients slowed by the 10,000-connection load itself.
            "command_timeout_secs = %d" % self.prof.command_timeout,
            "max_errors = %d" % (20 - flip),
        ]
        if self.prof.data_grace is not None:
            lines.insert(-1, "min_data_rate_grace_secs = %d" % self.prof.data_grace)
        if variant == "out_of_range":
            lines[-1] = "max_errors = 0"
        text = "\n".join(lines) + "\n"
        if variant == "syntax":
            text += "this is = not [ toml\n"
        return text

    def write_config(self, text):
        tmp = self.cfg["path"] + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.cfg["path"])

    def haproxy_config(self):
        """mode tcp, send-proxy-v2 to ringmx's PROXY listener; with a server maxconn when
        ringmx fits fewer connections than the clients open (split_connections)."""
        through = self.split[1]
        maxconn = "" if self.split[2] is None else " maxconn %d" % self.split[2]
        self.haproxy_server_maxconn = self.split[2]
        return """global
    maxconn %d
    log stdout format raw local0 err

defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout queue 60s
    retries 3

frontend mx
    bind 127.0.0.1:%d
    maxconn %d
    default_backend ringmx

backend ringmx
    server mx 127.0.0.1:%d send-proxy-v2%s
""" % (through + 200, self.ports["haproxy"], through + 100, self.ports["proxy"], maxconn)

    def setup(self):
        for name, port in self.ports.items():
            if listening(port):
                raise RuntimeError("port %d (%s) is taken: another soak running?" % (port, name))
        tls = self.certificates()
        self.cfg = {"path": os.path.join(self.out, "ringmx.toml"), "tls": tls,
                    "recipients": os.path.join(self.out, "recipients")}
        # The load generator's valid recipients are user0..user{RCPT_POOL-1} at --rcpt-domain,
        # its unknown_user class's loadgen-unknown-{i} (loadgen/README.md): the table holds
        # user0..user{rcpt_pool-1}, more than any RCPT_POOL so far, and none of the latter.
        with open(self.cfg["recipients"], "w") as f:
            f.write("".join("user%d@example.com\n" % i for i in range(self.args.rcpt_pool)))
        if self.fault == "spool_full":
            # A tmpfs of its own: filling it is the fault.
            self.mounted = os.path.join(self.out, "spool-tmpfs")
            os.makedirs(self.mounted)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % self.args.tmpfs_size, "soak",
                            self.mounted], check=True, timeout=30)
            self.cfg["spool"] = os.path.join(self.mounted, "spool")
            self.prefill_spool()
        else:
            self.cfg["spool"] = os.path.join(self.out, "spool")
        self.write_config(self.config_text())
        # smtp-sink runs as nobody and creates its temporary files beside the FIFO; the dump
        # never touches a disk (see sinkread.py).
        self.sinkdir = os.path.join("/dev/shm", "ringmx-soak-%d-%s" % (os.getpid(), self.fault))
        os.makedirs(self.sinkdir)
        os.chmod(self.sinkdir, 0o1777)
        os.mkfifo(os.path.join(self.sinkdir, "dump.fifo"), 0o666)
        os.chmod(os.path.join(self.sinkdir, "dump.fifo"), 0o666)
        self.reader = self.procs.spawn("sinkread", [sys.executable, os.path.join(HERE, "sinkread.py"),
                                                    os.path.join(self.sinkdir, "dump.fifo"),
                                                    os.path.join(self.out, "delivered.tsv")])
        self.sink = Downstream(self)
        self.sink.set("up")
        self.server = Server(self, self.args.ringmx, self.cfg["path"])
        self.server.start()
        self.split = split_connections(self.prof.connections, self.server.fitted)
        self.streams = plan_streams(self.features, self.split, self.ports, tls + "/ca.pem")
        with open(os.path.join(self.out, "haproxy.cfg"), "w") as f:
            f.write(self.haproxy_config())
        subprocess.run(["haproxy", "-c", "-f", os.path.join(self.out, "haproxy.cfg")], check=True,
                       capture_output=True, timeout=30)
        self.haproxy = self.procs.spawn("haproxy", ["haproxy", "-db", "-f", os.path.join(self.out, "haproxy.cfg")])
        wait_for(lambda: listening(self.ports["haproxy"]), 10, "haproxy listening")
        wait_for(lambda: self.metrics_ok(), 10, "ringmx /metrics")
        time.sleep(1.0)
        self.fds_before = fd_kinds(self.server.pid)
        self.rss_before = rss_kib(self.server.pid)

    def metrics_ok(self):
        try:
            scrape(self.ports["metrics"])
            return True
        except Exception:  # noqa: BLE001
            return False

    # The load -------------------------------------------------------------------------------

    def start_load(self):
        self.lg = []
        for s in self.streams:
            d = os.path.join(self.out, "loadgen-" + s.name)
            argv = [self.args.loadgen, "--target", s.target, "--connections", str(s.connections),
                    "--duration", "%ds" % self.prof.duration, "--threads", "1", "--timeout", "30s",
                    "--quiet", "--json", "--seed", str(self.args.seed + len(self.lg)), "--out", d,
                    "--mix", s.mix, "--msg-size", self.prof.msg_size, "--rcpts", self.prof.rcpts,
                    "--source-ips", s.source_ips] + s.extra
            with open(os.path.join(self.out, "loadgen-%s.argv" % s.name), "w") as f:
                f.write(" ".join(argv) + "\n")
            out = open(os.path.join(self.out, "loadgen-%s.json" % s.name), "wb")
            p = self.procs.spawn("loadgen-" + s.name, argv, stdout=out)
            self.lg.append((s, p, d, self.t()))

    def downstream_mode(self, t):
        """Down for flap_down of every flap_period; the 4xx fault's window overrides that."""
        if self.fault == "downstream_4xx" and self.prof.fault[0] <= t < self.prof.fault[1]:
            return "up4xx"
        lo, hi = self.prof.flap_down
        if lo <= t % self.prof.flap_period < hi:
            return "down"
        return "up"

    def prefill_spool(self):
        """Before the load, a file takes all but --tmpfs-headroom of the tmpfs, so that filling
        the rest at the fault's start takes a moment, not the half-minute that gigabytes of
        fallocate took under the full load."""
        st = os.statvfs(self.mounted)
        free = st.f_bavail * st.f_frsize
        keep = parse_size(self.args.tmpfs_headroom)
        if free > keep:
            with open(os.path.join(self.mounted, "prefill"), "wb") as f:
                os.posix_fallocate(f.fileno(), 0, free - keep)

    def fill_spool(self):
        st = os.statvfs(self.mounted)
        free = st.f_bavail * st.f_frsize
        path = os.path.join(self.mounted, "filler")
        with open(path, "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, free)
            except OSError:
                pass
            # Whatever fallocate left, written until ENOSPC.
            chunk = b"\0" * (1 << 20)
            try:
                while True:
                    f.write(chunk)
                    f.flush()
            except OSError:
                pass
        st = os.statvfs(self.mounted)
        return path, st.f_bavail * st.f_frsize

    def fault_thread(self):
        """Drives the downstream's flapping and the fault, until the load and drain end."""
        lo, hi = self.prof.fault
        kill_times = []
        if self.fault == "kill9":
            while len(kill_times) < self.prof.kills:
                kill_times = sorted(self.rng.uniform(lo, hi) for _ in range(self.prof.kills))
                if any(b - a < 3 for a, b in zip(kill_times, kill_times[1:])):
                    kill_times = []
            self.kill_plan = [round(k, 2) for k in kill_times]
        fault_on = False
        self.fault_span = None
        filler = []
        saved_limit = None
        flip = 0
        next_hup = lo
        while not self.stop_faults.is_set():
            t = self.t()
            # The flapping is part of the load; the drain after it has the downstream up.
            self.sink.set("up" if self.load_done else self.downstream_mode(t))
            if self.fault == "kill9" and kill_times and t >= kill_times[0]:
                kill_times.pop(0)
                if self.fault_span is None:
                    self.fault_span = [self.t(), None]
                self.event("kill -9 pid %s" % self.server.pid)
                self.server.kill9_restart()
                self.event("restarted, pid %s, %.2f s after the kill, %d failed starts before"
                           % (self.server.pid, self.server.restarts[-1]["down_s"],
                              self.server.restarts[-1]["failed_starts"]))
                self.fault_span[1] = self.t()
            if self.fault in ("spool_full", "fd_exhaustion", "sighup"):
                if not fault_on and lo <= t < hi:
                    fault_on = True
                    if self.fault == "spool_full":
                        # In a thread of its own: filling gigabytes takes seconds, the
                        # downstream's flapping goes on meanwhile. The fault starts when full.
                        def fill():
                            began = self.t()
                            path, free = self.fill_spool()
                            self.fill_s = round(self.t() - began, 1)
                            filler.append(path)
                            self.fault_span = [self.t(), None]
                            self.event("spool tmpfs filled (%d octets free)" % free)
                        filling = threading.Thread(target=fill, daemon=True)
                        filling.start()
                    elif self.fault == "fd_exhaustion":
                        pid = self.server.pid
                        n = len(os.listdir("/proc/%d/fd" % pid))
                        low = max(64, n // 2)
                        saved_limit = NOFILE
                        subprocess.run(["prlimit", "--pid", str(pid), "--nofile=%d:%d" % (low, NOFILE)],
                                       check=True, timeout=10)
                        self.fd_low = (n, low)
                        self.fault_span = [self.t(), None]
                        self.event("RLIMIT_NOFILE of pid %d lowered to %d (%d open)" % (pid, low, n))
                    elif self.fault == "sighup":
                        self.fault_span = [self.t(), None]
                if fault_on and t >= hi:
                    fault_on = False
                    if self.fault == "spool_full":
                        filling.join()
                        os.unlink(filler[0])
                        # The prefill goes too: freed is the whole file system given back, as
                        # an operator clearing a full disk would. Left in place, the spool's own
                        # growth under this load (24,000 queued messages, ~3 GB at 10,000
                        # connections) filled the headroom again and clients saw 452 to the end.
                        prefill = os.path.join(self.mounted, "prefill")
                        if os.path.exists(prefill):
                            os.unlink(prefill)
                        st = os.statvfs(self.mounted)
                        self.event("spool tmpfs freed (%d octets free)" % (st.f_bavail * st.f_frsize))
                    elif self.fault == "fd_exhaustion":
                        subprocess.run(["prlimit", "--pid", str(self.server.pid),
                                        "--nofile=%d:%d" % (saved_limit, NOFILE)], check=True, timeout=10)
                        self.event("RLIMIT_NOFILE back to %d" % saved_limit)
                    elif self.fault == "sighup":
                        # End on a good configuration (the one the run started with).
                        self.write_config(self.config_text())
                        os.kill(self.server.pid, signal.SIGHUP)
                        self.reloads_sent["good"] += 1
                        self.event("last SIGHUP, good configuration (%d good, %d broken before it)"
                                   % (self.reloads_sent["good"] - 1, self.reloads_sent["broken"]))
                    if self.fault_span:
                        self.fault_span[1] = self.t()
                if fault_on and self.fault == "sighup" and t >= next_hup:
                    n = self.reloads_sent["good"] + self.reloads_sent["broken"]
                    if n % 2 == 0:
                        flip ^= 1
                        self.write_config(self.config_text("good", flip))
                        self.reloads_sent["good"] += 1
                    else:
                        kind = ("out_of_range", "syntax", "missing_recipients")[(n // 2) % 3]
                        self.write_config(self.config_text(kind))
                        self.reloads_sent["broken"] += 1
                    os.kill(self.server.pid, signal.SIGHUP)
                    next_hup += 1.0
            self.stop_faults.wait(0.05)
        for path in filler:
            if os.path.exists(path):
                os.unlink(path)

    def metric(self, row, prefix):
        if not row.get("metrics"):
            return None
        vals = [v for k, v in row["metrics"].items() if k == prefix or k.startswith(prefix + "{")]
        return sum(vals) if vals else None

    def drain(self):
        """After the load: every session closed, the queue empty, and the downstream's copies
        stopped coming; bounded by drain_timeout."""
        began = self.t()
        end = now() + self.prof.drain_timeout
        drained_at = None
        while now() < end:
            rows = self.sampler.rows[-3:]
            if len(rows) == 3 and all(self.metric(r, "ringmx_queue_messages") == 0
                                      and self.metric(r, "ringmx_sessions_active") == 0 for r in rows):
                drained_at = rows[0]["t"]
                break
            time.sleep(0.5)
        self.drain_s = None if drained_at is None else max(0.0, drained_at - began)
        self.event("drained" if drained_at is not None else "NOT drained within %d s" % self.prof.drain_timeout)
        # ringmx's idle pooled connections to the downstream close after relay_idle_secs (2).
        time.sleep(3.5)
        self.fds_after = fd_kinds(self.server.pid) if self.server.pid else None

    def execute(self):
        self.setup()
        self.t0 = now()
        self.t0_wall = time.time()
        self.sampler = Sampler(self)
        self.sampler.start()
        self.stop_faults = threading.Event()
        ft = threading.Thread(target=self.fault_thread, daemon=True)
        ft.start()
        self.start_load()
        self.event("load started: %s" % ", ".join("%s %d conns" % (s.name, s.connections) for s in self.streams))
        deadline = now() + self.prof.duration + 120
        for s, p, d, _ in self.lg:
            p.wait(max(1, deadline - now()))
        self.load_end = self.t()
        self.load_done = True
        self.event("load ended")
        self.drain()
        self.stop_faults.set()
        ft.join(30)
        self.sampler.halt.set()
        self.sampler.join(10)
        self.final_metrics = scrape(self.ports["metrics"]) if self.metrics_ok() else None
        self.server_exit = self.server.stop()
        self.queued_after = self.spool_queue()
        self.sink.set("down")
        Procs.stop(self.reader, signal.SIGTERM, timeout=60)
        Procs.stop(self.haproxy, signal.SIGTERM, timeout=10)

    def spool_queue(self):
        """What the stopped server's spool still holds for delivery (`ringmx queue list
        --json`, read under the spool's lock): id -> recipients not yet delivered. A message
        there is not lost, only not yet delivered when the drain's bound ran out."""
        r = subprocess.run([self.args.ringmx, "queue", "list", "--spool", self.cfg["spool"], "--json"],
                           capture_output=True, text=True, timeout=300)
        with open(os.path.join(self.out, "queue-after.jsonl"), "w") as f:
            f.write(r.stdout)
        if r.returncode != 0:
            self.event("ringmx queue list failed (%d): %s" % (r.returncode, r.stderr.strip()[:300]))
            return None
        out = {}
        for line in r.stdout.splitlines():
            if line.strip():
                m = json.loads(line)
                out[m["id"]] = [x["address"] for x in m["recipients"] if x.get("state") != "done"]
        return out

    def cleanup(self):
        if getattr(self, "stop_faults", None):
            self.stop_faults.set()
        if self.sampler:
            self.sampler.halt.set()
        self.procs.kill_all()
        if self.mounted:
            subprocess.run(["umount", "-l", self.mounted], timeout=30)
        if getattr(self, "sinkdir", None):
            shutil.rmtree(self.sinkdir, ignore_errors=True)
        if not self.args.keep_spool:
            shutil.rmtree(self.cfg["spool"] if getattr(self, "cfg", None) else "/nonexistent", ignore_errors=True)


# --- the checks --------------------------------------------------------------------------------

QUEUED_RE = re.compile(r"queued as ([0-9A-Za-z]+)")


def ringmx_log_ids(out):
    """From ringmx's JSON session lines: queue id -> recipients count, in every incarnation."""
    ids = {}
    for name in sorted(os.listdir(out)):
        if not re.match(r"ringmx-\d+\.log$", name):
            continue
        with open(os.path.join(out, name), encoding="utf-8", errors="replace") as f:
            for line in f:
                if '"ids"' not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                qids = rec.get("ids", "").split(",")
                nr = str(rec.get("nrcpt", "")).split(",")
                for i, q in enumerate(qids):
                    if q:
                        ids[q] = int(nr[i]) if i < len(nr) and nr[i].isdigit() else None
    return ids


def check_delivery(run):
    """Every acknowledged message's recipients delivered exactly once, or explained."""
    acked, source = {}, "acked.txt"
    have_acked = False
    for s, _, d, _ in run.lg:
        path = os.path.join(d, "acked.txt")
        if os.path.exists(path):
            have_acked = True
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    m = QUEUED_RE.search(line)
                    if m:
                        acked[m.group(1)] = s.name
    logged = ringmx_log_ids(run.out)
    if not have_acked:
        source = "ringmx session log (this load generator writes no acked.txt)"
        acked = {q: "log" for q in logged}
    delivered = {}  # id -> list of (incarnation, seq, rcpts)
    per_inc = {}  # incarnation -> count
    unkeyed = 0
    with open(os.path.join(run.out, "delivered.tsv"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            inc, _, qid, rcpts = line.rstrip("\n").split("\t")
            if qid == "-":
                unkeyed += 1
                continue
            seq = per_inc.get(inc, 0)
            per_inc[inc] = seq + 1
            delivered.setdefault(qid, []).append((inc, seq, rcpts.split(",") if rcpts else []))
    killed = {str(inc) for (_, mode, inc) in run.sink.events if mode == "down"}
    lost_msgs, lost_rcpts = [], 0
    dups_crash, dups_sink, dups_bad = 0, 0, []
    queued = run.queued_after or {}
    still_queued = 0
    for qid in acked:
        copies = delivered.get(qid)
        if not copies:
            if qid in queued:
                still_queued += 1
            else:
                lost_msgs.append(qid)
            continue
        seen = {}
        for inc, seq, rcpts in copies:
            for r in rcpts:
                seen.setdefault(r, []).append((inc, seq))
        want = logged.get(qid)
        pending = len(set(queued.get(qid, [])) - set(seen))
        if want is not None and len(seen) + pending < want:
            lost_rcpts += want - len(seen) - pending
        for r, where in seen.items():
            for inc, seq in where[:-1]:
                # An earlier copy: explained by ringmx's crash (kill9), or by the downstream
                # killed while it was one of the last DEST_CONCURRENCY it took.
                if run.server.kills:
                    dups_crash += 1
                elif inc in killed and seq >= per_inc[inc] - DEST_CONCURRENCY:
                    dups_sink += 1
                else:
                    dups_bad.append((qid, r, where))
    extra = [q for q in delivered if q not in acked]
    not_logged = [q for q in acked if q not in logged]
    return {
        "acked_source": source,
        "acked": len(acked),
        "delivered_messages": sum(len(v) for v in delivered.values()),
        "delivered_ids": len(delivered),
        "lost_messages": len(lost_msgs),
        "lost_examples": lost_msgs[:10],
        "lost_recipients": lost_rcpts,
        "acked_still_queued": still_queued,
        "queue_listed": run.queued_after is not None,
        "queued_after_stop": None if run.queued_after is None else len(run.queued_after),
        "duplicates_after_ringmx_crash": dups_crash,
        "duplicates_after_downstream_kill": dups_sink,
        "duplicates_unexplained": len(dups_bad),
        "duplicate_examples": [str(x) for x in dups_bad[:5]],
        "delivered_not_acked": len(extra),
        "acked_not_in_server_log": len(not_logged),
        "unkeyed_copies": unkeyed,
        "downstream_incarnations": len(per_inc),
    }


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] + xs[(n - 1) // 2]) / 2 if n else None


def rss_verdict(run):
    """RSS is flat when, over the load after the warm-up (warm-up .. the nominal duration, one
    process), the median of its last third is no more than max(10%, 32 MiB) above the median
    of its first third. Why: by the warm-up every connection slot is busy and the workers'
    buffers and slabs are at working size; from second to second RSS then swings by tens of
    MiB with how many large messages are in DATA or being delivered (2 MiB bodies, 16 KiB
    input buffers, delivery's readers), so single samples and peaks say little, while a leak
    is a level that keeps rising: medians of thirds see the level and not the swings. 32 MiB
    is what 2,000 sessions in DATA hold in input buffers; 10% scales it for a larger steady
    state. The run prints the smallest per-session leak that limit would catch (limit /
    sessions between the two thirds' middles)."""
    rows = [r for r in run.sampler.rows if r.get("rss_kib")]
    if not rows:
        return {"ok": False, "why": "no RSS samples"}
    lo, hi = run.prof.warmup, run.prof.duration
    first_pid = next((r["pid"] for r in rows if r["t"] >= lo), None)
    win = [r for r in rows if lo <= r["t"] <= hi and r["pid"] == first_pid]
    third = (hi - lo) / 3.0
    a = [r["rss_kib"] for r in win if r["t"] <= lo + third]
    b = [r["rss_kib"] for r in win if r["t"] >= hi - third]
    out = {"start_mib": round(rows[0]["rss_kib"] / 1024, 1), "end_mib": round(rows[-1]["rss_kib"] / 1024, 1),
           "same_process": first_pid == rows[-1]["pid"],
           "window_s": [lo, hi]}
    if len(a) < 2 or len(b) < 2:
        out.update({"ok": False, "why": "too few samples in the window (a restart in it?)"})
        return out
    base, last = median(a), median(b)
    limit = max(0.10 * base, 32 * 1024)
    growth = last - base
    peak = max(win, key=lambda r: r["rss_kib"])
    sessions = sum(x.get("sessions", 0) for x in run.intervals_after(lo + third / 2)
                   if x["t"] < hi - third / 2)
    out.update({
        "ok": growth <= limit,
        "at_warmup_mib": round(base / 1024, 1),
        "last_third_mib": round(last / 1024, 1),
        "peak_mib": round(peak["rss_kib"] / 1024, 1),
        "peak_at_s": peak["t"],
        "growth_mib": round(growth / 1024, 1),
        "limit_mib": round(limit / 1024, 1),
        "detectable_leak_per_session_b": round(limit * 1024 / sessions) if sessions else None,
    })
    return out


def fd_verdict(run):
    """No descriptor leak: after the drain, sockets, pipes and anonymous inodes (eventfds,
    epoll, io_uring) are as many as before the load, and the spool's files at most one more per
    worker (a worker may have moved on to a new log segment while an old one with live messages
    is still open)."""
    b, a = run.fds_before or {}, run.fds_after or {}
    if not a:
        return {"ok": False, "why": "no descriptor count after the drain", "before": b}
    fixed = {k for k in set(a) | set(b) if k not in ("segment", "file")}
    ok = all(a.get(k, 0) <= b.get(k, 0) for k in fixed)
    files_b = b.get("segment", 0) + b.get("file", 0)
    files_a = a.get("segment", 0) + a.get("file", 0)
    ok = ok and files_a <= files_b + WORKERS
    return {"ok": ok, "before": sum(b.values()), "after": sum(a.values()), "before_by_kind": b,
            "after_by_kind": a}


def read_amplification(run):
    """Octets the server read (rchar) per copy the downstream took, from the load's end to the
    last sample, within one process: after the load nearly all of it is delivery reading the
    spool."""
    rows = [r for r in run.sampler.rows if r.get("rchar") is not None and r["t"] >= run.load_end]
    if len(rows) < 2 or rows[0]["pid"] != rows[-1]["pid"]:
        return None
    per = delivered_per_second(run)
    copies = sum(n for t, n in per.items() if rows[0]["t"] <= t < rows[-1]["t"])
    read = rows[-1]["rchar"] - rows[0]["rchar"]
    return {"from_s": rows[0]["t"], "to_s": rows[-1]["t"], "read_mib": round(read / 2**20),
            "copies": copies, "read_mib_per_copy": round(read / 2**20 / copies, 2) if copies else None}


def load_summaries(run):
    out = []
    for s, p, d, started in run.lg:
        path = os.path.join(d, "summary.json")
        if not os.path.exists(path):
            out.append((s, None, started, p.returncode))
            continue
        with open(path) as f:
            out.append((s, json.load(f), started, p.returncode))
    return out


def intervals(run):
    """Per second of the run (t from the load's start): ok sessions and errors of every load
    generator together."""
    per = {}
    for s, summ, started, _ in run.summaries:
        if not summ:
            continue
        for iv in summ.get("intervals", []):
            if iv["t"] != int(iv["t"]):
                continue  # the last, partial second
            t = int(math.floor(started + iv["t"] - 1e-9))
            row = per.setdefault(t, {"t": t, "sessions": 0, "errors": 0, "messages": 0})
            row["sessions"] += iv.get("sessions", 0)
            row["errors"] += iv.get("errors", 0)
            row["messages"] += iv.get("messages", 0)
    return [per[k] for k in sorted(per)]


def recovery(run):
    """Seconds from the fault's end until (1) the clients' error rate is back to its level
    before the fault (errors/s ≤ mean + 3σ + 1 of the seconds from `steady` to the fault,
    and ok sessions/s ≥ half their mean then, for 3 consecutive seconds), and (2) the delivery
    queue is back to its size at the fault's start (it grows under this load whatever
    happens, so 'drained' under load means back to where it was), and the drain after the
    load."""
    lo, hi = run.prof.fault
    if run.fault == "downstream_4xx":
        ups = [t for t, m, _ in run.sink.events if m == "up4xx"]
        if ups:
            lo = ups[0]
            hi = min([t for t, m, _ in run.sink.events if t > lo and m != "up4xx"] or [hi])
    elif run.fault_span and run.fault_span[1] is not None:
        lo, hi = run.fault_span
    lo, hi = round(lo, 1), round(hi, 1)
    ivs = run.ivs
    out = {"fault_window_s": [lo, hi]}
    lo_s, hi_s = math.floor(lo), math.ceil(hi)
    pre = [r for r in ivs if run.prof.steady <= r["t"] < lo_s]
    if pre:
        e = [r["errors"] for r in pre]
        mean = sum(e) / len(e)
        sd = (sum((x - mean) ** 2 for x in e) / len(e)) ** 0.5
        ok_mean = sum(r["sessions"] for r in pre) / len(pre)
        thr = mean + 3 * sd + 1
        out.update({"baseline_errors_per_s": round(mean, 2), "error_threshold_per_s": round(thr, 2),
                    "baseline_ok_sessions_per_s": round(ok_mean, 1)})
        post = [r for r in ivs if r["t"] >= hi_s]
        rec = None
        for i in range(len(post) - 2):
            w = post[i:i + 3]
            if all(r["errors"] <= thr and r["sessions"] >= ok_mean / 2 for r in w):
                # The second whose start is the first of the three, counted from the fault's end.
                rec = round(max(0.0, post[i]["t"] - hi), 1)
                break
        out["clients_recovered_s"] = rec
        during = [r for r in ivs if lo_s <= r["t"] < hi_s]
        out["errors_during_fault"] = sum(r["errors"] for r in during)
        out["ok_sessions_per_s_during_fault"] = round(sum(r["sessions"] for r in during) / max(1, len(during)), 1)
    rows = [r for r in run.sampler.rows if r.get("metrics")]
    q_at = None
    for r in rows:
        if r["t"] >= lo and run.metric(r, "ringmx_queue_messages") is not None:
            q_at = run.metric(r, "ringmx_queue_messages")
            break
    q_rec = None
    if q_at is not None:
        for r in rows:
            q = run.metric(r, "ringmx_queue_messages")
            if r["t"] >= hi and q is not None and q <= q_at:
                q_rec = round(r["t"] - hi, 1)
                break
    out["queue_at_fault_start"] = q_at
    out["queue_back_s"] = q_rec
    out["drain_after_load_s"] = None if run.drain_s is None else round(run.drain_s, 1)
    return out


def clients_saw(run):
    kinds = {}
    mism = {}
    classes = {}
    for s, summ, _, rc in run.summaries:
        if not summ:
            kinds["no_summary"] = kinds.get("no_summary", 0) + 1
            continue
        for k, v in summ["errors"].items():
            kinds[k] = kinds.get(k, 0) + v
        for m in summ.get("mismatches", []):
            key = "%s/%s" % (m["class"], m["step"])
            mism[key] = mism.get(key, 0) + m["count"]
        for c, v in summ.get("classes", {}).items():
            agg = classes.setdefault(c, {})
            for k, n in v.items():
                if isinstance(n, (int, float)):
                    agg[k] = agg.get(k, 0) + n
    sessions = sum(summ["sessions"]["started"] for _, summ, _, _ in run.summaries if summ)
    ok = sum(summ["sessions"]["ok"] for _, summ, _, _ in run.summaries if summ)
    msgs = sum(summ["messages"] for _, summ, _, _ in run.summaries if summ)
    return {"sessions": sessions, "ok": ok, "messages": msgs, "errors": kinds, "mismatches": mism,
            "classes": classes}


def server_replies(run):
    """4xx and 5xx replies by code and enhanced code, the server's own count over the run (the
    last incarnation's counters after a restart)."""
    m = run.final_metrics or {}
    out = {}
    for k, v in m.items():
        if k.startswith("ringmx_replies_total{") and v:
            code = re.search(r'code="(\d+)"', k)
            enh = re.search(r'enhanced="([^"]*)"', k)
            if code and code.group(1)[0] in "45":
                out["%s %s" % (code.group(1), enh.group(1) if enh else "")] = int(v)
    return out


def judge(run):
    run.summaries = load_summaries(run)
    run.ivs = intervals(run)
    run.intervals_after = lambda t: [r for r in run.ivs if r["t"] >= t]
    res = {"fault": run.fault, "profile": run.prof.name, "seed": run.args.seed,
           "streams": [{"name": s.name, "target": s.target, "connections": s.connections, "mix": s.mix,
                        "argv_file": "loadgen-%s.argv" % s.name} for s in run.streams],
           "loadgen_features": {k: (sorted(v) if isinstance(v, set) else v) for k, v in run.features.items()},
           "ringmx_max_connections_fitted": run.server.fitted,
           "connections_direct_haproxy": run.split[:2],
           "haproxy_server_maxconn": run.haproxy_server_maxconn,
           "events": run.events, "downstream_events": run.sink.events,
           "server_starts": run.server.starts, "server_exit_status": run.server_exit}
    res["clients"] = clients_saw(run)
    res["server_replies_4xx_5xx"] = server_replies(run)
    res["delivery"] = check_delivery(run)
    res["rss"] = rss_verdict(run)
    res["server_reads"] = read_amplification(run)
    res["fds"] = fd_verdict(run)
    res["recovery"] = recovery(run) if run.fault != "none" else {
        "drain_after_load_s": None if run.drain_s is None else round(run.drain_s, 1)}
    if run.fault == "kill9":
        res["kill_plan_s"] = run.kill_plan
        res["restarts"] = run.server.restarts
        res["failed_starts"] = run.server.failed_starts
    if run.fault == "spool_full":
        res["fill_took_s"] = getattr(run, "fill_s", None)
    if run.fault == "fd_exhaustion":
        res["fd_limit"] = {"open_at_fault": run.fd_low[0], "lowered_to": run.fd_low[1]}
    checks = {}
    bad_mism = {k: v for k, v in res["clients"]["mismatches"].items() if k.split("/")[0] not in VARYING}
    client_visible = run.fault in ("spool_full", "kill9", "fd_exhaustion")
    if not client_visible:
        # The downstream's state and reloads are invisible to clients: no mismatch at all.
        checks["mismatches"] = (not bad_mism, bad_mism or "0 outside %s" % sorted(VARYING))
    d = res["delivery"]
    checks["lost"] = (d["queue_listed"] and d["lost_messages"] == 0 and d["lost_recipients"] == 0,
                      "%d messages, %d recipients acknowledged, neither delivered nor in the queue "
                      "after the stop%s" % (d["lost_messages"], d["lost_recipients"],
                                            "" if d["queue_listed"] else " (queue list failed)"))
    checks["duplicates"] = (d["duplicates_unexplained"] == 0,
                            "%d unexplained, %d after a ringmx crash, %d after a downstream kill"
                            % (d["duplicates_unexplained"], d["duplicates_after_ringmx_crash"],
                               d["duplicates_after_downstream_kill"]))
    checks["drained"] = (run.drain_s is not None, "queue empty and sessions closed %s"
                         % ("after %.1f s" % run.drain_s if run.drain_s is not None else "never"))
    if run.drain_s is not None:
        # Drained by the queue gauge, so nothing acknowledged may be left in the spool: a
        # message the runner let go of (a read failing with EMFILE) waits there until a
        # restart while the gauge says 0.
        checks["none_stranded"] = (d["acked_still_queued"] == 0,
                                   "%d acknowledged still in the spool after the queue emptied"
                                   % d["acked_still_queued"])
    checks["server_exit"] = (run.server_exit == 0, "SIGTERM exit status %s after %s s"
                             % (run.server_exit, getattr(run.server, "stop_s", None)))
    if run.fault in ("none", "sighup", "downstream_4xx"):
        r = res["rss"]
        checks["rss_flat"] = (r["ok"], r.get("why") or
                              "median of the last third %+.1f MiB against the first (limit %.1f MiB, "
                              "a leak of %s B per session would show)"
                              % (r["growth_mib"], r["limit_mib"], r["detectable_leak_per_session_b"]))
    f = res["fds"]
    checks["fd_leak"] = (f["ok"], f.get("why") or "%d before, %d after" % (f["before"], f["after"]))
    if run.fault == "sighup":
        m = run.final_metrics or {}
        applied = int(m.get('ringmx_config_reloads_total{result="applied"}', 0))
        refused = int(m.get('ringmx_config_reloads_total{result="refused"}', 0))
        res["reloads"] = {"sent": run.reloads_sent, "applied": applied, "refused": refused}
        checks["reloads"] = (applied == run.reloads_sent["good"] and refused == run.reloads_sent["broken"],
                             "%d good sent / %d applied, %d broken sent / %d refused"
                             % (run.reloads_sent["good"], applied, run.reloads_sent["broken"], refused))
    res["checks"] = {k: {"ok": bool(v[0]), "detail": v[1]} for k, v in checks.items()}
    res["passed"] = all(v[0] for v in checks.values())
    return res


def delivered_per_second(run):
    """Copies the downstream took in each second of the run, from sinkread's timestamps."""
    per = {}
    with open(os.path.join(run.out, "delivered.tsv"), encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                t = int(float(line.split("\t")[1]) - run.t0_wall)
                per[t] = per.get(t, 0) + 1
    return per


def write_curve(run, res):
    """rss.csv: one row per sample (RSS, descriptors, queue, open sessions, the downstream's
    state, copies it took in that second)."""
    path = os.path.join(run.out, "rss.csv")
    per = delivered_per_second(run)
    ev = sorted(run.sink.events)

    def sink_at(t):
        mode = "down"
        for te, m, _ in ev:
            if te <= t:
                mode = m
        return mode

    def num(v):
        return "" if v is None else int(v)
    with open(path, "w") as f:
        f.write("t_s,pid,rss_kib,fds,queue,sessions_active,downstream,delivered_in_second\n")
        for r in run.sampler.rows:
            f.write("%.1f,%s,%s,%s,%s,%s,%s,%d\n" % (
                r["t"], r.get("pid") or "", r.get("rss_kib") or "", r.get("fds") or "",
                num(run.metric(r, "ringmx_queue_messages")), num(run.metric(r, "ringmx_sessions_active")),
                sink_at(r["t"]), per.get(int(r["t"]), 0)))
    marks = [(t, w) for t, w in run.events if "kill" in w]
    shade = [run.prof.fault] if run.fault != "none" else []
    r = res["rss"]
    chart.rss_svg(os.path.join(run.out, "rss.svg"), run.sampler.rows, run.prof.duration,
                  "ringmx RSS, %s run, fault %s" % (run.prof.name, run.fault), shade, marks,
                  r.get("at_warmup_mib"), r.get("limit_mib"), run.prof.warmup)


def report_lines(res):
    c = res["clients"]
    d = res["delivery"]
    rec = res["recovery"]
    lines = ["== %s (%s) %s" % (res["fault"], res["profile"], "PASSED" if res["passed"] else "FAILED")]
    lines.append("clients: %d sessions, %d ok, %d messages acknowledged; errors %s" % (
        c["sessions"], c["ok"], c["messages"], {k: v for k, v in c["errors"].items() if v}))
    if c["mismatches"]:
        lines.append("mismatches by class/step: %s" % c["mismatches"])
    if res["server_replies_4xx_5xx"]:
        lines.append("server 4xx/5xx replies: %s" % res["server_replies_4xx_5xx"])
    lines.append("delivery: %d acknowledged (%s), %d copies downstream; lost %d (+%d recipients); "
                 "%d acknowledged still queued at the stop; duplicates %d after a crash, %d after a "
                 "downstream kill, %d unexplained; %d delivered but not acknowledged" % (
                     d["acked"], d["acked_source"], d["delivered_messages"], d["lost_messages"],
                     d["lost_recipients"], d["acked_still_queued"], d["duplicates_after_ringmx_crash"],
                     d["duplicates_after_downstream_kill"], d["duplicates_unexplained"], d["delivered_not_acked"]))
    r = res["rss"]
    if "at_warmup_mib" in r:
        lines.append("RSS: start %s MiB, first third's median %s MiB, last third's %s MiB, peak %s MiB at %s s, "
                     "end %s MiB (growth %s, limit %s MiB)" % (
                         r["start_mib"], r["at_warmup_mib"], r["last_third_mib"], r["peak_mib"], r["peak_at_s"],
                         r["end_mib"], r["growth_mib"], r["limit_mib"]))
    f = res["fds"]
    lines.append("fds: before %s %s, after %s %s" % (f.get("before"), f.get("before_by_kind"), f.get("after"),
                                                   f.get("after_by_kind")))
    lines.append("recovery: %s" % rec)
    if res.get("server_reads"):
        lines.append("server reads after the load: %s" % res["server_reads"])
    if res.get("failed_starts"):
        lines.append("failed starts after a kill: %d, e.g. %s" % (len(res["failed_starts"]), res["failed_starts"][0][1]))
    if "reloads" in res:
        lines.append("reloads: %s" % res["reloads"])
    for k, v in res["checks"].items():
        lines.append("  %-12s %s  %s" % (k, "ok  " if v["ok"] else "FAIL", v["detail"]))
    return lines


def results_table(results):
    """One row per run, as bench/soak/RESULTS.md shows them."""
    rows = ["| run | passed | sessions (ok) | client errors | mismatches outside nonsmtp/slowloris "
            "| acknowledged | lost | still queued at stop | duplicates (crash / downstream kill) "
            "| clients recovered | queue back | drain after load | RSS start / at warm-up / peak / end (MiB) "
            "| fds before / after |",
            "| --- " * 14 + "|"]
    for r in results:
        c, d, rec, rss, fd = r["clients"], r["delivery"], r["recovery"], r["rss"], r["fds"]
        errs = ", ".join("%s %d" % (k, v) for k, v in sorted(c["errors"].items()) if v and k != "total") or "0"
        mism = sum(v for k, v in c["mismatches"].items() if k.split("/")[0] not in VARYING)

        def sec(v):
            return "-" if v is None else "%s s" % v
        rows.append("| %s | %s | %d (%d) | %s | %d | %d | %d | %d | %d / %d | %s | %s | %s | %s / %s / %s / %s | %s / %s |" % (
            r["fault"], "yes" if r["passed"] else "**no**", c["sessions"], c["ok"], errs, mism, d["acked"],
            d["lost_messages"], d["acked_still_queued"], d["duplicates_after_ringmx_crash"],
            d["duplicates_after_downstream_kill"], sec(rec.get("clients_recovered_s")),
            sec(rec.get("queue_back_s")), sec(rec.get("drain_after_load_s")), rss.get("start_mib"),
            rss.get("at_warmup_mib"), rss.get("peak_mib"), rss.get("end_mib"), fd.get("before"), fd.get("after")))
    return "\n".join(rows) + "\n"


def one_run(args, prof, fault, out, features):
    os.makedirs(out, exist_ok=True)
    run = Run(args, prof, fault, out, features)
    res = None
    try:
        run.execute()
        res = judge(run)
        write_curve(run, res)
    finally:
        run.cleanup()
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    lines = report_lines(res)
    with open(os.path.join(out, "results.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for line in lines:
        print(line, flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true", help="the CI scale (1,000 connections, 15 s)")
    ap.add_argument("--fault", default=None, choices=FAULTS + ["all"],
                    help="default: none, or with --short the baseline, kill9 and sighup")
    ap.add_argument("--out", default=None, help="results directory (default: a new one under /tmp)")
    ap.add_argument("--ringmx", default=os.environ.get("RINGMX_BIN", "target/release/ringmx"))
    ap.add_argument("--loadgen", default=os.environ.get("RINGMX_LOADGEN_BIN", "target/release/ringmx-loadgen"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--connections", type=int, default=None, help="override the profile's")
    ap.add_argument("--duration", type=int, default=None, help="override the profile's load seconds")
    ap.add_argument("--rcpt-pool", type=int, default=1000,
                    help="valid recipients user0..N-1 in the table: at least the load generator's "
                         "RCPT_POOL (128, then 150); its unknown users are loadgen-unknown-N")
    ap.add_argument("--tmpfs-size", default="8g", help="the spool_full fault's tmpfs")
    ap.add_argument("--tmpfs-headroom", default="3g",
                    help="what spool_full leaves free before the load (the spool's growth until the fault)")
    ap.add_argument("--keep-spool", action="store_true")
    ap.add_argument("--drain-timeout", type=int, default=None,
                    help="seconds the queue gets to empty after the load (600 full, 90 short)")
    args = ap.parse_args()
    prof = SHORT if args.short else FULL
    if args.connections or args.duration or args.drain_timeout:
        prof = Profile(**{**prof.__dict__, "connections": args.connections or prof.connections,
                          "duration": args.duration or prof.duration,
                          "drain_timeout": args.drain_timeout or prof.drain_timeout})
    args.ringmx = os.path.abspath(args.ringmx)
    args.loadgen = os.path.abspath(args.loadgen)
    for tool in ("haproxy", "smtp-sink", "openssl", "prlimit"):
        if not shutil.which(tool):
            sys.exit("soak: needs %s on PATH" % tool)
    if os.geteuid() != 0:
        sys.exit("soak: needs root (smtp-sink -u nobody, the spool_full tmpfs)")
    if args.fault is None:
        faults = ["none", "kill9", "sighup"] if args.short else ["none"]
    elif args.fault == "all":
        faults = FAULTS
    else:
        faults = [args.fault]
    out = args.out or "/tmp/ringmx-soak-%s" % time.strftime("%Y%m%dT%H%M%S")
    os.makedirs(out, exist_ok=True)
    features = loadgen_features(args.loadgen)
    log("profile %s, faults %s, out %s, load generator classes %s" % (
        prof.name, faults, out, sorted(features["classes"])))
    # SIGTERM (a CI timeout) unwinds through every run's cleanup like Ctrl-C.
    def on_term(*_):
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, on_term)
    results = []
    for fault in faults:
        results.append(one_run(args, prof, fault, os.path.join(out, fault), features))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(results_table(results))
    passed = all(r["passed"] for r in results)
    log("%s: %s" % ("passed" if passed else "FAILED",
                    ", ".join("%s %s" % (r["fault"], "ok" if r["passed"] else "failed") for r in results)))
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
