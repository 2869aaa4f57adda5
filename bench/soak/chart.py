"""The soak's RSS curve as an SVG chart: RSS and descriptors over time, the flat band, the fault."""

import math


def nice_ticks(lo, hi, n=6):
    """Ticks at round values (1, 2 or 5 x 10^k) covering lo..hi."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    end = math.ceil(hi / step - 1e-9) * step
    n = int(round((end - start) / step))
    return [round(start + i * step, 10) for i in range(n + 1)]


def fmt(v):
    return ("%d" % v) if abs(v - round(v)) < 1e-9 else ("%g" % v)


def rss_svg(path, rows, load_end, title, shade, marks, base_mib, limit_mib, warmup):
    W, H, L, R, T, B = 900, 420, 70, 70, 50, 50
    pts = [(r["t"], r["rss_kib"] / 1024.0, r.get("fds")) for r in rows if r.get("rss_kib")]
    if not pts:
        pts = [(0, 0, 0)]
    tmax = max(p[0] for p in pts)
    ymax = max(max(p[1] for p in pts), (base_mib or 0) + (limit_mib or 0)) * 1.1
    xt = nice_ticks(0, tmax)
    yt = nice_ticks(0, ymax)
    fmax = max([p[2] or 0 for p in pts] + [1]) * 1.1
    ft = nice_ticks(0, fmax)
    x1, y1, f1 = xt[-1] or 1, yt[-1] or 1, ft[-1] or 1

    def X(t):
        return L + (W - L - R) * t / x1

    def Y(v):
        return H - B - (H - T - B) * v / y1

    def F(v):
        return H - B - (H - T - B) * v / f1

    s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
         'font-size="12">' % (W, H), '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="22" font-size="14">%s</text>' % (L, title)]
    for lo, hi in shade:
        s.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#fbe3d6"/>'
                 % (X(lo), T, X(hi) - X(lo), H - T - B))
        s.append('<text x="%.1f" y="%d" fill="#a0522d">fault</text>' % (X(lo) + 3, T + 14))
    if base_mib is not None and limit_mib is not None:
        s.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#dff0d8" opacity="0.7"/>'
                 % (X(warmup), Y(base_mib + limit_mib), X(min(load_end, x1)) - X(warmup),
                    Y(base_mib) - Y(base_mib + limit_mib)))
        s.append('<text x="%.1f" y="%.1f" fill="#3c763d">flat band: +%s MiB</text>'
                 % (X(warmup) + 3, Y(base_mib + limit_mib) - 4, fmt(round(limit_mib, 1))))
    s.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#888" stroke-dasharray="4,3"/>'
             % (X(load_end), T, X(load_end), H - B))
    s.append('<text x="%.1f" y="%d" fill="#555">load ends (nominal)</text>' % (X(load_end) + 3, H - B - 6))
    for t, what in marks:
        s.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#c00"/>' % (X(t), T, X(t), H - B))
    for v in xt:
        s.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>' % (X(v), T, X(v), H - B))
        s.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (X(v), H - B + 16, fmt(v)))
    for v in yt:
        s.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/>' % (L, Y(v), W - R, Y(v)))
        s.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (L - 6, Y(v) + 4, fmt(v)))
    for v in ft:
        s.append('<text x="%d" y="%.1f" fill="#1f77b4">%s</text>' % (W - R + 6, F(v) + 4, fmt(v)))
    s.append('<text x="%d" y="%d" text-anchor="middle">time since the load started (s)</text>'
             % ((L + W - R) // 2, H - 12))
    s.append('<text transform="translate(18,%d) rotate(-90)" text-anchor="middle" fill="#d62728">'
             'RSS (MiB)</text>' % ((T + H - B) // 2))
    s.append('<text transform="translate(%d,%d) rotate(90)" text-anchor="middle" fill="#1f77b4">'
             'open descriptors</text>' % (W - 18, (T + H - B) // 2))
    s.append('<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="%s"/>'
             % " ".join("%.1f,%.1f" % (X(t), Y(v)) for t, v, _ in pts))
    s.append('<polyline fill="none" stroke="#1f77b4" stroke-width="1" points="%s"/>'
             % " ".join("%.1f,%.1f" % (X(t), F(f)) for t, _, f in pts if f is not None))
    s.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, H - B, W - R, H - B))
    s.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, T, L, H - B))
    s.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(s) + "\n")
