//! `ringmx-loadgen plot OUT.svg LABEL=sweep.json…`: several sweeps' latency and throughput against offered rate in one SVG.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::Value;

use crate::chart::{colors, latency_axis, slo_label, svg_document, Axis, Chart, Series, Unit};
use crate::cli::parse_duration;

/// Latency, then achieved messages/s, against offered sessions/s for several sweeps, one
/// colour per LABEL (the palette's in the order given).
#[derive(Parser, Debug)]
#[command(name = "ringmx-loadgen plot")]
struct Args {
    /// The SVG file to write.
    out: PathBuf,
    /// Draw the latency objective at this value [default: the sweeps' own SLO, when they
    /// share one on --metric's percentile].
    #[arg(long, value_parser = parse_duration)]
    slo: Option<Duration>,
    /// Which percentile of corrected session latency to draw.
    #[arg(long, value_enum, default_value_t = Metric::P99)]
    metric: Metric,
    /// LABEL=PATH: a sweep.json, or a --out directory holding one.
    #[arg(required = true, value_name = "LABEL=PATH")]
    sweeps: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Metric {
    P50,
    P99,
}

impl Metric {
    fn percentile(self) -> f64 {
        match self {
            Metric::P50 => 50.0,
            Metric::P99 => 99.0,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Metric::P50 => "p50_us",
            Metric::P99 => "p99_us",
        }
    }
}

/// One sweep: its label, SLO, and steps as (offered, latency ms, messages/s).
struct Sweep {
    label: String,
    slo: Option<(f64, f64)>,
    steps: Vec<(f64, f64, f64)>,
}

pub fn main(argv: &[String]) -> Result<(), String> {
    let args = match Args::try_parse_from(std::iter::once("plot".to_string()).chain(argv.iter().cloned())) {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            print!("{e}");
            return Ok(());
        }
        Err(e) => return Err(format!("usage: {e}")),
    };
    let mut sweeps = vec![];
    for s in &args.sweeps {
        let (label, path) = s
            .split_once('=')
            .filter(|(l, p)| !l.is_empty() && !p.is_empty())
            .ok_or_else(|| format!("usage: {s:?} is not LABEL=PATH"))?;
        sweeps.push(read_sweep(label, Path::new(path), args.metric)?);
    }
    let slo_ms = match args.slo {
        Some(d) => Some(d.as_secs_f64() * 1000.0),
        None => shared_slo(&sweeps, args.metric.percentile()),
    };
    let svg = svg(&sweeps, args.metric, slo_ms);
    std::fs::write(&args.out, svg).map_err(|e| format!("writing {}: {e}", args.out.display()))
}

fn read_sweep(label: &str, path: &Path, metric: Metric) -> Result<Sweep, String> {
    let file = if path.is_dir() {
        path.join("sweep.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let steps = v["steps"]
        .as_array()
        .ok_or_else(|| format!("{}: no steps[] (not a sweep.json?)", file.display()))?;
    let f = |s: &Value, k: &str| {
        s[k].as_f64()
            .ok_or_else(|| format!("{}: a step lacks {k}", file.display()))
    };
    let steps = steps
        .iter()
        .map(|s| {
            Ok((
                f(s, "offered")?,
                f(s, metric.key())? / 1000.0,
                f(s, "messages_per_s")?,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let slo = v["slo_percentile"]
        .as_f64()
        .zip(v["slo_us"].as_f64().map(|u| u / 1000.0));
    Ok(Sweep {
        label: label.to_string(),
        slo,
        steps,
    })
}

/// The sweeps' SLO (ms) when they all have the same one, on the percentile drawn.
fn shared_slo(sweeps: &[Sweep], percentile: f64) -> Option<f64> {
    let first = sweeps.first()?.slo?;
    (first.0 == percentile && sweeps.iter().all(|s| s.slo == Some(first))).then_some(first.1)
}

fn svg(sweeps: &[Sweep], metric: Metric, slo_ms: Option<f64>) -> String {
    let names: Vec<&str> = sweeps.iter().map(|s| s.label.as_str()).collect();
    let cols = colors(&names);
    let series = |f: &dyn Fn(&(f64, f64, f64)) -> f64| -> Vec<Series> {
        sweeps
            .iter()
            .map(|s| Series {
                markers: true,
                ..Series::line(&s.label, s.steps.iter().map(|p| (p.0, f(p))).collect())
            })
            .collect()
    };
    let p = metric.percentile();
    let lat = sweeps.iter().flat_map(|s| s.steps.iter().map(|p| p.1));
    let mut body = String::new();
    Chart {
        title: format!("p{p} session latency vs offered rate (corrected)"),
        x: Axis::new("offered rate (sessions/s)", Unit::Count),
        y: latency_axis(&format!("p{p} session latency"), lat.chain(slo_ms)),
        series: series(&|p| p.1),
        colors: Some(cols.clone()),
        h_line: slo_ms.map(|ms| (ms, slo_label(p, ms))),
    }
    .render(&mut body, 0.0, 0.0, 900.0, 400.0);
    Chart {
        title: "Achieved messages/s vs offered rate".into(),
        x: Axis::new("offered rate (sessions/s)", Unit::Count),
        y: Axis::new("achieved (messages/s)", Unit::Count),
        series: series(&|p| p.2),
        colors: Some(cols),
        h_line: None,
    }
    .render(&mut body, 0.0, 410.0, 900.0, 400.0);
    svg_document(900.0, 820.0, &body)
}
