//! The SMTP protocol engine, sans-IO: client bytes and the clock go in, reply bytes and message events come out.
//!
//! Nothing here opens a socket, reads a clock or allocates per command: the caller lends the
//! output buffer and passes `now`. Methods follow quinn-proto's vocabulary: `handle_*` takes
//! input (bytes, a commit result, a timeout, shutdown), `poll_*` yields output (events, the next
//! deadline). Given the same bytes, split anywhere, a session answers the same.

mod address;
mod data;
mod reply;
mod session;
mod verb;

pub use address::MailParams;
pub use data::{Body, DataReceiver, Fed, Flaw, MAX_PIECES};
pub use reply::Reply;
pub use session::{Commit, Envelope, Event, Progress, Session, Settings};

/// A class of non-SMTP traffic, answered with one `554 5.5.0` and a hang-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NonSmtp {
    /// An HTTP request line (`GET / HTTP/1.1`, `POST`, `CONNECT`, …), at any point.
    Http,
    /// An HTTP header line (`Host: x`) before the first SMTP command.
    Header,
    /// An SSH identification string (RFC 4253 §4.2), at any point.
    Ssh,
    /// A TLS handshake record on this plain port, before the first SMTP command.
    Tls,
    /// Control characters, NUL, or a first byte no SMTP verb starts with.
    Binary,
}

impl NonSmtp {
    /// Number of classes, for counter arrays.
    pub const COUNT: usize = NonSmtp::Binary as usize + 1;
    /// Every class, in counter order.
    pub const ALL: [NonSmtp; NonSmtp::COUNT] = [
        NonSmtp::Http,
        NonSmtp::Header,
        NonSmtp::Ssh,
        NonSmtp::Tls,
        NonSmtp::Binary,
    ];

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            NonSmtp::Http => "http",
            NonSmtp::Header => "http_header",
            NonSmtp::Ssh => "ssh",
            NonSmtp::Tls => "tls",
            NonSmtp::Binary => "binary",
        }
    }

    fn reply(self) -> &'static [u8] {
        match self {
            NonSmtp::Http => b"554 5.5.0 Error: HTTP request on an SMTP port\r\n",
            NonSmtp::Header => b"554 5.5.0 Error: HTTP header on an SMTP port\r\n",
            NonSmtp::Ssh => b"554 5.5.0 Error: SSH on an SMTP port\r\n",
            NonSmtp::Tls => b"554 5.5.0 Error: TLS handshake on a plain SMTP port\r\n",
            NonSmtp::Binary => b"554 5.5.0 Error: binary data on an SMTP port\r\n",
        }
    }
}

/// Counters a worker keeps for all its sessions: every reply kind, every non-SMTP class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Replies sent, indexed by [`Reply`] as `usize`.
    pub replies: [u64; Reply::COUNT],
    /// Non-SMTP connections, indexed by [`NonSmtp`] as `usize`.
    pub non_smtp: [u64; NonSmtp::COUNT],
    /// Command lines handled.
    pub commands: u64,
    /// Error replies to commands: the ones `max_errors` counts ([`Reply::is_client_error`]).
    pub errors: u64,
    /// Messages acknowledged with `250` after their commit.
    pub messages: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            replies: [0; Reply::COUNT],
            non_smtp: [0; NonSmtp::COUNT],
            commands: 0,
            errors: 0,
            messages: 0,
        }
    }
}

impl Stats {
    pub(crate) fn count(&mut self, reply: Reply) {
        self.replies[reply as usize] += 1;
    }

    /// How many replies of this kind were sent.
    pub fn replies_of(&self, reply: Reply) -> u64 {
        self.replies[reply as usize]
    }

    /// Adds another worker's counters to these.
    pub fn merge(&mut self, other: &Stats) {
        for (a, b) in self.replies.iter_mut().zip(other.replies) {
            *a += b;
        }
        for (a, b) in self.non_smtp.iter_mut().zip(other.non_smtp) {
            *a += b;
        }
        self.commands += other.commands;
        self.errors += other.errors;
        self.messages += other.messages;
    }
}
