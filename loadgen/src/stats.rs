//! Measurements: per-phase latency histograms and event counters, mergeable across threads, merged per run.

use hdrhistogram::Histogram;
use ringmx_loadgen::reply::Caps;
use serde::Serialize;

use crate::vocab::{CLASSES, MAX_OUTCOMES, MAX_VARIANTS, PHASES, STEP_COUNT};

/// Highest latency a histogram holds, in microseconds (1 hour); longer values saturate.
pub const MAX_US: u64 = 3_600_000_000;
/// Three significant digits: 0.1% value resolution, what wrk2 and HdrHistogram default to.
pub const SIGFIG: u8 = 3;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, SIGFIG).expect("static histogram bounds are valid")
}

/// One histogram per phase, indexed by `Phase as usize`.
#[derive(Clone)]
pub struct PhaseHists(pub Vec<Histogram<u64>>);

impl PhaseHists {
    pub fn new() -> PhaseHists {
        PhaseHists(PHASES.iter().map(|_| new_hist()).collect())
    }

    pub fn add(&mut self, o: &PhaseHists) {
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            a.add(b).expect("histograms share bounds");
        }
    }
}

/// Outcome counters of one traffic class.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ClassCounters {
    pub sessions: u64,
    pub ok: u64,
    pub mismatch: u64,
    pub timeout: u64,
    pub reset: u64,
    pub refused: u64,
    /// TLS handshake failed or the TLS layer broke (bad certificate, alert, garbage).
    pub tls: u64,
    pub aborted: u64,
    /// Ended sessions by variant (`Class::variants`); summary.json names them.
    #[serde(skip)]
    pub variants: [u64; MAX_VARIANTS],
    /// Outcome counters (`Class::outcomes`); summary.json names them.
    #[serde(skip)]
    pub outcomes: [u64; MAX_OUTCOMES],
}

#[derive(Debug, Clone)]
pub struct Counters {
    pub sessions_started: u64,
    pub messages: u64,
    pub commands: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub enhanced_missing: u64,
    pub tls_handshakes: u64,
    /// Handshakes that resumed an earlier session (`--tls-resume`).
    pub tls_resumed: u64,
    pub class: [ClassCounters; CLASSES.len()],
    /// Mismatches by class and step.
    pub mismatch_steps: [[u64; STEP_COUNT]; CLASSES.len()],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            sessions_started: 0,
            messages: 0,
            commands: 0,
            bytes_sent: 0,
            bytes_received: 0,
            enhanced_missing: 0,
            tls_handshakes: 0,
            tls_resumed: 0,
            class: [ClassCounters::default(); CLASSES.len()],
            mismatch_steps: [[0; STEP_COUNT]; CLASSES.len()],
        }
    }
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.sessions_started += o.sessions_started;
        self.messages += o.messages;
        self.commands += o.commands;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.enhanced_missing += o.enhanced_missing;
        self.tls_handshakes += o.tls_handshakes;
        self.tls_resumed += o.tls_resumed;
        for (a, b) in self.class.iter_mut().zip(&o.class) {
            a.sessions += b.sessions;
            a.ok += b.ok;
            a.mismatch += b.mismatch;
            a.timeout += b.timeout;
            a.reset += b.reset;
            a.refused += b.refused;
            a.tls += b.tls;
            a.aborted += b.aborted;
            for (x, y) in a.variants.iter_mut().zip(&b.variants) {
                *x += y;
            }
            for (x, y) in a.outcomes.iter_mut().zip(&b.outcomes) {
                *x += y;
            }
        }
        for (a, b) in self.mismatch_steps.iter_mut().zip(&o.mismatch_steps) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }

    /// Totals over classes.
    pub fn total(&self) -> ClassCounters {
        let mut t = ClassCounters::default();
        for c in &self.class {
            t.sessions += c.sessions;
            t.ok += c.ok;
            t.mismatch += c.mismatch;
            t.timeout += c.timeout;
            t.reset += c.reset;
            t.refused += c.refused;
            t.tls += c.tls;
            t.aborted += c.aborted;
        }
        t
    }

    /// Sessions that ended with an error (aborted-at-end sessions are not errors).
    pub fn errors(&self) -> u64 {
        let t = self.total();
        t.mismatch + t.timeout + t.reset + t.refused + t.tls
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_merge() {
        let mut a = Counters::default();
        let mut b = Counters {
            messages: 3,
            ..Counters::default()
        };
        b.class[1].mismatch = 2;
        b.class[2].timeout = 1;
        b.mismatch_steps[1][4] = 2;
        b.class[3].variants[2] = 5;
        b.class[3].outcomes[1] = 7;
        a.add(&b);
        a.add(&b);
        assert_eq!(a.messages, 6);
        assert_eq!(a.errors(), 6);
        assert_eq!(a.mismatch_steps[1][4], 4);
        assert_eq!((a.class[3].variants[2], a.class[3].outcomes[1]), (10, 14));
    }

    #[test]
    fn hists_merge_and_saturate() {
        let mut a = PhaseHists::new();
        let mut b = PhaseHists::new();
        b.0[0].saturating_record(10);
        b.0[0].saturating_record(MAX_US * 10);
        a.add(&b);
        assert_eq!(a.0[0].len(), 2);
        assert!(a.0[0].max() >= MAX_US / 2);
    }
}
