#!/usr/bin/env python3
"""Draws a Grafana dashboard's panels from a real Prometheus, without Grafana.

Reads the dashboard JSON (ringmx.json), runs every target's PromQL expression through
Prometheus's HTTP API (/api/v1/query_range; /api/v1/query for table panels) over one time
range, and draws each panel with matplotlib where its gridPos puts it (24 columns, rows as in
Grafana). `$instance` becomes --instance (a regex), `$__rate_interval` becomes --rate-interval;
nothing else of an expression is changed, so what is drawn is what the dashboard would ask.

It prints one line per target (series returned, how many of them moved, or EMPTY) and exits
with status 2 when any target came back empty, 0 otherwise, so a run shows which panels have
no data. Series that stay 0 over the whole range are left out of a panel and counted in its
corner (the server exports every label value from the start).

Usage: render.py --prometheus http://127.0.0.1:9090 --start UNIX --end UNIX
                 [--dashboard ringmx.json] [--out dashboard.png] [--step 1]
                 [--rate-interval 5s] [--instance '.*'] [--phases phases.json] [--title TEXT]
phases.json: [{"start": UNIX, "name": "..."}, ...], drawn as marks on every time axis.
"""
import argparse
import json
import math
import os
import sys
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

# Grafana's dark theme and its classic palette, in its order.
BG, PANEL, BORDER, TEXT, MUTED, GRID = "#111217", "#181b1f", "#2c3235", "#ccccdc", "#8e8e9c", "#2a2d33"
PALETTE = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9",
           "#705DA0", "#37872D", "#FADE2A", "#447EBC", "#C15C17", "#890F02", "#0A437C",
           "#6D1F62", "#584477"]

COL_IN = 20.0 / 24   # figure inches per grid column
ROW_IN = 0.40        # figure inches per grid row unit


def query(base, path, params):
    data = urllib.parse.urlencode(params).encode()
    with urllib.request.urlopen(urllib.request.Request(base + path, data=data), timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{params.get('query')}: {body.get('error')}")
    return body["data"]["result"]


def substitute(expr, args):
    return expr.replace("$__rate_interval", args.rate_interval).replace("${instance}", args.instance) \
        .replace("$instance", args.instance)


def legend(fmt, labels):
    if not fmt or fmt == "__auto":
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return labels.get("__name__", "") + ("{" + inner + "}" if inner else "")
    out = fmt
    while "{{" in out:
        a = out.index("{{")
        b = out.index("}}", a)
        out = out[:a] + labels.get(out[a + 2:b].strip(), "") + out[b + 2:]
    return out.strip()


# Unit handling: data are rescaled so the axis reads in round numbers of a named unit.
def scale_for(unit, vmax):
    if unit in ("bytes", "Bps"):
        suffix = "/s" if unit == "Bps" else ""
        for name, f in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
            if vmax >= f:
                return f, name + suffix
        return 1, "B" + suffix
    if unit == "s":
        if vmax >= 1:
            return 1, "s"
        if vmax >= 1e-3 or vmax == 0:
            return 1e-3, "ms"
        return 1e-6, "µs"
    return 1, None


def count_formatter():
    def fmt(v, _pos):
        a = abs(v)
        for f, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if a >= f:
                return f"{v / f:g}{s}"
        return f"{v:g}"
    return ticker.FuncFormatter(fmt)


def style_axes(ax):
    ax.set_facecolor(PANEL)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.tick_params(colors=MUTED, labelsize=7, length=0, pad=3)
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.set_axisbelow(True)


def panel_box(fig, gp, total_h):
    """The panel's rectangle in figure fractions, with Grafana's 8 px-ish gutters."""
    W, H = fig.get_size_inches()
    g = 0.06  # inches of gutter
    x0 = gp["x"] * COL_IN + g
    y_top = gp["y"] * ROW_IN + g
    w = gp["w"] * COL_IN - 2 * g
    h = gp["h"] * ROW_IN - 2 * g
    top_margin = 0.9  # inches: figure title area
    return (x0 / W, 1 - (top_margin + y_top + h) / H, w / W, h / H)


def draw_frame(fig, rect, title):
    x, y, w, h = rect
    bg = fig.add_axes(rect)
    bg.set_xticks([])
    bg.set_yticks([])
    bg.set_facecolor(PANEL)
    for s in bg.spines.values():
        s.set_color(BORDER)
    bg.text(0.012 * 24 / max(1, w * fig.get_size_inches()[0] / COL_IN), 1 - 0.11 / (h * fig.get_size_inches()[1]),
            title, transform=bg.transAxes, color=TEXT, fontsize=9, fontweight="bold", va="top", ha="left")
    return bg


def draw_timeseries(fig, rect, p, results, grid, args, marks):
    W, H = fig.get_size_inches()
    x, y, w, h = rect
    draw_frame(fig, rect, p["title"])
    series = []
    for (t, res) in results:
        for r in sorted(res, key=lambda r: legend(t.get("legendFormat"), r["metric"])):
            vals = {round(float(ts)): float(v) for ts, v in r["values"]}
            series.append((legend(t.get("legendFormat"), r["metric"]),
                           [vals.get(ts, math.nan) for ts in grid]))
    # Series that stay 0 over the whole range (every label value is exported from the start)
    # are left out; a panel whose series all stay 0 says so.
    moved = [sv for sv in series if any(v for v in sv[1] if not math.isnan(v))]
    quiet = len(series) - len(moved)
    series = moved
    n_leg = len(series)
    ncol = max(1, min(n_leg, int(w * W / 1.7)))
    leg_rows = math.ceil(n_leg / ncol) if n_leg else 0
    # Inches reserved inside the panel: title, x tick labels, legend rows, y label and ticks.
    top_in, bottom_in, left_in, right_in = 0.34, 0.30 + 0.17 * leg_rows, 0.62, 0.15
    ax = fig.add_axes((x + left_in / W, y + bottom_in / H, w - (left_in + right_in) / W,
                       h - (top_in + bottom_in) / H))
    style_axes(ax)
    defaults = p.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit", "short")
    axis_label = defaults.get("custom", {}).get("axisLabel", "")
    stacked = defaults.get("custom", {}).get("stacking", {}).get("mode") == "normal"
    t0 = grid[0]
    xs = [ts - t0 for ts in grid]
    ax.set_xlim(0, xs[-1])
    ax.xaxis.set_major_locator(ticker.MultipleLocator(30 if xs[-1] > 90 else 10))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _p: f"{v:g} s" if v else ""))
    for n, m in marks:
        ax.axvline(m - t0, color=MUTED, linewidth=0.7, linestyle=(0, (3, 3)), alpha=0.8)
        ax.text(m - t0, 1.0, f" {n}", transform=ax.get_xaxis_transform(), color=MUTED,
                fontsize=6.5, va="top", ha="left")
    if not series:
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.text(0.5, 0.5, f"0 throughout ({quiet} series)" if quiet else "No data",
                transform=ax.transAxes, ha="center", va="center", color=MUTED, fontsize=10)
        return
    if quiet:
        ax.text(1.0, 1.02, f"{quiet} series at 0 not shown", transform=ax.transAxes,
                ha="right", va="bottom", color=MUTED, fontsize=6.5)
    finite = [v for _, vs in series for v in vs if not math.isnan(v)]
    if stacked:
        sums = [sum(0 if math.isnan(vs[i]) else vs[i] for _, vs in series) for i in range(len(grid))]
        vmax = max(sums) if sums else 0
    else:
        vmax = max(finite) if finite else 0
    factor, unit_name = scale_for(unit, vmax)
    ylabel = axis_label if unit_name is None else unit_name
    if unit_name is None:
        ax.yaxis.set_major_formatter(count_formatter())
    ax.set_ylabel(ylabel, color=MUTED, fontsize=7.5, labelpad=3)
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    if stacked:
        ys = [[0 if math.isnan(v) else v / factor for v in vs] for _, vs in series]
        ax.stackplot(xs, ys, colors=colours, alpha=0.45, linewidth=0)
        acc = [0.0] * len(xs)
        for c, yv in zip(colours, ys):
            acc = [a + b for a, b in zip(acc, yv)]
            ax.plot(xs, acc, color=c, linewidth=1.1)
    else:
        for c, (_, vs) in zip(colours, series):
            yv = [v / factor for v in vs]
            ax.plot(xs, yv, color=c, linewidth=1.2)
            ax.fill_between(xs, yv, 0, color=c, alpha=0.10, linewidth=0)
    top = vmax / factor
    if top <= 0 or math.isnan(top):
        top = 1
    ax.set_ylim(0, top * 1.08)
    ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10], min_n_ticks=3))
    if unit_name is None and top < 4:
        ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10],
                                                      integer=vmax >= 1 and unit == "short"))
    handles = [plt.Line2D([], [], color=c, linewidth=3) for c in colours]
    fig.legend(handles, [name for name, _ in series], loc="upper left", ncol=ncol,
               bbox_to_anchor=(x + 0.10 / W, y + (bottom_in - 0.30) / H + 0.02 / H),
               frameon=False, fontsize=7, labelcolor=TEXT, handlelength=1.0,
               columnspacing=1.2, handletextpad=0.4, borderaxespad=0, borderpad=0)


def draw_table(fig, rect, p, rows):
    bg = draw_frame(fig, rect, p["title"])
    if not rows:
        bg.text(0.5, 0.45, "No data", transform=bg.transAxes, ha="center", color=MUTED, fontsize=11)
        return
    drop = {"__name__", "job"}
    cols = sorted({k for r in rows for k in r["metric"] if k not in drop},
                  key=lambda k: (k != "instance", k))
    H = rect[3] * fig.get_size_inches()[1]
    line = 0.24 / H
    top = 1 - 0.42 / H
    for j, c in enumerate(cols):
        bg.text(0.01 + j / len(cols) * 0.98, top, c, transform=bg.transAxes, color=MUTED,
                fontsize=8, fontweight="bold", va="top")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            bg.text(0.01 + j / len(cols) * 0.98, top - (i + 1) * line, r["metric"].get(c, ""),
                    transform=bg.transAxes, color=TEXT, fontsize=8, va="top")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--dashboard", default=os.path.join(here, "ringmx.json"))
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--start", type=float, required=True)
    ap.add_argument("--end", type=float, required=True)
    ap.add_argument("--step", type=int, default=1)
    ap.add_argument("--rate-interval", default="5s")
    ap.add_argument("--instance", default=".*")
    ap.add_argument("--phases")
    ap.add_argument("--title")
    ap.add_argument("--out", default=os.path.join(here, "dashboard.png"))
    args = ap.parse_args()

    dash = json.load(open(args.dashboard))
    start, end = int(args.start), int(args.end)
    grid = list(range(start, end + 1, args.step))
    phases = json.load(open(args.phases)) if args.phases else []
    marks = [(n, ph["start"]) for n, ph in enumerate(phases, 1) if start <= ph["start"] < end]

    panels = dash["panels"]
    total_h = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    plt.rcParams["font.family"] = "DejaVu Sans"
    fig = plt.figure(figsize=(24 * COL_IN, total_h * ROW_IN + 1.0), facecolor=BG)
    W, H = fig.get_size_inches()
    fig.text(0.06 / W, 1 - 0.18 / H, args.title or dash.get("title", ""), color=TEXT,
             fontsize=14, fontweight="bold", va="top")
    if phases:
        desc = "    ".join(f"{n} ({ph['start'] - start:g} s) {ph['name']}"
                             for n, ph in enumerate(phases, 1) if start <= ph["start"] < end)
        fig.text(0.06 / W, 1 - 0.50 / H, "load phases, dashed lines:    " + desc, color=MUTED,
                 fontsize=8.5, va="top")

    empty = 0
    for p in panels:
        gp = p["gridPos"]
        if p["type"] == "row":
            W, H = fig.get_size_inches()
            fig.text((gp["x"] * COL_IN + 0.08) / W, 1 - (0.9 + gp["y"] * ROW_IN + 0.30) / H,
                     p["title"], color=TEXT, fontsize=11.5, fontweight="bold", va="bottom")
            continue
        rect = panel_box(fig, gp, total_h)
        if p["type"] == "table":
            rows = []
            for t in p["targets"]:
                expr = substitute(t["expr"], args)
                res = query(args.prometheus, "/api/v1/query", {"query": expr, "time": end})
                print(f"{p['title']:<28} {len(res):>3} series  {expr}")
                empty += not res
                rows += res
            draw_table(fig, rect, p, rows)
            continue
        results = []
        for t in p["targets"]:
            expr = substitute(t["expr"], args)
            res = query(args.prometheus, "/api/v1/query_range",
                        {"query": expr, "start": start, "end": end, "step": args.step})
            nonzero = sum(any(float(v) for _, v in r["values"] if v != "NaN") for r in res)
            state = f"{len(res):>3} series, {nonzero:>2} moved" if res else "    EMPTY"
            print(f"{p['title']:<28} {state}  {expr}")
            empty += not res
            results.append((t, res))
        draw_timeseries(fig, rect, p, results, grid, args, marks)

    fig.savefig(args.out, dpi=100, facecolor=BG)
    print(f"wrote {args.out}; {empty} target(s) empty")
    sys.exit(2 if empty else 0)


if __name__ == "__main__":
    main()
