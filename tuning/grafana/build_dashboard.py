#!/usr/bin/env python3
"""Writes ringmx.json, the Grafana dashboard, from the table of panels below.

The JSON is what operators import; this script is only how it is kept consistent (grid
positions, ids, the datasource and instance selectors on every query). Edit the table, run
`python3 tuning/grafana/build_dashboard.py`, commit both.

Every expression uses only the metric names `ringmx serve --metrics-listen` exports.
`$instance` and `$__rate_interval` are Grafana's; render.py substitutes them the same way.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
I = 'instance=~"$instance"'
R = "$__rate_interval"
# The process_* names are every exporter's: keep only the targets that are ringmx.
ONLY_RINGMX = " and on (instance, job) ringmx_build_info"


def rate(metric, sel="", by=None, agg="sum"):
    """sum [by (...)] (rate(metric{instance, sel}[$__rate_interval]))"""
    inner = f"{metric}{{{I}{', ' + sel if sel else ''}}}"
    grouping = f" by ({', '.join(by)})" if by else ""
    return f"{agg}{grouping}(rate({inner}[{R}]))"


def quantile(q, metric, by=()):
    by = ", ".join(list(by) + ["le"])
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{I}}}[{R}])))"


def mean(metric, by=None):
    return f"{rate(metric + '_sum', by=by)} / {rate(metric + '_count', by=by)}"


# (row title, [panel, ...]); a panel: title, description, unit, axis label, width, targets
# [(expr, legend)], and optionally "stack": True, "type": "table" (instant query).
ROWS = [
    ("Traffic", [
        dict(title="Sessions accepted", unit="cps", axis="sessions/s", w=6,
             desc="Connections accepted per second, all listeners.",
             targets=[(rate("ringmx_connections_total", 'result="accepted"'), "accepted")]),
        dict(title="Messages", unit="cps", axis="messages/s", w=6,
             desc="Messages acknowledged with 250 (on disk) and messages refused, by reason.",
             targets=[(rate("ringmx_messages_accepted_total"), "accepted"),
                      (rate("ringmx_messages_rejected_total", by=["reason"]), "rejected: {{reason}}")]),
        dict(title="Active sessions", unit="short", axis="sessions", w=6,
             desc="Sessions open now, all workers.",
             targets=[(f"sum(ringmx_sessions_active{{{I}}})", "active")]),
        dict(title="Connections refused", unit="cps", axis="connections/s", w=6, stack=True,
             desc="Connections not served, by reason: at max_connections, during shutdown, "
                  "out of descriptors, not attached to a worker.",
             targets=[(rate("ringmx_connections_total", 'result!="accepted"', by=["result"]), "{{result}}")]),
        dict(title="Sessions closed", unit="cps", axis="sessions/s", w=8, stack=True,
             desc="Sessions ended per second, by why they ended.",
             targets=[(rate("ringmx_sessions_closed_total", by=["reason"]), "{{reason}}")]),
        dict(title="Commands", unit="cps", axis="commands/s", w=8,
             desc="SMTP commands handled, and those answered with an error.",
             targets=[(rate("ringmx_commands_total"), "commands"),
                      (rate("ringmx_command_errors_total"), "errors")]),
        dict(title="Received", unit="Bps", axis="bytes/s", w=8,
             desc="Message octets received.",
             targets=[(rate("ringmx_received_octets_total"), "received")]),
    ]),
    ("Replies", [
        dict(title="Replies by class", unit="cps", axis="replies/s", w=8,
             desc="Replies sent per second, by the first digit of the code.",
             targets=[(f'sum by (class) (label_replace({rate("ringmx_replies_total", by=["code"])}, '
                       f'"class", "${{1}}xx", "code", "([0-9]).."))', "{{class}}")]),
        dict(title="Top 5xx by enhanced code", unit="cps", axis="replies/s", w=8,
             desc="The five most frequent permanent failures at each moment (RFC 3463 codes).",
             targets=[("topk(5, " + rate("ringmx_replies_total", 'code=~"5.."', by=["code", "enhanced"]) + ")",
                       "{{code}} {{enhanced}}")]),
        dict(title="4xx by enhanced code", unit="cps", axis="replies/s", w=8,
             desc="Temporary failures: 421 limits and timeouts, 452 storage or recipients.",
             targets=[(rate("ringmx_replies_total", 'code=~"4.."', by=["code", "enhanced"]),
                       "{{code}} {{enhanced}}")]),
    ]),
    ("Abuse", [
        dict(title="Non-SMTP sessions", unit="cps", axis="sessions/s", w=6, stack=True,
             desc="Sessions that sent HTTP, SSH, TLS on the plain port or binary: one 554, closed.",
             targets=[(rate("ringmx_non_smtp_sessions_total", by=["class"]), "{{class}}")]),
        dict(title="Per-client limit hits", unit="cps", axis="refusals/s", w=6, stack=True,
             desc="421 4.7.0 for too many connections or connection attempts from one client.",
             targets=[(rate("ringmx_client_limit_hits_total", by=["limit"]), "{{limit}}")]),
        dict(title="PROXY headers", unit="cps", axis="headers/s", w=6, stack=True,
             desc="PROXY protocol headers on proxy listeners, by outcome.",
             targets=[(rate("ringmx_proxy_headers_total", by=["outcome"]), "{{outcome}}")]),
        dict(title="TLS", unit="cps", axis="handshakes/s", w=6,
             desc="Handshakes completed by version, resumed ones, and failures by cause.",
             targets=[(rate("ringmx_tls_handshakes_total", by=["version"]), "{{version}}"),
                      (rate("ringmx_tls_resumed_total"), "resumed"),
                      (rate("ringmx_tls_failures_total", by=["cause"]), "failed: {{cause}}")]),
    ]),
    ("Spool", [
        dict(title="Commit latency", unit="s", axis="seconds", w=8,
             desc="Per message, from its hand-over to the committer to its batch being durable.",
             targets=[(quantile(0.5, "ringmx_spool_commit_seconds"), "p50"),
                      (quantile(0.99, "ringmx_spool_commit_seconds"), "p99")]),
        dict(title="Commit batch size", unit="short", axis="messages per commit", w=8,
             desc="Messages sharing one commit batch: the mean, and p99 (interpolated within the "
                  "histogram's power-of-two buckets, so a run of single-message batches reads 0.99).",
             targets=[(quantile(0.99, "ringmx_spool_commit_batch_messages"), "p99"),
                      (mean("ringmx_spool_commit_batch_messages"), "mean")]),
        dict(title="Commits", unit="cps", axis="per second", w=8,
             desc="Commit batches (one sync each per segment or file) and the messages in them.",
             targets=[(rate("ringmx_spool_commit_batch_messages_count"), "batches"),
                      (rate("ringmx_spool_commit_seconds_count"), "messages")]),
    ]),
    ("Queue and delivery", [
        dict(title="Queue", unit="short", axis="messages", w=6,
             desc="Messages in the delivery queue.",
             targets=[(f"sum(ringmx_queue_messages{{{I}}})", "queued")]),
        dict(title="Oldest queued message", unit="s", axis="seconds", w=6,
             desc="Age of the oldest message in the queue.",
             targets=[(f"max(ringmx_queue_oldest_age_seconds{{{I}}})", "oldest")]),
        dict(title="Recipients by outcome", unit="cps", axis="recipients/s", w=12,
             desc="Delivery attempts per recipient and destination: delivered, deferred, failed.",
             targets=[(rate("ringmx_delivery_recipients_total", by=["destination", "result"]),
                       "{{result}} {{destination}}")]),
        dict(title="Delivery latency p99", unit="s", axis="seconds", w=8,
             desc="From a message's commit to the reply that delivered a recipient (queueing and "
                  "retries included), p99 per destination.",
             targets=[(quantile(0.99, "ringmx_delivery_seconds", by=["destination"]), "{{destination}}")]),
        dict(title="Connection failures", unit="cps", axis="failures/s", w=8,
             desc="Connections to a next hop that failed (refused, timed out, broken).",
             targets=[(rate("ringmx_delivery_connection_failures_total", by=["destination"]),
                       "{{destination}}")]),
        dict(title="Notifications sent", unit="cps", axis="DSNs/s", w=8,
             desc="Delivery status notifications (RFC 3464) for failed recipients.",
             targets=[(rate("ringmx_delivery_dsn_sent_total"), "DSNs")]),
    ]),
    ("Process", [
        dict(title="Resident memory", unit="bytes", axis="bytes", w=6,
             desc="RSS per instance.",
             targets=[(f"process_resident_memory_bytes{{{I}}}{ONLY_RINGMX}", "{{instance}}")]),
        dict(title="Open descriptors", unit="short", axis="descriptors", w=6,
             desc="Open file descriptors per instance.",
             targets=[(f"process_open_fds{{{I}}}{ONLY_RINGMX}", "{{instance}}")]),
        dict(title="CPU", unit="short", axis="cores", w=6,
             desc="CPU seconds per second (1 = one core busy), per instance.",
             targets=[(f"rate(process_cpu_seconds_total{{{I}}}[{R}]){ONLY_RINGMX}", "{{instance}}")]),
        dict(title="Internal errors", unit="cps", axis="events/s", w=6,
             desc="Log lines dropped by the bounded writer, io_uring buffer exhaustion, accept "
                  "errors by cause, configuration reloads.",
             targets=[(rate("ringmx_log_lines_dropped_total"), "log lines dropped"),
                      (rate("ringmx_uring_enobufs_total"), "uring ENOBUFS"),
                      (rate("ringmx_accept_errors_total", by=["cause"]), "accept: {{cause}}"),
                      (rate("ringmx_config_reloads_total", by=["result"]), "reload {{result}}")]),
        dict(title="Build", type="table", w=24, h=4,
             desc="Version, backend and spool format of each instance.",
             targets=[(f"ringmx_build_info{{{I}}}", "")]),
    ]),
]

def panel(pid, spec, x, y):
    h = spec.get("h", 8)
    targets = []
    for i, (expr, legend) in enumerate(spec["targets"]):
        t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto",
             "refId": chr(ord("A") + i), "range": spec.get("type") != "table",
             "instant": spec.get("type") == "table"}
        if spec.get("type") == "table":
            t["format"] = "table"
        targets.append(t)
    p = {"id": pid, "type": spec.get("type", "timeseries"), "title": spec["title"],
         "description": spec["desc"], "datasource": DS,
         "gridPos": {"h": h, "w": spec["w"], "x": x, "y": y}, "targets": targets}
    if p["type"] == "table":
        p["fieldConfig"] = {"defaults": {}, "overrides": []}
        p["options"] = {"showHeader": True}
        p["transformations"] = [{"id": "organize", "options": {
            "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True}}}]
        return p, h
    p["fieldConfig"] = {
        "defaults": {
            "unit": spec["unit"], "min": 0, "decimals": None,
            "color": {"mode": "palette-classic"},
            "custom": {"axisLabel": spec["axis"], "drawStyle": "line", "lineWidth": 1,
                       "fillOpacity": 30 if spec.get("stack") else 10,
                       "showPoints": "never", "spanNulls": False,
                       "stacking": {"mode": "normal" if spec.get("stack") else "none",
                                    "group": "A"}},
        },
        "overrides": [],
    }
    p["fieldConfig"]["defaults"].pop("decimals")
    p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}}
    return p, h


def dashboard():
    panels, y, pid = [], 0, 1
    for title, specs in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        x, row_h = 0, 0
        for spec in specs:
            if x + spec["w"] > 24:
                x, y, row_h = 0, y + row_h, 0
            p, h = panel(pid, spec, x, y)
            panels.append(p)
            pid += 1
            x += spec["w"]
            row_h = max(row_h, h)
        y += row_h
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "table", "name": "Table", "version": ""},
        ],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": "ringmx inbound MX frontend: traffic, replies, abuse, spool, queue and "
                       "delivery, process. Metrics from ringmx serve --metrics-listen.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "10s",
        "schemaVersion": 39,
        "tags": ["ringmx", "smtp", "mail"],
        "templating": {"list": [
            {"name": "DS_PROMETHEUS", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0, "includeAll": False,
             "multi": False, "options": [], "refresh": 1, "regex": "", "skipUrlSync": False},
            {"name": "instance", "label": "Instance", "type": "query", "datasource": DS,
             "definition": "label_values(ringmx_build_info, instance)",
             "query": {"query": "label_values(ringmx_build_info, instance)", "refId": "instance"},
             "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
             "includeAll": True, "allValue": ".*", "multi": True, "hide": 0, "options": [],
             "refresh": 2, "regex": "", "sort": 1, "skipUrlSync": False},
        ]},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "title": "ringmx",
        "uid": "ringmx-mx",
        "version": 1,
        "weekStart": "",
    }


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ringmx.json")
    with open(out, "w") as f:
        json.dump(dashboard(), f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(out)
