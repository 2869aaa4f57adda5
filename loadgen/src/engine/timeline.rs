//! A worker's clock: when sessions start (open loop), when it reports and scans for timeouts, and whether it is still starting sessions or draining.

use std::time::{Duration, Instant};

use crate::cli::Config;

pub(super) struct Timeline {
    pub start: Instant,
    /// Open loop: this worker's share of the schedule, interleaved with the others.
    pub period: Option<Duration>,
    pub offset: f64,
    pub period_s: f64,
    pub scheduled: u64,
    pub next_start: Instant,
    /// `--sessions` ran out (so no session was left unstarted for lack of a slot).
    pub exhausted: bool,
    pub interval: u64,
    pub next_report: Instant,
    pub scan_every: Duration,
    pub next_scan: Instant,
    pub starting: bool,
    pub drain_until: Option<Instant>,
}

impl Timeline {
    pub fn new(cfg: &Config, id: usize, start: Instant) -> Timeline {
        let period = cfg.rate.map(|r| Duration::from_secs_f64(cfg.threads as f64 / r));
        let scan_every = (cfg.timeout / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
        let mut t = Timeline {
            start,
            period,
            offset: cfg.rate.map_or(0.0, |r| id as f64 / r),
            period_s: period.map_or(0.0, |p| p.as_secs_f64()),
            scheduled: 0,
            next_start: start,
            exhausted: false,
            interval: 0,
            next_report: start + Duration::from_secs(1),
            scan_every,
            next_scan: start + scan_every,
            starting: true,
            drain_until: None,
        };
        t.next_start = t.at(0);
        t
    }

    /// Start time of this worker's session `k`. Computed from the index, not accumulated,
    /// so float rounding cannot drift the schedule.
    pub fn at(&self, k: u64) -> Instant {
        self.start + Duration::from_secs_f64(self.offset + k as f64 * self.period_s)
    }

    /// In open loop, sessions whose start time passed without a free slot never ran:
    /// their latency is unknown and at least the backlog, so report how many.
    pub fn backlog(&self, stop_at: Option<Instant>) -> u64 {
        match (self.period, stop_at) {
            (Some(_), Some(stop)) if !self.exhausted => {
                let window = (stop - self.start).as_secs_f64() - self.offset;
                let due = ((window / self.period_s) - 1e-9).ceil().max(0.0) as u64;
                due.saturating_sub(self.scheduled)
            }
            _ => 0,
        }
    }
}
