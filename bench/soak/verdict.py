"""A run's verdict from what it recorded: RSS flat, no descriptor leak, what the clients saw, the
recovery time, and the report lines and tables.
"""

import json
import math
import os
import re

import chart
from common import VARYING, WORKERS
from delivery import check_delivery


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
