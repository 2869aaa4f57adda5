"""The soak's settings (its two profiles, the faults, the classes whose replies vary) and the small
helpers every part of the harness uses.
"""

import os
import time
from dataclasses import dataclass


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
