//! Capacity search: step the open-loop rate until the latency objective or error budget breaks.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::cli::{Config, Slo};
use crate::report::{svg_document, Chart};
use crate::script::{Corpus, Phase};

#[derive(Debug, Serialize)]
pub struct StepResult {
    pub offered: f64,
    pub achieved: f64,
    pub messages_per_s: f64,
    pub p50_us: u64,
    /// The SLO's percentile of session latency, corrected for coordinated omission.
    pub slo_value_us: u64,
    pub p99_us: u64,
    pub sessions: u64,
    pub errors: u64,
    pub error_pct: f64,
    pub backlog: u64,
    pub met_slo: bool,
    pub within_budget: bool,
}

#[derive(Debug, Serialize)]
struct SweepOut<'a> {
    schema: u32,
    target: &'a str,
    slo_percentile: f64,
    slo_us: u64,
    error_budget_pct: f64,
    step_duration_s: f64,
    /// Highest offered rate whose step met both the SLO and the error budget.
    capacity: Option<f64>,
    steps: &'a [StepResult],
}

pub fn run(
    base: &Config,
    (from, to, step): (f64, f64, f64),
    slo: Slo,
    step_duration: Duration,
    budget_pct: f64,
) -> Result<(), String> {
    if let Some(dir) = &base.out {
        std::fs::create_dir_all(dir.join("mismatches"))
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let corpus = Arc::new(Corpus::new(base.msg_size, base.seed));
    let slo_us = u64::try_from(slo.max.as_micros()).unwrap_or(u64::MAX);
    let mut steps: Vec<StepResult> = vec![];
    let mut capacity = None;
    let n = ((to - from) / step).floor() as u64;
    for k in 0..=n {
        let rate = from + step * k as f64;
        let mut cfg = base.clone();
        cfg.rate = Some(rate);
        cfg.duration = Some(step_duration);
        cfg.sessions = None;
        cfg.quiet = true;
        if base.connections == 50 {
            cfg.connections = 4096;
        }
        let c = crate::run(&cfg, &corpus)?;
        let h = &c.corrected.0[Phase::Session as usize];
        let t = c.counters.total();
        let ended = t.sessions - t.aborted;
        let errors = c.counters.errors();
        // Sessions that never got a slot are failures to serve the offered rate too.
        let error_pct = 100.0 * (errors + c.backlog) as f64 / (ended + c.backlog).max(1) as f64;
        let r = StepResult {
            offered: rate,
            achieved: ended as f64 / c.elapsed_s.max(1e-9),
            messages_per_s: c.counters.messages as f64 / c.elapsed_s.max(1e-9),
            p50_us: h.value_at_quantile(0.5),
            slo_value_us: h.value_at_quantile(slo.percentile / 100.0),
            p99_us: h.value_at_quantile(0.99),
            sessions: ended,
            errors,
            error_pct,
            backlog: c.backlog,
            met_slo: !h.is_empty() && h.value_at_quantile(slo.percentile / 100.0) <= slo_us,
            within_budget: error_pct <= budget_pct,
        };
        if !base.quiet {
            eprintln!(
                "sweep: offered {:.0}/s achieved {:.1}/s p{} {:.3} ms errors {:.3}%{}",
                r.offered,
                r.achieved,
                slo.percentile,
                r.slo_value_us as f64 / 1000.0,
                r.error_pct,
                if r.met_slo && r.within_budget {
                    ""
                } else {
                    "  <- breaks"
                }
            );
        }
        let ok = r.met_slo && r.within_budget;
        steps.push(r);
        if !ok {
            break;
        }
        capacity = Some(rate);
    }
    let out = SweepOut {
        schema: 1,
        target: &base.target_text,
        slo_percentile: slo.percentile,
        slo_us,
        error_budget_pct: budget_pct,
        step_duration_s: step_duration.as_secs_f64(),
        capacity,
        steps: &steps,
    };
    let json = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
    if base.json {
        println!("{json}");
    } else {
        print!("{}", table(&steps, slo, capacity));
    }
    if let Some(dir) = &base.out {
        std::fs::write(dir.join("sweep.json"), &json).map_err(|e| format!("sweep.json: {e}"))?;
        std::fs::write(dir.join("sweep.svg"), svg(&steps, slo)).map_err(|e| format!("sweep.svg: {e}"))?;
    }
    Ok(())
}

fn table(steps: &[StepResult], slo: Slo, capacity: Option<f64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>10} {:>10} {:>10} {:>10} {:>10} {:>8}  (sessions/s, ms)",
        "offered", "achieved", "p50", "p99", "errors", "err%"
    );
    for r in steps {
        let _ = writeln!(
            s,
            "{:>10.1} {:>10.1} {:>10.3} {:>10.3} {:>10} {:>8.3}{}",
            r.offered,
            r.achieved,
            r.p50_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.errors,
            r.error_pct,
            if r.met_slo && r.within_budget {
                ""
            } else {
                "  breaks"
            }
        );
    }
    let _ = match capacity {
        Some(c) => writeln!(
            s,
            "capacity: {c:.1} sessions/s within p{}<={:?}",
            slo.percentile, slo.max
        ),
        None => writeln!(s, "capacity: no step met p{}<={:?}", slo.percentile, slo.max),
    };
    s
}

fn svg(steps: &[StepResult], slo: Slo) -> String {
    let mut body = String::new();
    let ticks: Vec<(f64, String)> = steps
        .iter()
        .map(|r| (r.offered, format!("{:.0}", r.offered)))
        .collect();
    Chart {
        title: "Achieved vs offered rate",
        x_label: "offered sessions/s",
        y_label: "sessions/s",
        x_ticks: ticks.clone(),
        series: vec![
            (
                "achieved".into(),
                steps.iter().map(|r| (r.offered, r.achieved)).collect(),
            ),
            (
                "offered".into(),
                steps.iter().map(|r| (r.offered, r.offered)).collect(),
            ),
        ],
        h_line: None,
    }
    .render(&mut body, 0.0, 0.0, 900.0, 360.0);
    Chart {
        title: "Session latency vs offered rate (corrected)",
        x_label: "offered sessions/s",
        y_label: "latency (ms)",
        x_ticks: ticks,
        series: vec![
            (
                "p50".into(),
                steps
                    .iter()
                    .map(|r| (r.offered, r.p50_us as f64 / 1000.0))
                    .collect(),
            ),
            (
                "p99".into(),
                steps
                    .iter()
                    .map(|r| (r.offered, r.p99_us as f64 / 1000.0))
                    .collect(),
            ),
        ],
        h_line: Some((slo.max.as_secs_f64() * 1000.0, format!("SLO p{}", slo.percentile))),
    }
    .render(&mut body, 0.0, 370.0, 900.0, 360.0);
    svg_document(900.0, 740.0, &body)
}
