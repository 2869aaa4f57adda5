"""The processes of a run: each started in its own process group and killed at the end; the flapping
downstream (smtp-sink) and ringmx itself, started, stopped and killed as the faults need.
"""

import os
import re
import resource
import signal
import subprocess
import threading
import time

from common import NOFILE, now


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
