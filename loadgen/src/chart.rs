//! SVG line charts, hand-written (no plotting dependency): report.svg and the panels sweep.svg is made of.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::stats::{Collected, IntervalRow};
use crate::vocab::PHASES;

/// One colour per phase (the tls phase made ten), so no two series share one.
const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf",
    "#bcbd22",
];

/// Margins around a panel's plot area: left (y tick labels), right (legend), top (title), bottom.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 45.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// One chart panel: axes, grid labels, polylines and a legend.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// Tick positions (in data units) and their labels.
    pub x_ticks: Vec<(f64, String)>,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Horizontal reference line (e.g. an SLO), with its label.
    pub h_line: Option<(f64, String)>,
}

/// Where a panel sits and how data units map to it: x over `x0..x1`, y over `0..y1`.
struct Frame {
    ox: f64,
    oy: f64,
    w: f64,
    h: f64,
    pw: f64,
    ph: f64,
    x0: f64,
    x1: f64,
    y1: f64,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        self.ox + LEFT + (x - self.x0) / (self.x1 - self.x0) * self.pw
    }

    fn py(&self, y: f64) -> f64 {
        self.oy + TOP + self.ph - y / self.y1 * self.ph
    }
}

impl Chart<'_> {
    pub fn render(&self, s: &mut String, ox: f64, oy: f64, w: f64, h: f64) {
        let f = self.frame(ox, oy, w, h);
        self.axes(s, &f);
        self.reference_line(s, &f);
        self.lines(s, &f);
    }

    /// The data ranges: x spans every point and tick, y starts at 0 with 10% headroom.
    fn frame(&self, ox: f64, oy: f64, w: f64, h: f64) -> Frame {
        let xs = self.series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
        let xs = xs.chain(self.x_ticks.iter().map(|t| t.0));
        let (mut x0, mut x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 - x0 < 1e-9 {
            x1 = x0 + 1.0;
        }
        let ys = self.series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
        let mut y1 = ys.fold(0.0f64, f64::max);
        if let Some((v, _)) = &self.h_line {
            y1 = y1.max(*v);
        }
        let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.1 };
        Frame {
            ox,
            oy,
            w,
            h,
            pw: w - LEFT - RIGHT,
            ph: h - TOP - BOTTOM,
            x0,
            x1,
            y1,
        }
    }

    /// Title, plot border, grid lines with tick labels, axis labels.
    fn axes(&self, s: &mut String, f: &Frame) {
        let (ox, oy, pw, ph) = (f.ox, f.oy, f.pw, f.ph);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
            ox + LEFT,
            oy + 20.0,
            esc(self.title)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="{}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##,
            ox + LEFT,
            oy + TOP
        );
        for i in 0..=5 {
            let y = f.y1 * f64::from(i) / 5.0;
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                ox + LEFT,
                f.py(y),
                ox + LEFT + pw,
                f.py(y),
                ox + LEFT - 5.0,
                f.py(y) + 4.0,
                fmt_num(y)
            );
        }
        for (x, label) in &self.x_ticks {
            let _ = writeln!(
                s,
                r##"<line x1="{:.1}" y1="{}" x2="{:.1}" y2="{}" stroke="#ddd"/><text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
                f.px(*x),
                oy + TOP,
                f.px(*x),
                oy + TOP + ph,
                f.px(*x),
                oy + TOP + ph + 15.0,
                esc(label)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
            ox + LEFT + pw / 2.0,
            oy + f.h - 8.0,
            esc(self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
            ox + 15.0,
            oy + TOP + ph / 2.0,
            ox + 15.0,
            oy + TOP + ph / 2.0,
            esc(self.y_label)
        );
    }

    fn reference_line(&self, s: &mut String, f: &Frame) {
        if let Some((v, label)) = &self.h_line {
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#d00" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" font-size="11" fill="#d00">{}</text>"##,
                f.ox + LEFT,
                f.py(*v),
                f.ox + LEFT + f.pw,
                f.py(*v),
                f.ox + LEFT + f.pw + 5.0,
                f.py(*v) + 4.0,
                esc(label)
            );
        }
    }

    /// One polyline per series, each with its legend entry right of the plot.
    fn lines(&self, s: &mut String, f: &Frame) {
        for (i, (name, pts)) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            if !pts.is_empty() {
                let mut d = String::new();
                for (x, y) in pts {
                    let _ = write!(d, "{:.1},{:.1} ", f.px(*x), f.py(*y));
                }
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
                    d.trim_end()
                );
            }
            let ly = f.oy + TOP + 10.0 + 16.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}" font-size="12">{}</text>"#,
                f.ox + f.w - RIGHT + 10.0,
                f.ox + f.w - RIGHT + 30.0,
                f.ox + f.w - RIGHT + 35.0,
                ly + 4.0,
                esc(name)
            );
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

pub fn svg_document(w: f64, h: f64, body: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

/// Latency by percentile on a log axis of 1/(1-p), the HdrHistogram plot.
pub fn percentile_series(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut pts = vec![];
    if h.is_empty() {
        return pts;
    }
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        if q >= 0.999_999 {
            break;
        }
        pts.push(((1.0 / (1.0 - q)).log10(), v.value_iterated_to() as f64 / 1000.0));
    }
    pts.push((
        6.0_f64.min(pts.last().map_or(0.0, |p| p.0 + 0.3)),
        h.max() as f64 / 1000.0,
    ));
    pts
}

pub fn percentile_ticks() -> Vec<(f64, String)> {
    ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]
        .iter()
        .enumerate()
        .map(|(i, l)| (i as f64, (*l).to_string()))
        .collect()
}

/// report.svg: latency by percentile per phase, then throughput over time.
/// `target` and `mode` ("closed"/"open") name the run in the first title.
pub fn report_svg(target: &str, mode: &str, c: &Collected) -> String {
    let mut body = String::new();
    let series = PHASES
        .iter()
        .filter(|p| !c.corrected.0[**p as usize].is_empty())
        .map(|p| {
            (
                p.name().to_string(),
                percentile_series(&c.corrected.0[*p as usize]),
            )
        })
        .collect();
    Chart {
        title: &format!("Latency by percentile, {target} ({mode} loop)"),
        x_label: "percentile",
        y_label: "latency (ms)",
        x_ticks: percentile_ticks(),
        series,
        h_line: None,
    }
    .render(&mut body, 0.0, 0.0, 900.0, 420.0);
    let ts = |f: &dyn Fn(&IntervalRow) -> f64| c.intervals.iter().map(|r| (r.t, f(r))).collect();
    let end = c.intervals.last().map_or(1.0, |r| r.t.ceil());
    let step = (end / 10.0).ceil().max(1.0);
    let mut x_ticks = vec![];
    let mut x = 0.0;
    while x <= end {
        x_ticks.push((x, format!("{x:.0}s")));
        x += step;
    }
    Chart {
        title: "Throughput over time",
        x_label: "time since start (s)",
        y_label: "per second",
        x_ticks,
        series: vec![
            ("sessions/s".into(), ts(&|r| r.sessions as f64)),
            ("messages/s".into(), ts(&|r| r.messages as f64)),
            ("errors/s".into(), ts(&|r| r.errors as f64)),
        ],
        h_line: None,
    }
    .render(&mut body, 0.0, 430.0, 900.0, 360.0);
    svg_document(900.0, 800.0, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_hist;

    #[test]
    fn svg_is_well_formed_enough() {
        let mut h = new_hist();
        h.record(1500).unwrap();
        let mut body = String::new();
        Chart {
            title: "a<b",
            x_label: "x",
            y_label: "y",
            x_ticks: percentile_ticks(),
            series: vec![("s".into(), percentile_series(&h))],
            h_line: Some((2.0, "slo".into())),
        }
        .render(&mut body, 0.0, 0.0, 600.0, 300.0);
        let doc = svg_document(600.0, 300.0, &body);
        assert!(doc.starts_with("<svg"));
        assert!(doc.trim_end().ends_with("</svg>"));
        assert!(doc.contains("a&lt;b"));
        assert!(doc.contains("<polyline"));
    }
}
