//! A connection's TLS layer, between the backend's bytes and the session: records in, plaintext out; replies sealed into records once per turn.
//!
//! The session never sees TLS: received records are decrypted here into the connection's
//! input, exactly where plaintext would have gone, and the replies the session appended to
//! the connection's output during a turn are sealed when the turn settles the connection, so
//! one batch of replies still leaves in one write (and mostly in one record). rustls buffers
//! nothing between turns: what it produces is moved at once into `wire`, the bytes waiting for
//! the socket, which the worker bounds like plaintext output (receiving stops while it holds
//! `max_reply_backlog` octets).

use crate::spool::TlsInfo;
use rustls::{ProtocolVersion, ServerConfig, ServerConnection};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

/// Where the TLS layer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Until the handshake completes, which it must by `deadline`.
    Handshaking {
        deadline: Instant,
    },
    Established,
    /// The close_notify alert is queued (RFC 8446 §6.1): nothing more is sealed.
    Closed,
}

/// Why a TLS session failed, one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Not a TLS record, or a malformed one (garbage, a plaintext command, a truncated record).
    BadRecord,
    /// No protocol version, cipher suite or signature scheme in common.
    Incompatible,
    /// The client sent an alert (it rejected our certificate, say).
    ClientAlert,
    /// A message out of order in the handshake.
    UnexpectedMessage,
    /// A record that does not decrypt or verify.
    DecryptError,
    /// Any other protocol violation rustls detected.
    Misbehaved,
    /// The handshake did not complete within `tls_handshake_timeout_secs`.
    Timeout,
    /// The client closed the connection during the handshake.
    Eof,
}

impl Failure {
    pub const COUNT: usize = 8;
    pub const ALL: [Failure; Failure::COUNT] = [
        Failure::BadRecord,
        Failure::Incompatible,
        Failure::ClientAlert,
        Failure::UnexpectedMessage,
        Failure::DecryptError,
        Failure::Misbehaved,
        Failure::Timeout,
        Failure::Eof,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Failure::BadRecord => "bad_record",
            Failure::Incompatible => "incompatible",
            Failure::ClientAlert => "client_alert",
            Failure::UnexpectedMessage => "unexpected_message",
            Failure::DecryptError => "decrypt_error",
            Failure::Misbehaved => "misbehaved",
            Failure::Timeout => "handshake_timeout",
            Failure::Eof => "eof",
        }
    }

    fn of(e: &rustls::Error) -> Failure {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(_) => Failure::BadRecord,
            E::PeerIncompatible(_) | E::NoCertificatesPresented => Failure::Incompatible,
            E::AlertReceived(_) => Failure::ClientAlert,
            E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
                Failure::UnexpectedMessage
            }
            E::DecryptError => Failure::DecryptError,
            _ => Failure::Misbehaved,
        }
    }
}

/// A worker's TLS counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TlsStats {
    /// Handshakes completed with TLS 1.2.
    pub tls12: u64,
    /// Handshakes completed with TLS 1.3.
    pub tls13: u64,
    /// Of those, the ones that resumed an earlier session (ticket or cache).
    pub resumed: u64,
    /// Failed TLS sessions, indexed by [`Failure`] as listed in `Failure::ALL`.
    pub failures: [u64; Failure::COUNT],
    /// Sessions that sent input after their STARTTLS line in the same read (discarded, never
    /// executed: the CVE-2011-0411 injection).
    pub injections: u64,
    /// The octets so discarded.
    pub injected_octets: u64,
}

impl TlsStats {
    pub fn fail(&mut self, failure: Failure) {
        self.failures[failure as usize] += 1;
    }

    pub fn merge(&mut self, o: &TlsStats) {
        self.tls12 += o.tls12;
        self.tls13 += o.tls13;
        self.resumed += o.resumed;
        for (a, b) in self.failures.iter_mut().zip(o.failures) {
            *a += b;
        }
        self.injections += o.injections;
        self.injected_octets += o.injected_octets;
    }

    /// The counters by name, for the stats file.
    pub fn by_name(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        [
            ("handshakes_tls12", self.tls12),
            ("handshakes_tls13", self.tls13),
            ("resumed", self.resumed),
            ("starttls_injections", self.injections),
            ("starttls_injected_octets", self.injected_octets),
        ]
        .into_iter()
        .chain(
            Failure::ALL
                .iter()
                .map(|f| (f.name(), self.failures[*f as usize])),
        )
    }
}

/// One connection's TLS state, boxed so a plaintext connection pays a pointer for it.
pub struct Tls {
    conn: ServerConnection,
    phase: Phase,
    /// Bytes for the socket not yet handed to the backend: after STARTTLS first the plaintext
    /// replies up to its `220`, then records.
    pub wire: Vec<u8>,
}

impl Tls {
    /// A server side waiting for the ClientHello; `wire` holds what must leave before it (the
    /// `220` of STARTTLS).
    pub fn new(
        config: Arc<ServerConfig>,
        deadline: Instant,
        wire: Vec<u8>,
    ) -> Result<Box<Tls>, rustls::Error> {
        let mut conn = ServerConnection::new(config)?;
        // rustls holds only what one turn produced (the worker moves it to `wire` at once and
        // bounds that), so its own cap would only turn a full batch into a failed write.
        conn.set_buffer_limit(None);
        Ok(Box::new(Tls {
            conn,
            phase: Phase::Handshaking { deadline },
            wire,
        }))
    }

    /// When the handshake must be done by, while it is not.
    pub fn handshake_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Handshaking { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// Decrypts received bytes, appending the plaintext to `plain`; returns whether the
    /// handshake completed with them. On an error the alert rustls queued goes out with the
    /// next [`seal`](Self::seal).
    pub fn receive(&mut self, mut buf: &[u8], plain: &mut Vec<u8>) -> Result<bool, Failure> {
        while !buf.is_empty() {
            // Reading from a slice cannot fail; rustls refuses only when its plaintext buffer
            // is full, and it is drained below after every batch of records.
            if self.conn.read_tls(&mut buf).map_err(|_| Failure::Misbehaved)? == 0 {
                break;
            }
            let state = self.conn.process_new_packets().map_err(|e| Failure::of(&e))?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let start = plain.len();
                plain.resize(start + n, 0);
                self.conn
                    .reader()
                    .read_exact(&mut plain[start..])
                    .map_err(|_| Failure::Misbehaved)?;
            }
        }
        if matches!(self.phase, Phase::Handshaking { .. }) && !self.conn.is_handshaking() {
            self.phase = Phase::Established;
            return Ok(true);
        }
        Ok(false)
    }

    /// Seals the plaintext replies in `out` (emptying it) and moves every record rustls has
    /// ready, handshake messages and alerts included, to `wire`.
    pub fn seal(&mut self, out: &mut Vec<u8>) {
        if !out.is_empty() && self.phase != Phase::Closed {
            // Without a buffer limit the writer takes everything (buffered until the
            // handshake completes, for an implicit listener's greeting).
            let _ = self.conn.writer().write_all(out);
        }
        out.clear();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.wire).is_err() {
                break;
            }
        }
    }

    /// Whether rustls has records ready for the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Queues close_notify (once, and only after a completed handshake).
    pub fn close(&mut self) {
        if self.phase == Phase::Established {
            self.conn.send_close_notify();
            self.phase = Phase::Closed;
        }
    }

    /// The handshake completed: counts it.
    pub fn established(&self, stats: &mut TlsStats) {
        match self.conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => stats.tls13 += 1,
            _ => stats.tls12 += 1,
        }
        if self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            stats.resumed += 1;
        }
    }

    /// Version and cipher suite names, once established; static, so a log line takes them
    /// without a copy.
    pub fn describe(&self) -> Option<(&'static str, &'static str)> {
        crate::tls::describe(&self.conn)
    }

    /// Version, cipher and SNI name, once established.
    pub fn info(&self) -> Option<TlsInfo> {
        let (version, cipher) = self.describe()?;
        Some(TlsInfo {
            version: version.into(),
            cipher: cipher.into(),
            sni: self.conn.server_name().map(str::to_string),
        })
    }
}
