//! Delivery's counters: messages queued and completed, recipients delivered, deferred and bounced, notifications sent, the queue's size and oldest age, and per destination its outcomes, connections, health and delivery latency (end of data to the next hop's `250`).
//!
//! The queue's size and oldest age are also published to [`QueueGauges`], atomics the runner
//! stores at the end of every turn, so a scrape reads them without waiting for the runner: a
//! runner busy with a long turn left `ringmx_queue_messages` at its last answer for 80 s in
//! the soak while messages were being delivered.

use super::route::Dest;
use crate::metrics::histogram::Histogram;
use hdrhistogram::Histogram as Hdr;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One destination's counters.
#[derive(Debug, Clone)]
pub struct DestStats {
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
    /// Work items whose connection failed (refused, broken, timed out).
    pub connection_failures: u64,
    /// Recipients deferred without a connection because the destination was dead.
    pub dead_deferrals: u64,
    /// `alive`, `dead` or `probing` (`health.rs`).
    pub health: &'static str,
    pub connections: u64,
    pub threads: u64,
    pub waiting: u64,
    /// Microseconds from the commit of a message to the reply that delivered a recipient.
    latency: Hdr<u64>,
}

impl Default for DestStats {
    fn default() -> Self {
        DestStats {
            delivered: 0,
            deferred: 0,
            failed: 0,
            connection_failures: 0,
            dead_deferrals: 0,
            health: "alive",
            connections: 0,
            threads: 0,
            waiting: 0,
            // 1 µs to an hour, three significant digits: a fixed few tens of kilobytes.
            latency: Hdr::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
        }
    }
}

impl DestStats {
    pub fn record_latency(&mut self, d: Duration) {
        let _ = self
            .latency
            .record((d.as_micros() as u64).clamp(1, 3_600_000_000));
    }

    /// The delivery latency as cumulative buckets at `bounds` (seconds), with its count and
    /// sum, converted from the HdrHistogram at each call (a scrape).
    pub fn latency_buckets(&self, bounds: &[f64]) -> Histogram {
        let to_micros = |secs: f64| (secs * 1e6) as u64;
        Histogram {
            bounds: bounds.to_vec(),
            cumulative: bounds
                .iter()
                .map(|&b| self.latency.count_between(0, to_micros(b)))
                .collect(),
            count: self.latency.len(),
            sum: self.latency.mean() * self.latency.len() as f64 * 1e-6,
        }
    }

    fn json(&self) -> serde_json::Value {
        let q = |p: f64| self.latency.value_at_quantile(p);
        serde_json::json!({
            "delivered": self.delivered,
            "deferred": self.deferred,
            "failed": self.failed,
            "connection_failures": self.connection_failures,
            "dead_deferrals": self.dead_deferrals,
            // As numbers, one per state: the stats file holds counters and gauges only.
            "health": {
                "alive": u64::from(self.health == "alive"),
                "dead": u64::from(self.health == "dead"),
                "probing": u64::from(self.health == "probing"),
            },
            "connections": self.connections,
            "threads": self.threads,
            "waiting": self.waiting,
            "latency_us": {
                "count": self.latency.len(),
                "p50": q(0.5),
                "p90": q(0.9),
                "p99": q(0.99),
                "max": self.latency.max(),
            },
        })
    }
}

/// The runner's counters (its thread is their only writer).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Messages taken into the schedule (new, or found at start).
    pub queued: u64,
    /// Messages that left the spool, every recipient done or failed.
    pub completed: u64,
    /// Recipients deferred (once per attempt that deferred them), and failed for good.
    pub deferred: u64,
    pub bounced: u64,
    /// Deferred recipients failed because `max_queue_lifetime_secs` passed.
    pub expired: u64,
    pub dsn_sent: u64,
    pub deleted: u64,
    /// Durable batches of done marks.
    pub mark_batches: u64,
    /// Batches whose write failed (kept and tried again), and the marks waiting now.
    pub mark_failures: u64,
    pub marks_pending: u64,
    pub queue_size: u64,
    pub oldest_age_secs: u64,
    dests: BTreeMap<String, DestStats>,
}

impl Stats {
    /// The counters of `dest`, created at first use.
    pub fn dest(&mut self, dest: &Arc<Dest>) -> &mut DestStats {
        self.dests.entry(dest.to_string()).or_default()
    }

    /// Every destination with its counters, by name.
    pub fn dests(&self) -> impl Iterator<Item = (&str, &DestStats)> {
        self.dests.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Recipients delivered, over every destination.
    pub fn delivered(&self) -> u64 {
        self.dests.values().map(|d| d.delivered).sum()
    }

    pub fn json(&self) -> serde_json::Value {
        let dests: serde_json::Map<String, serde_json::Value> =
            self.dests.iter().map(|(k, v)| (k.clone(), v.json())).collect();
        serde_json::json!({
            "queued": self.queued,
            "completed": self.completed,
            "delivered": self.delivered(),
            "deferred": self.deferred,
            "bounced": self.bounced,
            "expired": self.expired,
            "dsn_sent": self.dsn_sent,
            "deleted": self.deleted,
            "mark_batches": self.mark_batches,
            "mark_failures": self.mark_failures,
            "marks_pending": self.marks_pending,
            "queue_size": self.queue_size,
            "oldest_age_secs": self.oldest_age_secs,
            "destinations": dests,
        })
    }
}

/// The queue's size and its oldest message's arrival, stored by the runner, read by scrapes.
#[derive(Debug, Default)]
pub struct QueueGauges {
    messages: AtomicU64,
    /// Seconds since the epoch; 0: no message.
    oldest: AtomicU64,
}

impl QueueGauges {
    /// The queue's size now.
    pub fn set_messages(&self, messages: u64) {
        self.messages.store(messages, Ordering::Relaxed);
    }

    /// When the oldest queued message arrived, if any.
    pub fn set_oldest(&self, oldest: Option<SystemTime>) {
        let at = oldest
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs().max(1));
        self.oldest.store(at, Ordering::Relaxed);
    }

    /// Messages queued, and the oldest one's age at `now` in seconds (0 for none).
    pub fn read(&self, now: SystemTime) -> (u64, u64) {
        let oldest = self.oldest.load(Ordering::Relaxed);
        let age = match oldest {
            0 => 0,
            at => now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs().saturating_sub(at)),
        };
        (self.messages.load(Ordering::Relaxed), age)
    }
}
