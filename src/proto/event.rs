//! What a session tells its caller: the events it asks to be handled, why it ended, and what one call consumed.

use super::data::Body;
use super::sniff::NonSmtp;

/// What the session asks of its caller. Polled in a fixed order: start, end, abort, STARTTLS,
/// close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A message begins (after `354`, or at the first BDAT chunk); [`Session::envelope`]
    /// describes it until its end or abort.
    ///
    /// [`Session::envelope`]: super::Session::envelope
    MessageStart,
    /// The message is complete: commit it durably, then call [`Session::handle_commit`]. The
    /// session reads no further input until then, so pipelined replies keep their order.
    ///
    /// [`Session::handle_commit`]: super::Session::handle_commit
    MessageEnd,
    /// The message was refused or its transaction ended: discard what was written of it.
    MessageAbort,
    /// The session answered `220 2.0.0 Ready to start TLS`: send what the output buffer holds
    /// as it is, discard whatever input follows the STARTTLS line (RFC 3207 §4.2; executing it
    /// would be CVE-2011-0411, the STARTTLS command injection), run the TLS handshake, then call
    /// [`Session::handle_tls_established`]. The session consumes nothing until then.
    ///
    /// [`Session::handle_tls_established`]: super::Session::handle_tls_established
    StartTls,
    /// The session is over, for this reason: send what is in the output buffer, then close
    /// the connection.
    Close(CloseReason),
}

/// Why a session ended: the session gives the protocol's reasons in [`Event::Close`]; the
/// caller uses the others for what only it can see (the peer, the socket, the shutdown grace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent QUIT (`221`).
    Quit,
    /// The error limit was reached (`421 4.7.0`).
    TooManyErrors,
    /// No command or data within the timeout (`421 4.4.2`, RFC 5321 §4.5.3.2).
    Timeout,
    /// The storage did not answer within `commit_timeout_secs` (`451 4.3.0`).
    CommitTimeout,
    /// Another protocol on the SMTP port (`554 5.5.0`).
    NonSmtp(NonSmtp),
    /// The server is shutting down (`421 4.3.2`).
    Shutdown,
    /// The client closed its side and nothing it sent is left to answer.
    PeerClosed,
    /// Receiving failed (connection reset, …).
    ReceiveError,
    /// Sending failed (connection reset, …).
    SendError,
    /// The shutdown grace expired inside a transaction.
    GraceExpired,
    /// The TLS handshake failed, or a TLS record was bad (the cause is counted by the caller).
    TlsError,
    /// The TLS handshake did not finish within `tls_handshake_timeout_secs`.
    TlsTimeout,
    /// The client talked before the greeting was complete (`554 5.5.1`, `greet_delay_ms`).
    Pregreet,
    /// A message arrived slower than `min_data_rate` (`421 4.4.2`).
    SlowData,
    /// The session lasted `max_session_secs` (`421 4.4.2`).
    SessionTooLong,
    /// A BDAT chunk larger than any message refused, rather than read for nothing (`552`).
    ChunkTooBig,
    /// The PROXY header was missing, malformed or late (its cause is counted by the caller).
    Proxy,
    /// Over a per-client limit (`421 4.7.0`).
    ClientLimit,
}

impl CloseReason {
    /// Number of counter slots: every non-SMTP class shares one (its class is counted apart).
    pub const COUNT: usize = 18;
    /// Every counter slot's reason, in counter order.
    pub const ALL: [CloseReason; CloseReason::COUNT] = [
        CloseReason::Quit,
        CloseReason::TooManyErrors,
        CloseReason::Timeout,
        CloseReason::CommitTimeout,
        CloseReason::NonSmtp(NonSmtp::Binary),
        CloseReason::Shutdown,
        CloseReason::PeerClosed,
        CloseReason::ReceiveError,
        CloseReason::SendError,
        CloseReason::GraceExpired,
        CloseReason::TlsError,
        CloseReason::TlsTimeout,
        CloseReason::Pregreet,
        CloseReason::SlowData,
        CloseReason::SessionTooLong,
        CloseReason::ChunkTooBig,
        CloseReason::Proxy,
        CloseReason::ClientLimit,
    ];

    /// The reason's counter slot.
    pub fn index(self) -> usize {
        match self {
            CloseReason::Quit => 0,
            CloseReason::TooManyErrors => 1,
            CloseReason::Timeout => 2,
            CloseReason::CommitTimeout => 3,
            CloseReason::NonSmtp(_) => 4,
            CloseReason::Shutdown => 5,
            CloseReason::PeerClosed => 6,
            CloseReason::ReceiveError => 7,
            CloseReason::SendError => 8,
            CloseReason::GraceExpired => 9,
            CloseReason::TlsError => 10,
            CloseReason::TlsTimeout => 11,
            CloseReason::Pregreet => 12,
            CloseReason::SlowData => 13,
            CloseReason::SessionTooLong => 14,
            CloseReason::ChunkTooBig => 15,
            CloseReason::Proxy => 16,
            CloseReason::ClientLimit => 17,
        }
    }

    /// A short name for logs and metrics (one per counter slot).
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Quit => "quit",
            CloseReason::TooManyErrors => "too_many_errors",
            CloseReason::Timeout => "timeout",
            CloseReason::CommitTimeout => "commit_timeout",
            CloseReason::NonSmtp(_) => "non_smtp",
            CloseReason::Shutdown => "shutdown",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::ReceiveError => "receive_error",
            CloseReason::SendError => "send_error",
            CloseReason::GraceExpired => "shutdown_grace_expired",
            CloseReason::TlsError => "tls_error",
            CloseReason::TlsTimeout => "tls_handshake_timeout",
            CloseReason::Pregreet => "pregreet",
            CloseReason::SlowData => "slow_data",
            CloseReason::SessionTooLong => "session_too_long",
            CloseReason::ChunkTooBig => "chunk_too_big",
            CloseReason::Proxy => "proxy",
            CloseReason::ClientLimit => "client_limit",
        }
    }
}

/// What one call to [`Session::handle_input`] did.
///
/// [`Session::handle_input`]: super::Session::handle_input
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<'a> {
    /// Input bytes consumed.
    pub consumed: usize,
    /// Message content, unstuffed and with line ends normalized: slices of the consumed input
    /// (and normalized line ends), handed out without copying. Store it before polling events.
    pub body: Body<'a>,
}

/// The storage's answer to [`Event::MessageEnd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit<'a> {
    /// Durably stored under this queue id.
    Queued(&'a str),
    /// Not stored (write or fsync error, full disk): `452 4.3.1`.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        for (i, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?}");
        }
        let mut names: Vec<_> = CloseReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CloseReason::COUNT);
        assert_eq!(CloseReason::NonSmtp(NonSmtp::Ssh).index(), 4);
    }
}
