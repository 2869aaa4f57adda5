//! Counters: a session keeps its own (behind [`Session::stats`]), its owner adds them into [`Stats`] when the session ends.
//!
//! Like quinn-proto's `ConnectionStats`, the counters live where the events happen, so no
//! global is threaded through every call. A session's are 16-bit, to keep an idle session
//! small (88 octets for every reply kind); [`Stats::add`] folds them into 64-bit totals. A
//! session stops taking input every [`SessionStats::FOLD_AT`] commands until its owner folds
//! them with [`Session::take_stats`], so none can wrap.
//!
//! [`Session::stats`]: super::Session::stats
//! [`Session::take_stats`]: super::Session::take_stats

use super::event::CloseReason;
use super::reply::Reply;
use super::sniff::NonSmtp;

/// One session's counters since it started (or since its last [`take_stats`]).
///
/// [`take_stats`]: super::Session::take_stats
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStats {
    /// Replies sent, indexed by [`Reply`] as `usize`.
    pub replies: [u16; Reply::COUNT],
    /// Command lines handled.
    pub commands: u16,
    /// Error replies to commands: the ones `max_errors` counts ([`Reply::is_client_error`]).
    pub errors: u16,
    /// Messages acknowledged with `250` after their commit.
    pub messages: u16,
    /// The class of other protocol the session was ended for, if it was.
    pub non_smtp: Option<NonSmtp>,
}

impl Default for SessionStats {
    fn default() -> Self {
        SessionStats {
            replies: [0; Reply::COUNT],
            commands: 0,
            errors: 0,
            messages: 0,
            non_smtp: None,
        }
    }
}

impl SessionStats {
    /// Commands after which the session takes no input until its owner folds the counters
    /// (`take_stats`). A command causes at most four replies (DATA: `354`, the end of data's
    /// reply, a `421` when shutting down, one at a timeout), so no counter can pass
    /// 4 × 4096 + 2, far inside 16 bits.
    pub const FOLD_AT: u16 = 1 << 12;

    pub(crate) fn count(&mut self, reply: Reply) {
        self.replies[reply as usize] += 1;
        if reply.is_client_error() {
            self.errors += 1;
        }
    }

    /// Whether the counters should be folded now (see [`SessionStats::FOLD_AT`]).
    pub fn should_fold(&self) -> bool {
        self.commands >= Self::FOLD_AT
    }
}

/// Totals over many sessions: every reply kind, every non-SMTP class, every close reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Replies sent, indexed by [`Reply`] as `usize`.
    pub replies: [u64; Reply::COUNT],
    /// Sessions ended for another protocol, indexed by [`NonSmtp`] as `usize`.
    pub non_smtp: [u64; NonSmtp::COUNT],
    /// Sessions ended, indexed by [`CloseReason::index`].
    pub closed: [u64; CloseReason::COUNT],
    /// Command lines handled.
    pub commands: u64,
    /// Error replies to commands.
    pub errors: u64,
    /// Messages acknowledged with `250` after their commit.
    pub messages: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            replies: [0; Reply::COUNT],
            non_smtp: [0; NonSmtp::COUNT],
            closed: [0; CloseReason::COUNT],
            commands: 0,
            errors: 0,
            messages: 0,
        }
    }
}

impl Stats {
    /// Adds a session's counters.
    pub fn add(&mut self, s: &SessionStats) {
        for (a, &b) in self.replies.iter_mut().zip(&s.replies) {
            *a += u64::from(b);
        }
        if let Some(class) = s.non_smtp {
            self.non_smtp[class as usize] += 1;
        }
        self.commands += u64::from(s.commands);
        self.errors += u64::from(s.errors);
        self.messages += u64::from(s.messages);
    }

    /// Counts a reply sent outside any session (`421 4.3.2` to a refused connection).
    pub fn count_reply(&mut self, reply: Reply) {
        self.replies[reply as usize] += 1;
    }

    /// Counts a session that ended.
    pub fn count_close(&mut self, reason: CloseReason) {
        self.closed[reason.index()] += 1;
    }

    /// How many replies of this kind were sent.
    pub fn replies_of(&self, reply: Reply) -> u64 {
        self.replies[reply as usize]
    }

    /// Adds another worker's totals to these.
    pub fn merge(&mut self, other: &Stats) {
        for (a, b) in self.replies.iter_mut().zip(other.replies) {
            *a += b;
        }
        for (a, b) in self.non_smtp.iter_mut().zip(other.non_smtp) {
            *a += b;
        }
        for (a, b) in self.closed.iter_mut().zip(other.closed) {
            *a += b;
        }
        self.commands += other.commands;
        self.errors += other.errors;
        self.messages += other.messages;
    }

    /// Every reply kind with its count, by name, in counter order.
    pub fn replies_by_name(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Reply::ALL.iter().map(|&r| (r.name(), self.replies_of(r)))
    }

    /// Every non-SMTP class with its count, by name.
    pub fn non_smtp_by_name(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        NonSmtp::ALL
            .iter()
            .map(|&c| (c.name(), self.non_smtp[c as usize]))
    }

    /// Every close reason with its count, by name.
    pub fn closed_by_name(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        CloseReason::ALL
            .iter()
            .map(|&r| (r.name(), self.closed[r.index()]))
    }
}
