"""The delivery check: every message a client was answered 250 for reached the downstream, each
recipient exactly once, or a second time only where a crash explains it.
"""

import json
import os
import re

from common import DEST_CONCURRENCY


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
