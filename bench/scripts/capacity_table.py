#!/usr/bin/env python3
"""Prints the capacity table (Markdown) from the sweeps capacity_sweeps.sh wrote.

Usage: capacity_table.py [DIR]   (default tuning/capacity)
Reads DIR/mix-{plain,tls}-{log,files}-w{1,2}.json (sweep.json) and DIR/mix-cpu.jsonl. Per
sweep: the highest offered rate that met the objective and the error budget, what was
achieved there (sessions/s, messages/s, p50 and p99 corrected session latency, errors), the
first rate that did not and why, and the CPU seconds of the server and of the load generator
per 1,000 sessions over the whole sweep (every step, the failing one included).
"""
import json
import os
import sys


def tls_label(tls, cpu):
    """The sweep's STARTTLS share, from the load generator's arguments it recorded."""
    if tls != "tls":
        return "none"
    args = (cpu or {}).get("args", "")
    if "--tls starttls" in args:
        return "every session STARTTLS"
    for word in args.replace(",", " ").split():
        if word.startswith("tls="):
            return f"{word[4:]}% STARTTLS"
    return "STARTTLS"


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "tuning/capacity"
    cpu = {}
    with open(os.path.join(d, "mix-cpu.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            cpu[r["name"]] = r
    print("| TLS | spool | workers | sessions/s | messages/s | p50 | p99 | errors | next step | "
          "server CPU per 1,000 sessions | load generator CPU per 1,000 sessions |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for tls in ("plain", "tls"):
        for spool in ("log", "files"):
            for w in (1, 2):
                name = f"{tls}-{spool}-w{w}"
                path = os.path.join(d, f"mix-{name}.json")
                if not os.path.exists(path):
                    continue
                sw = json.load(open(path))
                steps = sw["steps"]
                ok = [s for s in steps if s["met_slo"] and s["within_budget"]]
                bad = [s for s in steps if not (s["met_slo"] and s["within_budget"])]
                total = sum(s["sessions"] for s in steps)
                c = cpu.get(name)
                if bad:
                    b = bad[0]
                    why = []
                    if not b["met_slo"]:
                        why.append(f"p99 {b['p99_us'] / 1000:.0f} ms")
                    if not b["within_budget"]:
                        why.append(f"errors {b['error_pct']:.2f}%")
                    nxt = f"{b['offered']:.0f}: " + ", ".join(why)
                else:
                    nxt = "none failed (range too low)"
                row = [tls_label(tls, c), spool, str(w)]
                if ok:
                    s = ok[-1]
                    row += [f"**{s['achieved']:.0f}** (offered {s['offered']:.0f})",
                            f"**{s['messages_per_s']:.0f}**", f"{s['p50_us'] / 1000:.1f} ms",
                            f"{s['p99_us'] / 1000:.0f} ms", f"{s['error_pct']:.3f}%"]
                else:
                    row += ["below the first step", "", "", "", ""]
                row.append(nxt)
                if c and total:
                    row += [f"{c['server_cpu_s'] * 1000 / total:.2f} s",
                            f"{c['loadgen_cpu_s'] * 1000 / total:.2f} s"]
                else:
                    row += ["", ""]
                print("| " + " | ".join(row) + " |")


main()
