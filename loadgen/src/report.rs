//! Run results and how they are written: summary.json, the stdout table, .hgrm files and SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::reply::Caps;
use crate::script::{step_name, CLASSES, PHASES, STEP_COUNT};
use crate::stats::{ClassCounters, Counters, PhaseHists, SIGFIG};

/// Everything one run measured, merged over workers.
pub struct Collected {
    pub corrected: PhaseHists,
    pub uncorrected: PhaseHists,
    pub counters: Counters,
    pub caps: Option<Caps>,
    pub backlog: u64,
    pub elapsed_s: f64,
    pub intervals: Vec<IntervalRow>,
}

/// Per-second figures, for the live line and the throughput chart.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct IntervalRow {
    pub t: f64,
    pub sessions: u64,
    pub messages: u64,
    pub errors: u64,
    pub p99_session_us: u64,
}

#[derive(Debug, Serialize, Clone, Copy)]
pub struct Latency {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub stddev: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            min: if h.is_empty() { 0 } else { h.min() },
            mean: h.mean(),
            stddev: h.stdev(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Sessions {
    pub started: u64,
    pub completed: u64,
    pub ok: u64,
    pub failed: u64,
    pub aborted: u64,
    pub backlog: u64,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub sessions_per_s: f64,
    pub messages_per_s: f64,
    pub commands_per_s: f64,
    pub bytes_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Errors {
    pub mismatch: u64,
    pub timeout: u64,
    pub reset: u64,
    pub refused: u64,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct MismatchRow {
    pub class: &'static str,
    pub step: &'static str,
    pub count: u64,
}

/// The summary.json document (schema documented in loadgen/README.md).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub schema: u32,
    pub target: String,
    pub mode: &'static str,
    pub connections: usize,
    pub threads: usize,
    pub rate: Option<f64>,
    pub duration_s: Option<f64>,
    pub sessions_limit: Option<u64>,
    pub elapsed_s: f64,
    pub mix: BTreeMap<&'static str, u32>,
    pub server: Option<Caps>,
    pub sessions: Sessions,
    pub messages: u64,
    pub commands: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub throughput: Throughput,
    pub errors: Errors,
    pub enhanced_missing: u64,
    pub classes: BTreeMap<&'static str, ClassCounters>,
    pub mismatches: Vec<MismatchRow>,
    pub latency_us: BTreeMap<&'static str, Latency>,
    pub latency_uncorrected_us: BTreeMap<&'static str, Latency>,
    pub intervals: Vec<IntervalRow>,
}

impl Summary {
    pub fn build(cfg: &crate::cli::Config, c: &Collected) -> Summary {
        let t = c.counters.total();
        let el = c.elapsed_s.max(1e-9);
        let lat = |h: &PhaseHists| {
            PHASES
                .iter()
                .map(|p| (p.name(), Latency::of(&h.0[*p as usize])))
                .collect()
        };
        let mut mismatches = vec![];
        for (ci, class) in CLASSES.iter().enumerate() {
            for si in 0..STEP_COUNT {
                let n = c.counters.mismatch_steps[ci][si];
                if n > 0 {
                    mismatches.push(MismatchRow {
                        class: class.name(),
                        step: step_name(si),
                        count: n,
                    });
                }
            }
        }
        let errors = c.counters.errors();
        Summary {
            schema: 1,
            target: cfg.target_text.clone(),
            mode: if cfg.rate.is_some() { "open" } else { "closed" },
            connections: cfg.connections,
            threads: cfg.threads,
            rate: cfg.rate,
            duration_s: cfg.duration.map(|d| d.as_secs_f64()),
            sessions_limit: cfg.sessions,
            elapsed_s: c.elapsed_s,
            mix: CLASSES
                .iter()
                .map(|k| (k.name(), cfg.mix.0[*k as usize]))
                .collect(),
            server: c.caps,
            sessions: Sessions {
                started: c.counters.sessions_started,
                completed: t.sessions - t.aborted,
                ok: t.ok,
                failed: errors,
                aborted: t.aborted,
                backlog: c.backlog,
            },
            messages: c.counters.messages,
            commands: c.counters.commands,
            bytes_sent: c.counters.bytes_sent,
            bytes_received: c.counters.bytes_received,
            throughput: Throughput {
                sessions_per_s: (t.sessions - t.aborted) as f64 / el,
                messages_per_s: c.counters.messages as f64 / el,
                commands_per_s: c.counters.commands as f64 / el,
                bytes_per_s: (c.counters.bytes_sent + c.counters.bytes_received) as f64 / el,
            },
            errors: Errors {
                mismatch: t.mismatch,
                timeout: t.timeout,
                reset: t.reset,
                refused: t.refused,
                total: errors,
            },
            enhanced_missing: c.counters.enhanced_missing,
            classes: CLASSES
                .iter()
                .map(|k| (k.name(), c.counters.class[*k as usize]))
                .collect(),
            mismatches,
            latency_us: lat(&c.corrected),
            latency_uncorrected_us: lat(&c.uncorrected),
            intervals: c.intervals.clone(),
        }
    }

    pub fn table(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "ringmx-loadgen: {} ({} loop), {} connections, {} threads, {:.2}s",
            self.target, self.mode, self.connections, self.threads, self.elapsed_s
        );
        if let Some(c) = &self.server {
            let _ = writeln!(
                s,
                "server: pipelining={} chunking={} enhancedstatuscodes={}",
                c.pipelining, c.chunking, c.enhancedstatuscodes
            );
        }
        let _ = writeln!(
            s,
            "\n{:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}   (ms{})",
            "phase",
            "count",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "mean",
            if self.mode == "open" {
                ", corrected for coordinated omission"
            } else {
                ""
            }
        );
        for p in PHASES {
            let l = &self.latency_us[p.name()];
            let _ = writeln!(
                s,
                "{:<9} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                p.name(),
                l.count,
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                l.mean / 1000.0
            );
        }
        if self.mode == "open" {
            let l = &self.latency_uncorrected_us["session"];
            let _ = writeln!(
                s,
                "session (uncorrected): p50 {:.3} p99 {:.3} max {:.3}",
                ms(l.p50),
                ms(l.p99),
                ms(l.max)
            );
        }
        let t = &self.throughput;
        let _ = writeln!(
            s,
            "\nsessions: {} started, {} ok, {} failed, {} aborted at end, {} never started (backlog)",
            self.sessions.started,
            self.sessions.ok,
            self.sessions.failed,
            self.sessions.aborted,
            self.sessions.backlog
        );
        let _ = writeln!(
            s,
            "throughput: {:.1} sessions/s, {:.1} messages/s, {:.1} commands/s, {:.2} MB/s",
            t.sessions_per_s,
            t.messages_per_s,
            t.commands_per_s,
            t.bytes_per_s / 1e6
        );
        let e = &self.errors;
        let _ = writeln!(
            s,
            "errors: {} mismatch, {} timeout, {} reset, {} refused; {} replies lacked an enhanced code",
            e.mismatch, e.timeout, e.reset, e.refused, self.enhanced_missing
        );
        let _ = writeln!(
            s,
            "\n{:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "class", "sessions", "ok", "mismatch", "timeout", "reset", "refused"
        );
        for (name, c) in &self.classes {
            if c.sessions > 0 {
                let _ = writeln!(
                    s,
                    "{:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    name, c.sessions, c.ok, c.mismatch, c.timeout, c.reset, c.refused
                );
            }
        }
        if !self.mismatches.is_empty() {
            let _ = writeln!(s, "\nmismatches by class/step:");
            for m in &self.mismatches {
                let _ = writeln!(s, "  {}/{}: {}", m.class, m.step, m.count);
            }
        }
        s
    }
}

/// HdrHistogram's percentile distribution text (Java `outputPercentileDistribution`,
/// as wrk2 and HistogramLogProcessor print it), values scaled from µs to milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let scale = 1000.0;
    let d = usize::from(SIGFIG);
    let mut s = String::new();
    let _ = write!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / scale;
            if q < 1.0 {
                let _ = writeln!(s, "{value:12.d$} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
            } else {
                let _ = writeln!(s, "{value:12.d$} {q:2.12} {total:10}");
            }
        }
    }
    // Java computes the sub-bucket count as the next power of two above 2 * 10^digits.
    let sub_buckets = (2 * 10u64.pow(u32::from(SIGFIG))).next_power_of_two();
    let _ = writeln!(
        s,
        "#[Mean    = {:12.d$}, StdDeviation   = {:12.d$}]",
        h.mean() / scale,
        h.stdev() / scale
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.d$}, Total count    = {:12}]",
        h.max() as f64 / scale,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    );
    s
}

const COLORS: [&str; 9] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf",
];

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

impl Chart<'_> {
    pub fn render(&self, s: &mut String, ox: f64, oy: f64, w: f64, h: f64) {
        let (l, r, t, b) = (70.0, 150.0, 30.0, 45.0);
        let (pw, ph) = (w - l - r, h - t - b);
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
        let px = |x: f64| ox + l + (x - x0) / (x1 - x0) * pw;
        let py = |y: f64| oy + t + ph - y / y1 * ph;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
            ox + l,
            oy + 20.0,
            esc(self.title)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="{}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##,
            ox + l,
            oy + t
        );
        for i in 0..=5 {
            let y = y1 * f64::from(i) / 5.0;
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                ox + l,
                py(y),
                ox + l + pw,
                py(y),
                ox + l - 5.0,
                py(y) + 4.0,
                fmt_num(y)
            );
        }
        for (x, label) in &self.x_ticks {
            let _ = writeln!(
                s,
                r##"<line x1="{:.1}" y1="{}" x2="{:.1}" y2="{}" stroke="#ddd"/><text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
                px(*x),
                oy + t,
                px(*x),
                oy + t + ph,
                px(*x),
                oy + t + ph + 15.0,
                esc(label)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
            ox + l + pw / 2.0,
            oy + h - 8.0,
            esc(self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
            ox + 15.0,
            oy + t + ph / 2.0,
            ox + 15.0,
            oy + t + ph / 2.0,
            esc(self.y_label)
        );
        if let Some((v, label)) = &self.h_line {
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#d00" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" font-size="11" fill="#d00">{}</text>"##,
                ox + l,
                py(*v),
                ox + l + pw,
                py(*v),
                ox + l + pw + 5.0,
                py(*v) + 4.0,
                esc(label)
            );
        }
        for (i, (name, pts)) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            if !pts.is_empty() {
                let mut d = String::new();
                for (x, y) in pts {
                    let _ = write!(d, "{:.1},{:.1} ", px(*x), py(*y));
                }
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
                    d.trim_end()
                );
            }
            let ly = oy + t + 10.0 + 16.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}" font-size="12">{}</text>"#,
                ox + w - r + 10.0,
                ox + w - r + 30.0,
                ox + w - r + 35.0,
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

pub fn report_svg(sum: &Summary, c: &Collected) -> String {
    let mut body = String::new();
    let series = crate::script::PHASES
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
        title: &format!("Latency by percentile, {} ({} loop)", sum.target, sum.mode),
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
    fn hgrm_format() {
        let mut h = new_hist();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let text = hgrm(&h);
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(head, ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]);
        assert_eq!(lines.next(), Some(""));
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
            .collect();
        assert!(rows.len() > 20);
        let p50 = rows.iter().find(|r| r[1] >= 0.5).unwrap();
        assert!((p50[0] - 5.0).abs() < 0.01, "p50 in ms: {}", p50[0]);
        let last = rows.last().unwrap();
        assert_eq!(last[1], 1.0);
        assert_eq!(last[2], 10_000.0);
        assert!(text.contains("#[Mean    =        5.001, StdDeviation   =        2.887]"));
        assert!(text.contains("Total count    =        10000]"));
        assert!(text.contains("SubBuckets     =         2048]"));
    }

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
