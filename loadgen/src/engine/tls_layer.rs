//! The TLS side of a session: rustls between the socket and the script, the handshake timed and counted, plaintext replies handed to the same checks.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use super::conn::{is_reset, micros, Failure, State};
use super::Worker;
use crate::script::Bytes;
use crate::tls;
use crate::vocab::{Class, Outcome, Phase, Step};

/// Plaintext handed to rustls at a time: one TLS record's worth, so its send buffer stays
/// bounded however large the message.
const TLS_CHUNK: usize = 16 * 1024;

/// The TLS side of a session: rustls between the socket and the script.
impl Worker {
    /// Whether a writable socket has something to take: the batch's rest or TLS records.
    pub(super) fn wants_flush(&self, slot: usize) -> bool {
        let c = &self.conns[slot];
        c.written < c.batch_len || c.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Begin the handshake: the ClientHello goes out now, the script waits for its end.
    pub(super) fn start_tls(&mut self, slot: usize, now: Instant) {
        let kind = self.conns[slot].kind;
        // The tls class's resume variant keeps its own session cache (`--tls-resume-share`).
        let resuming = (kind.class == Class::Tls && kind.variant == 1)
            .then_some(self.tls_resuming.as_ref())
            .flatten();
        let Some(client) = resuming.or(self.tls.as_ref()) else {
            return;
        };
        match client.connect() {
            Ok(t) => {
                let c = &mut self.conns[slot];
                c.tls = Some(t);
                c.handshaking = true;
                c.tls_at = now;
                c.deadline = now + self.shared.cfg.timeout;
                self.flush_tls(slot, now);
            }
            Err(_) => self.end_session(slot, Some(Failure::Tls), now),
        }
    }

    /// Hand the batch's plaintext to rustls up to a record's worth at a time and write the
    /// records, until both are done or the socket is full.
    pub(super) fn flush_tls(&mut self, slot: usize, now: Instant) {
        let corpus = Arc::clone(&self.shared.corpus);
        loop {
            let c = &mut self.conns[slot];
            let bytes = Bytes {
                corpus: &corpus,
                big: c.big.as_deref(),
            };
            let (Some(stream), Some(tls)) = (c.stream.as_mut(), c.tls.as_mut()) else {
                return;
            };
            match tls::push(tls, stream) {
                Ok(n) => self.counters.bytes_sent += n as u64,
                Err(e) => {
                    let ok = is_reset(&e) && self.close_expected(slot);
                    self.end_session(slot, if ok { None } else { Some(Failure::Reset) }, now);
                    return;
                }
            }
            if tls.wants_write() || c.handshaking || c.written >= c.batch_len {
                return;
            }
            let mut skip = c.written;
            let mut fed = 0;
            for cmd in &c.plan[c.batch..c.sent] {
                let b = bytes.of(cmd.piece);
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                let end = (skip + TLS_CHUNK - fed).min(b.len());
                match tls.writer().write(&b[skip..end]) {
                    Ok(k) => fed += k,
                    Err(_) => break,
                }
                skip = 0;
                if fed >= TLS_CHUNK || end < b.len() {
                    break;
                }
            }
            if fed == 0 {
                // rustls took nothing though its buffer is empty: it has shut down.
                self.end_session(slot, Some(Failure::Tls), now);
                return;
            }
            c.written += fed;
        }
    }

    /// Read TLS records until the socket is drained, checking the replies inside them.
    pub(super) fn on_readable_tls(&mut self, slot: usize, now: Instant) {
        loop {
            let c = &mut self.conns[slot];
            let (Some(stream), Some(tls)) = (c.stream.as_mut(), c.tls.as_mut()) else {
                return;
            };
            let pulled = match tls::pull(tls, stream) {
                Ok(p) => p,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    let ok = is_reset(&e) && self.close_expected(slot);
                    self.end_session(slot, if ok { None } else { Some(Failure::Reset) }, now);
                    return;
                }
            };
            self.counters.bytes_received += pulled.octets as u64;
            if let Err(e) = tls.process_new_packets() {
                // Best effort: tell the server why (the alert rustls queued).
                let _ = tls::push(tls, stream);
                self.tls_failed(slot, &e, now);
                return;
            }
            if c.handshaking && !tls.is_handshaking() && !self.handshake_done(slot, now) {
                return;
            }
            if !self.drain_plaintext(slot, now) {
                return;
            }
            if pulled.eof {
                let ok = self.close_expected(slot);
                self.end_session(slot, if ok { None } else { Some(Failure::Reset) }, now);
                return;
            }
            if self.wants_flush(slot) {
                self.flush_tls(slot, now);
            }
        }
    }

    /// Move decrypted replies into the reply buffer and check them. False once ended.
    fn drain_plaintext(&mut self, slot: usize, now: Instant) -> bool {
        loop {
            let c = &mut self.conns[slot];
            c.make_room();
            let Some(tls) = c.tls.as_mut() else {
                return c.state == State::Running;
            };
            match tls.reader().read(&mut c.inbuf[c.in_len..]) {
                // The server's close_notify: it ended the session.
                Ok(0) => {
                    let ok = self.close_expected(slot);
                    self.end_session(slot, if ok { None } else { Some(Failure::Reset) }, now);
                    return false;
                }
                Ok(n) => {
                    c.in_len += n;
                    if !self.process_replies(slot, now) {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => {
                    self.end_session(slot, Some(Failure::Reset), now);
                    return false;
                }
            }
        }
    }

    /// The handshake completed: time and count it, then the script goes on (the banner
    /// in implicit TLS, EHLO after STARTTLS). False once the session has ended.
    fn handshake_done(&mut self, slot: usize, now: Instant) -> bool {
        let c = &mut self.conns[slot];
        c.handshaking = false;
        let kind = c.tls.as_ref().and_then(|t| t.handshake_kind());
        let (lag, took) = (c.lag_us, micros(now - c.tls_at));
        let resumed = kind == Some(rustls::HandshakeKind::Resumed);
        self.counters.tls_handshakes += 1;
        self.counters.tls_resumed += u64::from(resumed);
        if c.kind.class == Class::Tls {
            self.outcome(Outcome::TlsHandshakes);
            if resumed {
                self.outcome(Outcome::TlsResumed);
            }
        }
        self.record(Phase::Tls, took, lag);
        self.next_batch(slot, now);
        self.conns[slot].state == State::Running
    }

    /// A TLS error ends the session as a TLS failure, except where it shows the server
    /// answered the starttls class's pipelined command in plaintext (not a TLS record).
    fn tls_failed(&mut self, slot: usize, e: &rustls::Error, now: Instant) {
        let c = &self.conns[slot];
        if c.kind.class == Class::Starttls && c.handshaking && matches!(e, rustls::Error::InvalidMessage(_)) {
            self.mismatch(
                slot,
                Step::Starttls,
                "non-TLS data after the 220 to STARTTLS",
                now,
            );
        } else {
            self.end_session(slot, Some(Failure::Tls), now);
        }
    }
}
