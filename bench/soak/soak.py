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
import os
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FAULTS, FULL, Profile, SHORT, log  # noqa: E402
from run import Run  # noqa: E402
from streams import loadgen_features  # noqa: E402
from verdict import judge, report_lines, results_table, write_curve  # noqa: E402


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
