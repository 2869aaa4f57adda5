//! One connection slot of a worker: the session's state, its plan's progress, its reply buffer and transcript.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use ringmx_loadgen::reply::Caps;

use crate::script::{BigMsg, Cmd, SessionKind};
use crate::vocab::Class;

/// Cap on a transcript kept in memory per connection.
const TRANSCRIPT_CAP: usize = 32 * 1024;
/// Pieces longer than this are shown shortened in transcripts.
const TRANSCRIPT_PIECE: usize = 240;
/// Initial reply buffer; grows only for unusually long multi-line replies.
const INBUF: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Idle,
    Connecting,
    Running,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    Mismatch,
    Timeout,
    Reset,
    Refused,
    /// The TLS handshake failed or the TLS layer broke.
    Tls,
    /// Still running when the run's drain time ran out: not the server's fault.
    Aborted,
}

pub(super) struct Conn {
    pub stream: Option<TcpStream>,
    pub state: State,
    /// Counts the slot's sessions, so a timer set for an ended session is known stale.
    pub generation: u32,
    pub kind: SessionKind,
    pub caps: Caps,
    pub plan: Vec<Cmd>,
    /// First command of the batch being written, next command to write, next to be answered.
    pub batch: usize,
    pub sent: usize,
    pub acked: usize,
    /// Octets of the current batch already written.
    pub written: usize,
    pub batch_len: usize,
    pub inbuf: Vec<u8>,
    pub in_head: usize,
    pub in_len: usize,
    pub intended: Instant,
    pub started: Instant,
    /// How late the session started against its schedule, added to every phase (open loop).
    pub lag_us: u64,
    pub batch_at: Instant,
    pub deadline: Instant,
    pub transcript: Vec<u8>,
    /// The session's TLS layer once started; the script waits while it handshakes.
    pub tls: Option<rustls::ClientConnection>,
    pub handshaking: bool,
    pub tls_at: Instant,
    /// The bigmsg class's pieces, rendered for the SIZE its server advertised.
    pub big: Option<Arc<BigMsg>>,
    /// A slowloris drip is under way: octets of it sent so far.
    pub dripping: bool,
    pub drip_pos: usize,
    /// The overshoot class got a `452` to a recipient: every later one must get it too.
    pub saw_452: bool,
}

impl Conn {
    pub fn new(now: Instant) -> Conn {
        Conn {
            stream: None,
            state: State::Idle,
            generation: 0,
            kind: SessionKind {
                class: Class::Valid,
                variant: 0,
            },
            caps: Caps::default(),
            plan: Vec::with_capacity(16),
            batch: 0,
            sent: 0,
            acked: 0,
            written: 0,
            batch_len: 0,
            inbuf: vec![0; INBUF],
            in_head: 0,
            in_len: 0,
            intended: now,
            started: now,
            lag_us: 0,
            batch_at: now,
            deadline: now,
            transcript: Vec::new(),
            tls: None,
            handshaking: false,
            tls_at: now,
            big: None,
            dripping: false,
            drip_pos: 0,
            saw_452: false,
        }
    }

    /// Free the consumed head of the reply buffer, or grow it when a reply fills it.
    pub fn make_room(&mut self) {
        if self.in_head == self.in_len {
            self.in_head = 0;
            self.in_len = 0;
        } else if self.in_len == self.inbuf.len() {
            if self.in_head > 0 {
                self.inbuf.copy_within(self.in_head..self.in_len, 0);
                self.in_len -= self.in_head;
                self.in_head = 0;
            } else {
                let l = self.inbuf.len();
                self.inbuf.resize(l * 2, 0);
            }
        }
    }

    /// The unparsed replies buffered.
    pub fn pending(&self) -> &[u8] {
        &self.inbuf[self.in_head..self.in_len]
    }
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

pub(super) fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

pub(super) fn append_transcript(t: &mut Vec<u8>, prefix: &[u8], b: &[u8]) {
    if t.len() >= TRANSCRIPT_CAP {
        return;
    }
    t.extend_from_slice(prefix);
    if b.len() > TRANSCRIPT_PIECE {
        t.extend(b[..TRANSCRIPT_PIECE].escape_ascii());
        t.extend_from_slice(format!(" ... [{} more octets]\n", b.len() - TRANSCRIPT_PIECE).as_bytes());
    } else {
        t.extend(b.escape_ascii());
        t.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_shortens_long_pieces() {
        let mut t = vec![];
        append_transcript(&mut t, b"C: ", b"EHLO x\r\n");
        append_transcript(&mut t, b"C: ", &[b'a'; 1000]);
        let s = String::from_utf8(t).unwrap();
        assert!(s.starts_with("C: EHLO x\\r\\n\n"));
        assert!(s.contains("[760 more octets]"));
    }
}
