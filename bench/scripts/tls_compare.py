#!/usr/bin/env python3
"""Helper of tls_compare.sh: one measured load generator run, and the markdown tables.

  tls_compare.py run RESULTS.jsonl LABEL ROUND CPUSPEC JSONOUT -- LOADGEN ARGS...
      Reads the server's CPU time, runs the load generator (its --json summary goes to
      JSONOUT), waits a second for the server to finish what is in flight, reads the CPU
      time again and appends one JSON line to RESULTS.jsonl. CPUSPEC is `pid:N` (one
      process: utime+stime of all its threads) or `sid:N` (a Postfix instance: every process
      of session N, which the master leads, plus the master's cutime+cstime, which holds the
      children it has reaped; a child that exits between the two readings is counted once,
      live before and reaped after). The load generator's own CPU comes from RUSAGE_CHILDREN.
  tls_compare.py table RESULTS.jsonl [RSS.jsonl]
      Prints the tables: per label the value of every round and the median.
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    # comm may hold spaces and parentheses: the fields after it start past the last ')'.
    return s[s.rindex(")") + 2:].split()


def cpu_by_process(spec):
    """CPU seconds of the server, by command name (`reaped` holds the master's children
    that have exited)."""
    kind, n = spec.split(":")
    n = int(n)
    if kind == "pid":
        f = stat_fields(n)
        return {"server": (int(f[11]) + int(f[12])) / TCK}
    if kind != "sid":
        raise SystemExit(f"bad CPU spec {spec}")
    f = stat_fields(n)
    by = {"master": (int(f[11]) + int(f[12])) / TCK, "reaped": (int(f[13]) + int(f[14])) / TCK}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == n:
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                s = fh.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        f = s[s.rindex(")") + 2:].split()
        if int(f[3]) == n:  # session id
            by[comm] = by.get(comm, 0.0) + (int(f[11]) + int(f[12])) / TCK
    return by


def cpu_seconds(spec):
    return sum(cpu_by_process(spec).values())


def run(argv):
    results, label, rnd, spec, jsonout = argv[:5]
    if argv[5] != "--":
        raise SystemExit("run: expected -- before the load generator's command")
    cmd = argv[6:]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    by0 = cpu_by_process(spec)
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, timeout=300)
    wall = time.monotonic() - t0
    time.sleep(1)
    by1 = cpu_by_process(spec)
    cpu0, cpu1 = sum(by0.values()), sum(by1.values())
    # A child that exited moves from its own name to `reaped`: by name is indicative only.
    by_comm = {k: round(by1.get(k, 0.0) - by0.get(k, 0.0), 2) for k in set(by0) | set(by1)}
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(jsonout, "wb") as f:
        f.write(p.stdout)
    if p.returncode != 0:
        print(f"{label} round {rnd}: load generator exited {p.returncode}", file=sys.stderr)
    d = json.loads(p.stdout)
    tls = d.get("tls") or {}
    hs = tls.get("handshakes", 0)
    server_cpu = cpu1 - cpu0
    client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    msgs = d["messages"]
    sess = d["sessions"]
    row = {
        "label": label,
        "round": int(rnd),
        "elapsed_s": d["elapsed_s"],
        "wall_s": wall,
        "sessions": sess["started"],
        "sessions_ok": sess["ok"],
        "handshakes": hs,
        "resumed": tls.get("resumed", 0),
        "handshakes_per_s": hs / d["elapsed_s"] if hs else 0.0,
        "sessions_per_s": d["throughput"]["sessions_per_s"],
        "messages": msgs,
        "messages_per_s": d["throughput"]["messages_per_s"],
        "server_cpu_s": server_cpu,
        "server_cpu_by_process_s": {k: v for k, v in by_comm.items() if v},
        "client_cpu_s": client_cpu,
        "server_cpu_us_per_handshake": server_cpu * 1e6 / hs if hs else None,
        "client_cpu_us_per_handshake": client_cpu * 1e6 / hs if hs else None,
        "server_cpu_us_per_message": server_cpu * 1e6 / msgs if msgs else None,
        "errors": d["errors"],
        "mismatches": d["mismatches"],
        "load1": os.getloadavg()[0],
    }
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
    e = d["errors"]
    print(f"{label} r{rnd}: {row['handshakes_per_s']:.0f} handshakes/s "
          f"({row['resumed']} of {hs} resumed), {row['messages_per_s']:.0f} messages/s, "
          f"server CPU {server_cpu:.2f} s"
          + (f" = {row['server_cpu_us_per_handshake']:.0f} us/handshake" if hs else "")
          + (f" = {row['server_cpu_us_per_message']:.1f} us/message" if msgs else "")
          + f", client CPU {client_cpu:.2f} s; errors mismatch={e['mismatch']} "
          f"reset={e['reset']} timeout={e['timeout']} tls={e['tls']} refused={e['refused']}; "
          f"load {row['load1']:.2f}", file=sys.stderr)


def fmt(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def cell(rows, key, digits=0, scale=1.0):
    vals = [r[key] * scale for r in rows if r.get(key) is not None]
    if not vals:
        return "–", None
    med = statistics.median(vals)
    return " / ".join(fmt(v, digits) for v in vals) + f" (median {fmt(med, digits)})", med


def errors_cell(rows):
    tot = {}
    for r in rows:
        for k, v in r["errors"].items():
            if k != "total" and v:
                tot[k] = tot.get(k, 0) + v
    sessions = sum(r["sessions"] for r in rows)
    if not tot:
        return f"0 of {sessions:,}"
    return ", ".join(f"{v:,} {k}" for k, v in tot.items()) + f" of {sessions:,}"


def table(argv):
    rows = [json.loads(l) for l in open(argv[0]) if l.strip()]
    by = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
    for v in by.values():
        v.sort(key=lambda r: r["round"])

    def section(prefix, title, resume):
        labels = [l for l in by if l.startswith(prefix)]
        if not labels:
            return
        print(f"\n### {title}\n")
        print("| server | certificate | connections | handshakes/s | server CPU µs/handshake "
              "| client CPU µs/handshake | resumed | loadgen errors (sessions) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        meds = {}
        for l in labels:
            rs = by[l]
            _, server, cert, conns = l.split("/")
            rate, mr = cell(rs, "handshakes_per_s")
            cpu, mc = cell(rs, "server_cpu_us_per_handshake")
            ccpu, _ = cell(rs, "client_cpu_us_per_handshake")
            hs = sum(r["handshakes"] for r in rs)
            res = sum(r["resumed"] for r in rs)
            resumed = f"{100 * res / hs:.0f}%" if hs else "–"
            meds[(server, cert, conns)] = (mr, mc)
            print(f"| {server} | {cert} | {conns} | {rate} | {cpu} | {ccpu} | {resumed} "
                  f"| {errors_cell(rs)} |")
        ratios = []
        for (server, cert, conns), (mr, mc) in meds.items():
            p = meds.get(("postfix", cert, conns))
            if server.startswith("ringmx") and p and p[0] and mr and mc:
                ratios.append(f"{server} vs postfix, {cert}, {conns} connections: "
                              f"{mr / p[0]:.2f}× the handshakes/s, {p[1] / mc:.2f}× less server "
                              f"CPU per handshake")
        for l in labels:
            if "/postfix/" not in l:
                continue
            tot = {}
            for r in by[l]:
                for k, v in r.get("server_cpu_by_process_s", {}).items():
                    # An smtpd that exits moves from its name to the master's reaped
                    # children: only their sum means something.
                    if k in ("smtpd", "reaped"):
                        k = "smtpd and exited children"
                    elif k not in ("master", "tlsmgr", "postlogd"):
                        k = "others"
                    tot[k] = tot.get(k, 0.0) + v
            hs = sum(r["handshakes"] for r in by[l])
            if tot and hs:
                parts = ", ".join(f"{k} {v * 1e6 / hs:.0f}" for k, v in
                                  sorted(tot.items(), key=lambda kv: -kv[1]))
                ratios.append(f"{l}: Postfix CPU µs per handshake by process: {parts}")
        if ratios:
            print()
            for r in ratios:
                print(f"- {r}")

    section("full/", "Full handshakes (STARTTLS, no resumption), starttls class", False)
    section("fullb/", "Full handshakes (STARTTLS, no resumption), the resumption runs' class",
            False)
    section("resume/", "With resumption (`--tls-resume`)", True)

    labels = [l for l in by if l.startswith("plain/")]
    if labels:
        print("\n### Baseline: the same sessions in plaintext\n")
        print("| server | connections | sessions/s | server CPU µs/session "
              "| client CPU µs/session | loadgen errors (sessions) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for l in labels:
            rs = by[l]
            for r in rs:
                n = max(r["sessions"], 1)
                r["server_cpu_us_per_session"] = r["server_cpu_s"] * 1e6 / n
                r["client_cpu_us_per_session"] = r["client_cpu_s"] * 1e6 / n
            _, server, _, conns = l.split("/")
            rate, _ = cell(rs, "sessions_per_s")
            cpu, _ = cell(rs, "server_cpu_us_per_session")
            ccpu, _ = cell(rs, "client_cpu_us_per_session")
            print(f"| {server} | {conns} | {rate} | {cpu} | {ccpu} | {errors_cell(rs)} |")

    derived(by)

    plain = [r for l, rs in by.items() if l.startswith("msgs/ringmx/plain/") for r in rs]
    tls = [r for l, rs in by.items() if l.startswith("msgs/ringmx/starttls/") for r in rs]
    if plain or tls:
        print("\n### Messages/s, 100 messages per connection, ringmx `--sink --workers 1`\n")
        print("| mode | messages/s | server CPU µs/message | loadgen errors (sessions) |")
        print("| --- | --- | --- | --- |")
        for name, rs in (("plaintext", plain), ("STARTTLS", tls)):
            if rs:
                m, _ = cell(rs, "messages_per_s")
                c, _ = cell(rs, "server_cpu_us_per_message", 2)
                print(f"| {name} | {m} | {c} | {errors_cell(rs)} |")
        pr = {r["round"]: r for r in plain}
        ratios = [t["messages_per_s"] / pr[t["round"]]["messages_per_s"]
                  for t in tls if t["round"] in pr and pr[t["round"]]["messages_per_s"]]
        if ratios:
            print(f"\nSTARTTLS / plaintext messages/s, per round: "
                  + " / ".join(f"{x:.2f}" for x in ratios)
                  + f" (median {statistics.median(ratios):.2f}; goal ≥ 0.8)")

    if len(argv) > 1 and os.path.exists(argv[1]):
        rss = [json.loads(l) for l in open(argv[1]) if l.strip()]
        if rss:
            print("\n### RSS per idle session, ringmx `--sink --workers 1`\n")
            print("| session | sessions | RSS before (KiB) | RSS after (KiB) "
                  "| (after − before) / sessions | marginal: growth past the first WARM "
                  "sessions / (N − WARM) |")
            print("| --- | --- | --- | --- | --- | --- |")
            for r in rss:
                total = (r["rss_end_kib"] - r["rss_start_kib"]) / r["sessions"]
                print(f"| {r['mode']} | {r['sessions']:,} | {r['rss_start_kib']:,} "
                      f"| {r['rss_end_kib']:,} | {total:.1f} KiB | "
                      f"{r['per_session_bytes'] / 1024:.1f} KiB (WARM {r['warm']:,}) |")


def median_of(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def derived(by):
    """Server CPU of TLS alone: medians of the same sessions with full handshakes, with
    resumption and in plaintext."""
    out = []
    for l in by:
        if not l.startswith("resume/"):
            continue
        _, server, cert, conns = l.split("/")
        # Per-session CPU depends on the concurrency (events per wakeup, processes reused):
        # only runs with as many connections as the full-handshake runs compare.
        full = [r for r in by.get(f"fullb/{server}/{cert}/{conns}", [])]
        plain = [r for k, rs in by.items() if k.startswith(f"plain/{server}/") for r in rs]
        if not full or not plain:
            continue
        base = statistics.median(r["server_cpu_s"] * 1e6 / max(r["sessions"], 1) for r in plain)
        f = median_of(full, "server_cpu_us_per_handshake")
        res = by[l]
        m = median_of(res, "server_cpu_us_per_handshake")
        hs = sum(r["handshakes"] for r in res)
        share = sum(r["resumed"] for r in res) / hs if hs else 0
        one = ((m - base) - (1 - share) * (f - base)) / share if share > 0.05 else None
        out.append((server, cert, conns, base, f, f - base, m, share, one))
    if not out:
        return
    print("\n### Server CPU of TLS alone (medians, µs; same sessions, baseline subtracted)\n")
    print("| server | certificate | connections | plaintext session "
          "| full-handshake session | TLS part of a full handshake | resumption-run session "
          "| resumed | one resumed handshake, TLS part (derived) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for server, cert, conns, base, f, tf, m, share, one in out:
        print(f"| {server} | {cert} | {conns} | {base:,.0f} | {f:,.0f} | {tf:,.0f} | {m:,.0f} "
              f"| {100 * share:.0f}% | {fmt(one)} |")
    print("\nThe derived column divides by the resumed share, so it amplifies the noise of the "
          "medians by 1/share (×2 for Postfix, which issues no ticket on a resumed session).")


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    if sys.argv[1] == "run":
        run(sys.argv[2:])
    elif sys.argv[1] == "table":
        table(sys.argv[2:])
    elif sys.argv[1] == "cpu":
        print(cpu_seconds(sys.argv[2]))
    else:
        raise SystemExit(__doc__)


main()
