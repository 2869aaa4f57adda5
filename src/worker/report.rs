//! A worker's counters as one value: what a scrape's snapshot and the exit report carry, and how two workers' add up.

use super::{AdmitStats, TlsStats};
use crate::backend::IoStats;
use crate::metrics::histogram::Histogram;
use crate::proto::Stats;
use crate::spool::SpoolStats;

/// Connections refused at accept, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Over `max_connections` (`421 4.3.2 Too many connections`).
    pub max_connections: u64,
    /// During shutdown (`421 4.3.2 Service shutting down`).
    pub shutting_down: u64,
    /// The backend could not take the socket.
    pub attach_failed: u64,
    /// Accepted with the backend's spare descriptor while the process had none left
    /// (`421 4.3.2 Too many connections`).
    pub out_of_descriptors: u64,
}

/// A worker's counters, merged by the main thread at exit.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Every session's counters, added as each ended, and the replies sent outside sessions.
    pub stats: Stats,
    pub io: IoStats,
    pub tls: TlsStats,
    pub admit: AdmitStats,
    pub spool: SpoolStats,
    pub accepted: u64,
    pub refused: Refused,
    /// Octets read from clients' sockets, counted as the backend delivers them: before TLS
    /// decryption (so record overhead included) and before the session consumes them.
    pub received_octets: u64,
    /// Per message, seconds from its hand-over to the committer to its batch's durable end.
    pub commit_seconds: Histogram,
    /// Per commit batch, its messages.
    pub commit_batch: Histogram,
}

impl Report {
    pub fn merge(&mut self, other: &Report) {
        self.stats.merge(&other.stats);
        self.io.merge(&other.io);
        self.tls.merge(&other.tls);
        self.admit.merge(&other.admit);
        self.spool.merge(&other.spool);
        self.accepted += other.accepted;
        self.refused.max_connections += other.refused.max_connections;
        self.refused.shutting_down += other.refused.shutting_down;
        self.refused.attach_failed += other.refused.attach_failed;
        self.refused.out_of_descriptors += other.refused.out_of_descriptors;
        self.received_octets += other.received_octets;
        self.commit_seconds.merge(&other.commit_seconds);
        self.commit_batch.merge(&other.commit_batch);
    }

    /// Connections refused for any reason.
    pub fn rejected(&self) -> u64 {
        let r = &self.refused;
        r.max_connections + r.shutting_down + r.attach_failed + r.out_of_descriptors
    }
}
