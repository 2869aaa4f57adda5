//! The Prometheus text exposition format (version 0.0.4): `# HELP` and `# TYPE` per family, samples with escaped labels, histograms as cumulative `_bucket{le}`, `_sum` and `_count`.
//!
//! By hand rather than with the `prometheus-client` crate: every value here is a snapshot
//! taken at scrape time (the workers' plain counters, the runner's stats, `/proc/self`), not
//! a metric object registered up front and updated in place, which is what that crate is
//! built around; its collector interface would still have us copy each value into its types
//! per scrape. The format is small, and the tests check this output with an independent
//! parser.

use super::histogram::Histogram;
use std::fmt::Write as _;

/// A family's type, as `# TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (its name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value: counts print as integers, measurements as floats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Count(u64),
    Measure(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Count(n)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::Measure(x)
    }
}

/// Labels of one sample, as name and value pairs.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// The page being rendered.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family: its help line and type; its samples follow through the returned
    /// handle, so a family's samples are always together, as the format requires.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &str) -> Family<'_> {
        debug_assert!(kind != Kind::Counter || name.ends_with("_total"), "{name}");
        let _ = write!(self.out, "# HELP {name} ");
        escape(&mut self.out, help, false);
        let _ = writeln!(self.out, "\n# TYPE {name} {}", kind.name());
        Family {
            out: &mut self.out,
            name,
        }
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &'static str, kind: Kind, help: &str, value: impl Into<Value>) {
        self.family(name, kind, help).sample(&[], value);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// The samples of one family.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    pub fn sample(&mut self, labels: Labels<'_>, value: impl Into<Value>) -> &mut Self {
        line(self.out, self.name, "", labels, None, value.into());
        self
    }

    /// A histogram's series for one label set: a bucket per bound, `+Inf`, sum and count.
    pub fn histogram(&mut self, labels: Labels<'_>, h: &Histogram) -> &mut Self {
        for (&bound, &n) in h.bounds.iter().zip(&h.cumulative) {
            line(
                self.out,
                self.name,
                "_bucket",
                labels,
                Some(bound),
                Value::Count(n),
            );
        }
        line(
            self.out,
            self.name,
            "_bucket",
            labels,
            Some(f64::INFINITY),
            Value::Count(h.count),
        );
        line(self.out, self.name, "_sum", labels, None, Value::Measure(h.sum));
        line(self.out, self.name, "_count", labels, None, Value::Count(h.count));
        self
    }
}

fn line(out: &mut String, name: &str, suffix: &str, labels: Labels<'_>, le: Option<f64>, value: Value) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"");
            escape(out, v, true);
            out.push('"');
        }
        if let Some(le) = le {
            if !labels.is_empty() {
                out.push(',');
            }
            out.push_str("le=\"");
            float(out, le);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    match value {
        Value::Count(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Measure(x) => float(out, x),
    }
    out.push('\n');
}

/// A float as the format spells it: `+Inf`, `-Inf`, `NaN`, else Rust's shortest round-trip
/// decimal (`0.0005`, `5`).
fn float(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
    } else if x.is_infinite() {
        out.push_str(if x > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{x}");
    }
}

/// Backslash and line feed escaped (and, in a label value, the double quote).
fn escape(out: &mut String, text: &str, quote: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_labels_and_histograms_follow_the_format() {
        let mut e = Exposition::default();
        e.family("x_total", Kind::Counter, "a \\ help\nline")
            .sample(&[("a", "q\"u\\o\nte")], 3u64)
            .sample(&[("a", "")], 0u64);
        e.family("h_seconds", Kind::Histogram, "h").histogram(
            &[("d", "x")],
            &Histogram {
                bounds: vec![0.0005, 5.0],
                cumulative: vec![1, 2],
                count: 3,
                sum: 7.25,
            },
        );
        e.single("g", Kind::Gauge, "g", 1.5);
        assert_eq!(
            e.finish(),
            "# HELP x_total a \\\\ help\\nline\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"u\\\\o\\nte\"} 3\nx_total{a=\"\"} 0\n\
             # HELP h_seconds h\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{d=\"x\",le=\"0.0005\"} 1\nh_seconds_bucket{d=\"x\",le=\"5\"} 2\n\
             h_seconds_bucket{d=\"x\",le=\"+Inf\"} 3\nh_seconds_sum{d=\"x\"} 7.25\n\
             h_seconds_count{d=\"x\"} 3\n\
             # HELP g g\n# TYPE g gauge\ng 1.5\n"
        );
    }
}
