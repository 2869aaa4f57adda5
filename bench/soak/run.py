"""One soak run: the downstream, ringmx, HAProxy and the load generators started, the fault injected
on its schedule, the load drained, and everything stopped whatever happened.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

from common import FAULTS, HERE, NOFILE, WORKERS, log, now, parse_size
from procs import Downstream, Procs, Server, listening, wait_for
from sample import Sampler, fd_kinds, rss_kib, scrape
from streams import plan_streams, split_connections


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
