//! SVG line charts, hand-written (no plotting dependency): report.svg, sweep.svg and `plot`'s panels.
//!
//! Axes read like a plotting library's: linear axes get ticks at round 1, 2 or 5 × 10ⁿ steps
//! (5 to 8 of them, labelled with no more decimals than the step needs, `k`/`M` for
//! thousands and millions, durations with their unit), log axes are labelled at decades.
//! Series colours come from [`PALETTE`] by the rule of [`colors`].

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Paul Tol's "muted" scheme (colour-blind safe, distinct in print), strongest first, then
/// grey, then black (the eleventh phase, `held`).
pub const PALETTE: [&str; 11] = [
    "#332288", "#CC6677", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499", "#DDCC77",
    "#888888", "#000000",
];

/// Series names with a colour of their own (an index into [`PALETTE`]) in every chart.
const FIXED: [(&str, usize); 18] = [
    ("session", 0),
    ("eod", 1),
    ("ehlo", 2),
    ("connect", 3),
    ("tls", 4),
    ("banner", 5),
    ("mail", 6),
    ("rcpt", 7),
    ("data", 8),
    ("quit", 9),
    ("held", 10),
    ("p99", 0),
    ("p50", 3),
    ("achieved", 0),
    ("offered", 9),
    ("sessions/s", 0),
    ("messages/s", 2),
    ("errors/s", 1),
];

/// Colours for the series `names` of one chart: a name of [`FIXED`] (the phases, p50/p99,
/// the throughput series) always gets its own colour; every other name (a `plot` label)
/// gets the first palette colour no earlier series of the chart took, in the order given,
/// so the same labels given in the same order get the same colours in every chart.
pub fn colors(names: &[&str]) -> Vec<&'static str> {
    let fixed = |n: &str| FIXED.iter().find(|f| f.0 == n).map(|f| f.1);
    let mut used: Vec<usize> = names.iter().filter_map(|n| fixed(n)).collect();
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let slot = fixed(n).unwrap_or_else(|| {
                let free = (0..PALETTE.len()).find(|s| !used.contains(s));
                let s = free.unwrap_or(i % PALETTE.len());
                used.push(s);
                s
            });
            PALETTE[slot]
        })
        .collect()
}

/// Margins around a panel's plot area: left (y tick labels), right (legend), top (title), bottom.
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 32.0;
const BOTTOM: f64 = 48.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// What an axis's values are, which decides how its tick labels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Plain numbers (rates, counts): `0, 500, 1000` or `0, 5k, 10k`.
    Count,
    /// Milliseconds, labelled with a unit: `0 ms, 10 ms`, `0.5 s`, `100 µs`.
    Millis,
    /// Seconds: `0 s, 10 s`.
    Seconds,
    /// log10(1/(1-q)) of a quantile q, labelled `90%`, `99%`, `99.9%` at integers.
    Percentile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Base 10, labelled at decades; values ≤ 0 are left out.
    Log,
}

/// One axis: its title, unit, scale, and whether its range starts at 0.
pub struct Axis {
    pub title: String,
    pub unit: Unit,
    pub scale: Scale,
    pub from_zero: bool,
}

impl Axis {
    pub fn new(title: &str, unit: Unit) -> Axis {
        Axis {
            title: title.to_string(),
            unit,
            scale: Scale::Linear,
            from_zero: true,
        }
    }

    pub fn log(mut self) -> Axis {
        self.scale = Scale::Log;
        self.from_zero = false;
        self
    }
}

/// A named line; `dashed` draws it dashed, `markers` puts a dot on every point.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    pub markers: bool,
}

impl Series {
    pub fn line(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.to_string(),
            points,
            dashed: false,
            markers: false,
        }
    }
}

/// One chart panel: title, axes, a horizontal reference line (an SLO) and series.
pub struct Chart {
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
    /// Colour of each series; [`colors`] of the names when `None`.
    pub colors: Option<Vec<&'static str>>,
    /// Horizontal reference line at this y value, with its label.
    pub h_line: Option<(f64, String)>,
}

/// Round steps: 1, 2 or 5 × 10ⁿ, the one that puts 5 to 8 ticks in `lo..=hi` (the nearest
/// to 6 when several do, the nearest to that range otherwise). Returns the step and the
/// ticks, every multiple of the step within the range.
pub fn linear_ticks(lo: f64, hi: f64) -> (f64, Vec<f64>) {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo, lo + 1.0) };
    let mag = 10f64.powf(((hi - lo) / 6.0).log10().floor());
    let count = |step: f64| ((hi / step + 1e-9).floor() - (lo / step - 1e-9).ceil() + 1.0) as i64;
    let score = |n: i64| {
        if (5..=8).contains(&n) {
            (n - 6).abs()
        } else {
            10 + (n - 6).abs()
        }
    };
    let step = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]
        .iter()
        .map(|m| m * mag)
        .min_by_key(|s| score(count(*s)))
        .expect("non-empty candidates");
    let first = (lo / step - 1e-9).ceil() as i64;
    let ticks = (0..count(step))
        .map(|k| clean((first + k) as f64 * step))
        .collect();
    (step, ticks)
}

/// Rounds away float noise (0.30000000000000004 → 0.3) so labels and tests see round values.
fn clean(v: f64) -> f64 {
    if v == 0.0 {
        return 0.0;
    }
    let digits = 12 - v.abs().log10().floor() as i32;
    let f = 10f64.powi(digits.clamp(0, 15));
    (v * f).round() / f
}

/// Decimals a value needs to show multiples of `step` exactly (0 for integer steps).
fn decimals(step: f64) -> usize {
    (0..6)
        .find(|d| {
            let x = step * 10f64.powi(*d as i32);
            (x - x.round()).abs() < 1e-6 * x.max(1.0)
        })
        .unwrap_or(6)
}

/// Tick labels of a linear axis with ticks every `step`: one unit and one precision for all.
pub fn linear_labels(unit: Unit, step: f64, ticks: &[f64]) -> Vec<String> {
    let top = ticks.iter().fold(0f64, |a, t| a.max(t.abs()));
    let (div, suffix) = match unit {
        Unit::Count if step >= 1e6 && decimals(step / 1e6) == 0 => (1e6, "M"),
        Unit::Count if step >= 1e3 && decimals(step / 1e3) == 0 => (1e3, "k"),
        Unit::Count | Unit::Percentile => (1.0, ""),
        Unit::Millis if top >= 1000.0 && step >= 100.0 => (1000.0, " s"),
        Unit::Millis if top < 1.0 => (0.001, " µs"),
        Unit::Millis => (1.0, " ms"),
        Unit::Seconds => (1.0, " s"),
    };
    let d = decimals(step / div);
    ticks
        .iter()
        .map(|t| match unit {
            Unit::Percentile => percentile_label(*t),
            Unit::Count if *t == 0.0 => "0".into(),
            _ => format!("{:.d$}{suffix}", t / div),
        })
        .collect()
}

/// The label of a decade tick 10^k.
pub fn decade_label(unit: Unit, k: i32) -> String {
    let v = 10f64.powi(k);
    match unit {
        Unit::Millis if k < 0 => format!("{} µs", clean(v * 1000.0)),
        Unit::Millis if k >= 3 => format!("{} s", clean(v / 1000.0)),
        Unit::Millis => format!("{v} ms"),
        Unit::Seconds => format!("{} s", clean(v)),
        Unit::Count | Unit::Percentile => match k {
            6.. => format!("{}M", clean(v / 1e6)),
            3.. => format!("{}k", clean(v / 1e3)),
            _ => format!("{}", clean(v)),
        },
    }
}

/// `0%`, `90%`, `99%`, `99.9%`… for log10(1/(1-q)) = 0, 1, 2, 3…
fn percentile_label(t: f64) -> String {
    let k = t.round() as i32;
    if k <= 0 {
        return "0%".into();
    }
    format!("{}%", clean(100.0 - 100.0 * 10f64.powi(-k)))
}

/// Where a panel sits and how data maps onto it (in axis coordinates: log10 on log axes).
struct Frame {
    ox: f64,
    oy: f64,
    w: f64,
    h: f64,
    pw: f64,
    ph: f64,
    x: (f64, f64),
    y: (f64, f64),
    x_log: bool,
    y_log: bool,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        let x = if self.x_log { x.log10() } else { x };
        self.ox + LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * self.pw
    }

    fn py(&self, y: f64) -> f64 {
        let y = if self.y_log { y.log10() } else { y };
        self.oy + TOP + self.ph - (y - self.y.0) / (self.y.1 - self.y.0) * self.ph
    }
}

/// Ticks of one axis: (position in data units, label, labelled or minor).
struct Ticks {
    range: (f64, f64),
    ticks: Vec<(f64, String, bool)>,
}

/// An axis's range and ticks over `values` (and `extra`, e.g. an SLO). Linear axes: from 0
/// (or the smallest value) to the largest, with 5% headroom above on y; log axes: whole
/// decades around the positive values, minor ticks at 2…9 × 10ⁿ when they span ≤ 3 decades.
fn axis_ticks(axis: &Axis, values: &[f64], headroom: bool) -> Ticks {
    let vals: Vec<f64> = values
        .iter()
        .copied()
        .filter(|v| v.is_finite() && (axis.scale == Scale::Linear || *v > 0.0))
        .collect();
    let max = vals.iter().copied().fold(f64::MIN, f64::max);
    let min = vals.iter().copied().fold(f64::MAX, f64::min);
    match axis.scale {
        // Percentile axes are labelled at whole nines only.
        Scale::Linear if axis.unit == Unit::Percentile => {
            let hi = if vals.is_empty() { 1.0 } else { max.ceil().max(1.0) };
            Ticks {
                range: (0.0, hi),
                ticks: (0..=hi as i32)
                    .map(|k| (f64::from(k), percentile_label(f64::from(k)), true))
                    .collect(),
            }
        }
        Scale::Linear => {
            let (mut lo, mut hi) = if vals.is_empty() { (0.0, 1.0) } else { (min, max) };
            if axis.from_zero {
                lo = lo.min(0.0);
            }
            if hi - lo < 1e-9 {
                hi = lo + if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            }
            if headroom {
                hi += (hi - lo) * 0.05;
            }
            let (step, ts) = linear_ticks(lo, hi);
            let labels = linear_labels(axis.unit, step, &ts);
            Ticks {
                range: (lo, hi),
                ticks: ts.into_iter().zip(labels).map(|(t, l)| (t, l, true)).collect(),
            }
        }
        Scale::Log => {
            let (k0, k1) = if vals.is_empty() {
                (0, 1)
            } else {
                let k0 = min.log10().floor() as i32;
                (k0, (max.log10().ceil() as i32).max(k0 + 1))
            };
            let mut ticks = vec![];
            for k in k0..=k1 {
                ticks.push((10f64.powi(k), decade_label(axis.unit, k), true));
                if k < k1 && k1 - k0 <= 3 {
                    for m in 2..=9 {
                        ticks.push((f64::from(m) * 10f64.powi(k), String::new(), false));
                    }
                }
            }
            Ticks {
                range: (f64::from(k0), f64::from(k1)),
                ticks,
            }
        }
    }
}

impl Chart {
    pub fn render(&self, s: &mut String, ox: f64, oy: f64, w: f64, h: f64) {
        let xs: Vec<f64> = self
            .series
            .iter()
            .flat_map(|r| r.points.iter().map(|p| p.0))
            .collect();
        let mut ys: Vec<f64> = self
            .series
            .iter()
            .flat_map(|r| r.points.iter().map(|p| p.1))
            .collect();
        ys.extend(self.h_line.as_ref().map(|l| l.0));
        let xt = axis_ticks(&self.x, &xs, false);
        let yt = axis_ticks(&self.y, &ys, true);
        let f = Frame {
            ox,
            oy,
            w,
            h,
            pw: w - LEFT - RIGHT,
            ph: h - TOP - BOTTOM,
            x: xt.range,
            y: yt.range,
            x_log: self.x.scale == Scale::Log,
            y_log: self.y.scale == Scale::Log,
        };
        self.axes(s, &f, &xt, &yt);
        let names: Vec<&str> = self.series.iter().map(|r| r.name.as_str()).collect();
        let cols = self.colors.clone().unwrap_or_else(|| colors(&names));
        self.lines(s, &f, &cols);
        self.reference_line(s, &f);
        self.legend(s, &f, &cols);
    }

    /// Title, grid lines with tick labels, plot border, axis titles.
    fn axes(&self, s: &mut String, f: &Frame, xt: &Ticks, yt: &Ticks) {
        let (left, top, pw, ph) = (f.ox + LEFT, f.oy + TOP, f.pw, f.ph);
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
            f.oy + 21.0,
            esc(&self.title)
        );
        for (v, label, major) in &yt.ticks {
            let y = f.py(*v);
            let stroke = if *major { "#d8d8d8" } else { "#efefef" };
            let _ = writeln!(
                s,
                r#"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}"/>"#,
                left + pw
            );
            if *major {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
                    left - 6.0,
                    y + 4.0,
                    esc(label)
                );
            }
        }
        for (v, label, major) in &xt.ticks {
            let x = f.px(*v);
            let stroke = if *major { "#d8d8d8" } else { "#efefef" };
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="{stroke}"/>"#,
                top + ph
            );
            if *major {
                let _ = writeln!(
                    s,
                    r#"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                    top + ph + 16.0,
                    esc(label)
                );
            }
        }
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            left + pw / 2.0,
            f.oy + f.h - 10.0,
            esc(&self.x.title)
        );
        let (tx, ty) = (f.ox + 16.0, top + ph / 2.0);
        let _ = writeln!(
            s,
            r#"<text x="{tx}" y="{ty:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 {tx} {ty:.1})">{}</text>"#,
            esc(&self.y.title)
        );
    }

    /// The SLO line, dashed black across the plot, labelled above its right end.
    fn reference_line(&self, s: &mut String, f: &Frame) {
        if let Some((v, label)) = &self.h_line {
            if self.y.scale == Scale::Log && *v <= 0.0 {
                return;
            }
            let y = f.py(*v);
            let right = f.ox + LEFT + f.pw;
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#000" stroke-width="1.5" stroke-dasharray="8 4"/><text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"##,
                f.ox + LEFT,
                right - 6.0,
                y - 5.0,
                esc(label)
            );
        }
    }

    /// One polyline per series (points off a log axis left out), dots if asked.
    fn lines(&self, s: &mut String, f: &Frame, cols: &[&str]) {
        for (r, color) in self.series.iter().zip(cols) {
            let pts: Vec<(f64, f64)> = r
                .points
                .iter()
                .copied()
                .filter(|(x, y)| (!f.x_log || *x > 0.0) && (!f.y_log || *y > 0.0))
                .collect();
            if pts.is_empty() {
                continue;
            }
            let mut d = String::new();
            for (x, y) in &pts {
                let _ = write!(d, "{:.1},{:.1} ", f.px(*x), f.py(*y));
            }
            let dash = if r.dashed {
                r#" stroke-dasharray="6 3""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
                d.trim_end()
            );
            if r.markers {
                for (x, y) in &pts {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                        f.px(*x),
                        f.py(*y)
                    );
                }
            }
        }
    }

    /// One entry per series right of the plot, in the series' colour and dash.
    fn legend(&self, s: &mut String, f: &Frame, cols: &[&str]) {
        let x = f.ox + f.w - RIGHT + 12.0;
        for (i, (r, color)) in self.series.iter().zip(cols).enumerate() {
            let y = f.oy + TOP + 10.0 + 18.0 * i as f64;
            let dash = if r.dashed {
                r#" stroke-dasharray="6 3""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="3"{dash}/><text x="{}" y="{}" font-size="12">{}</text>"#,
                x + 22.0,
                x + 28.0,
                y + 4.0,
                esc(&r.name)
            );
        }
    }
}

/// A latency axis (ms): log when the positive values span 20× or more (a sweep's knee goes
/// from milliseconds to seconds), else linear from 0.
pub fn latency_axis(title: &str, values: impl IntoIterator<Item = f64>) -> Axis {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    let axis = Axis::new(title, Unit::Millis);
    if hi >= 20.0 * lo && hi > 0.0 {
        axis.log()
    } else {
        axis
    }
}

/// A duration in ms as it reads best: `500 µs`, `20 ms`, `1.5 s`.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", clean(ms / 1000.0))
    } else if ms < 1.0 {
        format!("{} µs", clean(ms * 1000.0))
    } else {
        format!("{} ms", clean(ms))
    }
}

/// The SLO line's label: `SLO p99 ≤ 500 ms`.
pub fn slo_label(percentile: f64, max_ms: f64) -> String {
    format!("SLO p{} ≤ {}", clean(percentile), fmt_ms(max_ms))
}

pub fn svg_document(w: f64, h: f64, body: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

/// Latency (ms) by percentile, x = log10(1/(1-q)), the HdrHistogram plot.
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

/// One second of a run for the throughput panel: `t` its end (s since start), its counts.
pub struct Second {
    pub t: f64,
    pub sessions: u64,
    pub messages: u64,
    pub errors: u64,
}

/// report.svg: latency by percentile of each phase that recorded anything (`phases`, by
/// name), then sessions, messages and errors per second over the run's `intervals`.
/// `target` and `mode` ("closed"/"open") name the run in the first title.
pub fn report_svg(
    target: &str,
    mode: &str,
    phases: &[(&str, &Histogram<u64>)],
    intervals: &[Second],
) -> String {
    let mut body = String::new();
    let series = phases
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| Series::line(name, percentile_series(h)))
        .collect();
    Chart {
        title: format!("Latency by percentile, {target} ({mode} loop)"),
        x: Axis::new("percentile", Unit::Percentile),
        y: Axis::new("latency", Unit::Millis),
        series,
        colors: None,
        h_line: None,
    }
    .render(&mut body, 0.0, 0.0, 900.0, 420.0);
    let ts = |f: &dyn Fn(&Second) -> u64| -> Vec<(f64, f64)> {
        // Each row counts its own second; the run's last, shorter, second is scaled to a rate.
        let mut prev = 0.0;
        intervals
            .iter()
            .map(|r| {
                let secs = (r.t - prev).clamp(0.001, 1.0);
                prev = r.t;
                (r.t, f(r) as f64 / secs)
            })
            .collect()
    };
    Chart {
        title: "Throughput over time".into(),
        x: Axis::new("time since start", Unit::Seconds),
        y: Axis::new("per second", Unit::Count),
        series: vec![
            Series::line("sessions/s", ts(&|r| r.sessions)),
            Series::line("messages/s", ts(&|r| r.messages)),
            Series::line("errors/s", ts(&|r| r.errors)),
        ],
        colors: None,
        h_line: None,
    }
    .render(&mut body, 0.0, 430.0, 900.0, 360.0);
    svg_document(900.0, 800.0, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_hist;

    fn labels(lo: f64, hi: f64, unit: Unit) -> Vec<String> {
        let (step, t) = linear_ticks(lo, hi);
        linear_labels(unit, step, &t)
    }

    #[test]
    fn ticks_are_round_steps_five_to_eight_of_them() {
        assert_eq!(
            linear_ticks(0.0, 1100.0),
            (200.0, vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0])
        );
        assert_eq!(
            linear_ticks(0.0, 25.5),
            (5.0, vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0])
        );
        assert_eq!(linear_ticks(0.0, 1.0).1, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(
            linear_ticks(100.0, 1000.0).1,
            [200.0, 400.0, 600.0, 800.0, 1000.0]
        );
        for (lo, hi) in [
            (0.0, 7.3),
            (0.0, 0.034),
            (3.0, 4.1),
            (0.0, 123_456.0),
            (50.0, 51.0),
        ] {
            let (step, t) = linear_ticks(lo, hi);
            let mant = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0].iter().any(|m| (mant - m).abs() < 1e-9),
                "{lo}..{hi}: step {step}"
            );
            assert!((5..=8).contains(&t.len()), "{lo}..{hi}: {t:?}");
            assert!(t.iter().all(|v| *v >= lo - 1e-9 && *v <= hi + 1e-9), "{t:?}");
        }
    }

    #[test]
    fn tick_labels_have_no_spurious_decimals_and_carry_units() {
        assert_eq!(
            labels(0.0, 1100.0, Unit::Count),
            ["0", "200", "400", "600", "800", "1000"]
        );
        assert_eq!(labels(0.0, 1600.0, Unit::Count), ["0", "500", "1000", "1500"]);
        assert_eq!(
            labels(0.0, 31_000.0, Unit::Count),
            ["0", "5k", "10k", "15k", "20k", "25k", "30k"]
        );
        assert_eq!(
            labels(0.0, 25.5, Unit::Millis),
            ["0 ms", "5 ms", "10 ms", "15 ms", "20 ms", "25 ms"]
        );
        assert_eq!(
            labels(0.0, 1.0, Unit::Millis),
            ["0.0 ms", "0.2 ms", "0.4 ms", "0.6 ms", "0.8 ms", "1.0 ms"]
        );
        assert_eq!(
            labels(0.0, 2600.0, Unit::Millis),
            ["0.0 s", "0.5 s", "1.0 s", "1.5 s", "2.0 s", "2.5 s"]
        );
        assert_eq!(
            labels(0.0, 0.3, Unit::Millis),
            ["0 µs", "50 µs", "100 µs", "150 µs", "200 µs", "250 µs", "300 µs"]
        );
        assert_eq!(
            labels(0.0, 12.7, Unit::Seconds),
            ["0 s", "2 s", "4 s", "6 s", "8 s", "10 s", "12 s"]
        );
        let decades: Vec<String> = (-1..=4).map(|k| decade_label(Unit::Millis, k)).collect();
        assert_eq!(decades, ["100 µs", "1 ms", "10 ms", "100 ms", "1 s", "10 s"]);
        assert_eq!(decade_label(Unit::Count, 4), "10k");
        let pct: Vec<String> = (0..=4).map(|k| percentile_label(f64::from(k))).collect();
        assert_eq!(pct, ["0%", "90%", "99%", "99.9%", "99.99%"]);
        assert_eq!(slo_label(99.0, 500.0), "SLO p99 ≤ 500 ms");
        assert_eq!(slo_label(99.9, 1500.0), "SLO p99.9 ≤ 1.5 s");
    }

    #[test]
    fn fixed_names_keep_their_colour_and_labels_take_free_ones_in_order() {
        let a = colors(&["session", "connect"]);
        let b = colors(&["connect", "ehlo", "session"]);
        assert_eq!(
            (a[0], a[1]),
            (b[2], b[0]),
            "a phase has one colour in every chart"
        );
        let c = colors(&["base", "tls", "p99"]);
        assert_eq!(c[2], PALETTE[0]);
        assert_eq!(c[0], PALETTE[1], "first free colour: p99 holds the first");
        let d = colors(&["x", "y", "z"]);
        assert_eq!(d, [PALETTE[0], PALETTE[1], PALETTE[2]]);
        let many: Vec<String> = (0..PALETTE.len()).map(|i| format!("s{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let cols = colors(&many);
        assert!(
            cols.iter().enumerate().all(|(i, c)| !cols[..i].contains(c)),
            "all distinct"
        );
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let mut h = new_hist();
        h.record(1500).unwrap();
        let mut body = String::new();
        Chart {
            title: "a<b".into(),
            x: Axis::new("percentile", Unit::Percentile),
            y: Axis::new("latency", Unit::Millis).log(),
            series: vec![Series::line("s", percentile_series(&h))],
            colors: None,
            h_line: Some((2.0, "SLO p99 ≤ 2 ms".into())),
        }
        .render(&mut body, 0.0, 0.0, 600.0, 300.0);
        let doc = svg_document(600.0, 300.0, &body);
        assert!(doc.starts_with("<svg"));
        assert!(doc.trim_end().ends_with("</svg>"));
        assert!(doc.contains("a&lt;b"));
        assert!(doc.contains("<polyline"));
        assert!(doc.contains(">1 ms<") && doc.contains(">10 ms<"), "decade labels");
        assert!(doc.contains("SLO p99 ≤ 2 ms"));
    }
}
