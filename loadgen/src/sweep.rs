//! Capacity search: step the open-loop rate until the latency objective or error budget breaks.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::chart::{latency_axis, slo_label, svg_document, Axis, Chart, Series, Unit};
use crate::cli::{Config, Slo};
use crate::stats::Collected;
use crate::vocab::Phase;

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
    /// The warm-up run at the first step's rate, reported but not a step (`None`: no warm-up).
    warmup: Option<Warmup>,
    /// Highest offered rate whose step met both the SLO and the error budget.
    capacity: Option<f64>,
    steps: &'a [StepResult],
}

/// What the warm-up measured: shown, so that a slow start is seen, but no step of the curve.
#[derive(Debug, Serialize)]
struct Warmup {
    offered: f64,
    duration_s: f64,
    p99_us: u64,
    sessions: u64,
    errors: u64,
}

/// What a sweep is asked for: `--sweep FROM:TO:STEP`, `--slo`, `--step-duration`, `--error-budget`.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub from: f64,
    pub to: f64,
    pub step: f64,
    pub slo: Slo,
    pub step_duration: Duration,
    /// `--sweep-warmup`: an unkept run at `from` before the first step.
    pub warmup: Option<Duration>,
    pub budget_pct: f64,
}

/// Run one open-loop step per offered rate with `run_step`, stop at the first that breaks the
/// SLO or the error budget, and print and write the capacity table. `run_step` runs the load
/// (the caller's engine) so that the search itself needs no sockets.
pub fn run(
    base: &Config,
    plan: Plan,
    mut run_step: impl FnMut(&Config) -> Result<Collected, String>,
) -> Result<(), String> {
    let slo_us = u64::try_from(plan.slo.max.as_micros()).unwrap_or(u64::MAX);
    let mut steps: Vec<StepResult> = vec![];
    let mut capacity = None;
    let warmup = if let Some(length) = plan.warmup {
        let c = run_step(&step_config(base, plan.from, length))?;
        let r = StepResult::of(plan.from, &c, &plan, slo_us);
        if !base.quiet {
            eprintln!(
                "sweep: warm-up {:.0}/s for {:?}: p99 {:.3} ms, errors {} (not a step)",
                plan.from,
                length,
                r.p99_us as f64 / 1000.0,
                r.errors
            );
        }
        Some(Warmup {
            offered: plan.from,
            duration_s: length.as_secs_f64(),
            p99_us: r.p99_us,
            sessions: r.sessions,
            errors: r.errors,
        })
    } else {
        None
    };
    let n = ((plan.to - plan.from) / plan.step).floor() as u64;
    for k in 0..=n {
        let rate = plan.from + plan.step * k as f64;
        let c = run_step(&step_config(base, rate, plan.step_duration))?;
        let r = StepResult::of(rate, &c, &plan, slo_us);
        if !base.quiet {
            r.print(plan.slo);
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
        slo_percentile: plan.slo.percentile,
        slo_us,
        error_budget_pct: plan.budget_pct,
        step_duration_s: plan.step_duration.as_secs_f64(),
        warmup,
        capacity,
        steps: &steps,
    };
    let json = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
    if base.json {
        println!("{json}");
    } else {
        print!("{}", table(&steps, plan.slo, capacity));
    }
    if let Some(dir) = &base.out {
        std::fs::write(dir.join("sweep.json"), &json).map_err(|e| format!("sweep.json: {e}"))?;
        std::fs::write(dir.join("sweep.svg"), svg(&steps, plan.slo))
            .map_err(|e| format!("sweep.svg: {e}"))?;
    }
    Ok(())
}

/// The run settings of one step: open loop at `rate` for `duration`, no live line.
fn step_config(base: &Config, rate: f64, duration: Duration) -> Config {
    let mut cfg = base.clone();
    cfg.rate = Some(rate);
    cfg.duration = Some(duration);
    cfg.sessions = None;
    cfg.quiet = true;
    // 50 is the closed-loop default: an open loop needs room for sessions in flight.
    if base.connections == 50 {
        cfg.connections = 4096;
    }
    cfg
}

impl StepResult {
    fn of(rate: f64, c: &Collected, plan: &Plan, slo_us: u64) -> StepResult {
        let h = &c.corrected.0[Phase::Session as usize];
        let t = c.counters.total();
        let ended = t.sessions - t.aborted;
        let errors = c.counters.errors();
        // Sessions that never got a slot are failures to serve the offered rate too.
        let error_pct = 100.0 * (errors + c.backlog) as f64 / (ended + c.backlog).max(1) as f64;
        let q = plan.slo.percentile / 100.0;
        StepResult {
            offered: rate,
            achieved: ended as f64 / c.elapsed_s.max(1e-9),
            messages_per_s: c.counters.messages as f64 / c.elapsed_s.max(1e-9),
            p50_us: h.value_at_quantile(0.5),
            slo_value_us: h.value_at_quantile(q),
            p99_us: h.value_at_quantile(0.99),
            sessions: ended,
            errors,
            error_pct,
            backlog: c.backlog,
            met_slo: !h.is_empty() && h.value_at_quantile(q) <= slo_us,
            within_budget: error_pct <= plan.budget_pct,
        }
    }

    /// The live line of a step, on stderr.
    fn print(&self, slo: Slo) {
        eprintln!(
            "sweep: offered {:.0}/s achieved {:.1}/s p{} {:.3} ms errors {:.3}%{}",
            self.offered,
            self.achieved,
            slo.percentile,
            self.slo_value_us as f64 / 1000.0,
            self.error_pct,
            if self.met_slo && self.within_budget {
                ""
            } else {
                "  <- breaks"
            }
        );
    }
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

/// sweep.svg: achieved against offered rate, then p50 and p99 session latency against
/// offered rate with the SLO line.
fn svg(steps: &[StepResult], slo: Slo) -> String {
    let mut body = String::new();
    let pts = |f: &dyn Fn(&StepResult) -> f64| -> Vec<(f64, f64)> {
        steps.iter().map(|r| (r.offered, f(r))).collect()
    };
    let mut offered = Series::line("offered", pts(&|r| r.offered));
    offered.dashed = true;
    let mut achieved = Series::line("achieved", pts(&|r| r.achieved));
    achieved.markers = true;
    Chart {
        title: "Achieved vs offered rate".into(),
        x: Axis::new("offered rate (sessions/s)", Unit::Count),
        y: Axis::new("sessions/s", Unit::Count),
        series: vec![achieved, offered],
        colors: None,
        h_line: None,
    }
    .render(&mut body, 0.0, 0.0, 900.0, 360.0);
    let slo_ms = slo.max.as_secs_f64() * 1000.0;
    let ms = |us: u64| us as f64 / 1000.0;
    let values = steps.iter().flat_map(|r| [ms(r.p50_us), ms(r.p99_us)]);
    let mut series = vec![
        Series::line("p50", pts(&|r| ms(r.p50_us))),
        Series::line("p99", pts(&|r| ms(r.p99_us))),
    ];
    for s in &mut series {
        s.markers = true;
    }
    Chart {
        title: "Session latency vs offered rate (corrected)".into(),
        x: Axis::new("offered rate (sessions/s)", Unit::Count),
        y: latency_axis("session latency", values.chain([slo_ms])),
        series,
        colors: None,
        h_line: Some((slo_ms, slo_label(slo.percentile, slo_ms))),
    }
    .render(&mut body, 0.0, 370.0, 900.0, 360.0);
    svg_document(900.0, 740.0, &body)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Args;
    use crate::stats::{Counters, PhaseHists};
    use crate::vocab::Class;

    /// A step in which 10 sessions all succeeded in `latency_us` each.
    fn step(latency_us: u64) -> Collected {
        let mut corrected = PhaseHists::new();
        corrected.0[Phase::Session as usize]
            .record_n(latency_us, 10)
            .unwrap();
        let mut counters = Counters::default();
        counters.class[Class::Valid as usize].sessions = 10;
        counters.class[Class::Valid as usize].ok = 10;
        Collected {
            uncorrected: corrected.clone(),
            corrected,
            counters,
            caps: None,
            backlog: 0,
            elapsed_s: 1.0,
            intervals: vec![],
        }
    }

    #[test]
    fn steps_up_to_the_first_rate_that_breaks_the_slo() {
        let args = ["ringmx-loadgen", "--target", "127.0.0.1:25", "--quiet"];
        let cfg = Args::try_parse_from(args).unwrap().into_config().unwrap();
        let plan = Plan {
            from: 100.0,
            to: 500.0,
            step: 100.0,
            slo: Slo {
                percentile: 99.0,
                max: Duration::from_millis(50),
            },
            step_duration: Duration::from_secs(1),
            warmup: None,
            budget_pct: 0.1,
        };
        let mut offered = vec![];
        run(&cfg, plan, |c| {
            let rate = c.rate.expect("every step is open loop");
            assert_eq!((c.duration, c.sessions), (Some(Duration::from_secs(1)), None));
            assert_eq!(c.connections, 4096, "the closed-loop default is raised");
            offered.push(rate);
            Ok(step(if rate < 300.0 { 10_000 } else { 80_000 }))
        })
        .unwrap();
        assert_eq!(offered, [100.0, 200.0, 300.0]);

        // A warm-up runs first, at the first rate for its own length, and is no step: a
        // warm-up that broke the objective does not end the sweep.
        let mut runs = vec![];
        let warm = Plan {
            warmup: Some(Duration::from_secs(3)),
            ..plan
        };
        run(&cfg, warm, |c| {
            runs.push((c.rate.unwrap(), c.duration.unwrap()));
            Ok(step(if runs.len() == 1 || c.rate.unwrap() >= 300.0 {
                80_000
            } else {
                10_000
            }))
        })
        .unwrap();
        let secs = Duration::from_secs;
        assert_eq!(
            runs,
            [
                (100.0, secs(3)),
                (100.0, secs(1)),
                (200.0, secs(1)),
                (300.0, secs(1))
            ]
        );
    }
}
