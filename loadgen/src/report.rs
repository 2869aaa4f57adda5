//! Run results as text: the summary.json document, the stdout table and .hgrm percentile files.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use ringmx_loadgen::reply::Caps;

use crate::cli::Config;
use crate::stats::{ClassCounters, Collected, IntervalRow, PhaseHists, SIGFIG};
use crate::vocab::{step_name, Class, Phase, TlsMode, CLASSES, PHASES, STEP_COUNT};

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
    pub tls: u64,
    pub total: u64,
}

/// How sessions used TLS; `null` in summary.json without `--tls` and the tls class.
#[derive(Debug, Serialize)]
pub struct TlsSummary {
    /// `null`: only the tls class's sessions use TLS (STARTTLS).
    pub mode: Option<TlsMode>,
    /// Certificates were not checked (`--tls-insecure`).
    pub insecure: bool,
    pub resume: bool,
    /// Percent of the tls class's sessions that try to resume.
    pub resume_share: u32,
    /// Handshakes completed, and how many of them resumed an earlier session.
    pub handshakes: u64,
    pub resumed: u64,
}

/// One class's counters in summary.json: the outcomes every class has, its sessions by
/// variant, and the counters of the correct answers particular to it.
#[derive(Debug, Serialize)]
pub struct ClassRow {
    #[serde(flatten)]
    pub counters: ClassCounters,
    pub variants: BTreeMap<&'static str, u64>,
    #[serde(flatten)]
    pub outcomes: BTreeMap<&'static str, u64>,
}

impl ClassRow {
    fn of(class: Class, c: &ClassCounters) -> ClassRow {
        ClassRow {
            counters: *c,
            variants: class.variants().iter().copied().zip(c.variants).collect(),
            outcomes: class.outcomes().iter().copied().zip(c.outcomes).collect(),
        }
    }
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
    pub tls: Option<TlsSummary>,
    pub classes: BTreeMap<&'static str, ClassRow>,
    pub mismatches: Vec<MismatchRow>,
    pub latency_us: BTreeMap<&'static str, Latency>,
    pub latency_uncorrected_us: BTreeMap<&'static str, Latency>,
    pub intervals: Vec<IntervalRow>,
}

impl Summary {
    pub fn build(cfg: &Config, c: &Collected) -> Summary {
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
                tls: t.tls,
                total: errors,
            },
            enhanced_missing: c.counters.enhanced_missing,
            tls: cfg.tls.as_ref().map(|o| TlsSummary {
                mode: o.mode,
                insecure: o.ca.is_none(),
                resume: o.resume,
                resume_share: o.resume_share,
                handshakes: c.counters.tls_handshakes,
                resumed: c.counters.tls_resumed,
            }),
            classes: CLASSES
                .iter()
                .map(|k| (k.name(), ClassRow::of(*k, &c.counters.class[*k as usize])))
                .collect(),
            mismatches,
            latency_us: lat(&c.corrected),
            latency_uncorrected_us: lat(&c.uncorrected),
            intervals: c.intervals.clone(),
        }
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        self.latency_table(&mut s);
        self.totals(&mut s);
        self.class_table(&mut s);
        s
    }

    /// The run's settings, then one latency row per phase.
    fn latency_table(&self, s: &mut String) {
        let ms = |us: u64| us as f64 / 1000.0;
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
        // Without TLS or slowloris their rows would be zeros in every run; leave them out.
        let shown = |p: &Phase| match p {
            Phase::Tls => self.tls.is_some(),
            Phase::Held => self.mix["slowloris"] > 0,
            _ => true,
        };
        for p in PHASES.iter().filter(|p| shown(p)) {
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
    }

    /// Sessions, throughput and errors.
    fn totals(&self, s: &mut String) {
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
            "errors: {} mismatch, {} timeout, {} reset, {} refused, {} tls; {} replies lacked an enhanced code",
            e.mismatch, e.timeout, e.reset, e.refused, e.tls, self.enhanced_missing
        );
        if let Some(t) = &self.tls {
            let _ = writeln!(
                s,
                "tls: {}, {} handshakes, {} resumed{}",
                t.mode.map_or("tls class only", |m| match m {
                    TlsMode::Starttls => "starttls",
                    TlsMode::Implicit => "implicit",
                }),
                t.handshakes,
                t.resumed,
                if t.insecure {
                    ", certificates NOT verified (--tls-insecure)"
                } else {
                    ""
                }
            );
        }
    }

    /// Outcomes per class that ran, and mismatches by class and step.
    fn class_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "class", "sessions", "ok", "mismatch", "timeout", "reset", "refused"
        );
        for (name, row) in &self.classes {
            let c = &row.counters;
            if c.sessions > 0 {
                let _ = writeln!(
                    s,
                    "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    name, c.sessions, c.ok, c.mismatch, c.timeout, c.reset, c.refused
                );
            }
        }
        let outcomes: Vec<String> = self
            .classes
            .values()
            .flat_map(|row| row.outcomes.iter().filter(|o| *o.1 > 0))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if !outcomes.is_empty() {
            let _ = writeln!(s, "outcomes: {}", outcomes.join(", "));
        }
        if !self.mismatches.is_empty() {
            let _ = writeln!(s, "\nmismatches by class/step:");
            for m in &self.mismatches {
                let _ = writeln!(s, "  {}/{}: {}", m.class, m.step, m.count);
            }
        }
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
}
