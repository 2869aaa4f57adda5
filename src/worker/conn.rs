//! One connection as its worker sees it, and the bridge to its session: received bytes go in, the session's events go to the store, replies collect for one send.

use super::admit::{AdmitStats, ProxyWait};
use super::log::{self, Record};
use super::store::{Ended, Message, Store};
use super::timer::Tick;
use super::tls::{Failure, Tls, TlsStats};
use crate::backend::Token;
use crate::policy::clients::{Admitted, ClientTable};
use crate::proto::{Client, CloseReason, Commit, Event, Session, SessionStats, Settings, Stats};
use slab::Slab;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Free session buffers kept for reuse.
const POOL_MAX: usize = 256;
/// Initial capacity of a session's output buffer; most reply batches fit.
const OUT_CAPACITY: usize = 4096;

/// Where a connection is in its life; it only moves down this list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading and answering.
    Open,
    /// The client closed its side; what it sent is still answered.
    PeerClosed,
    /// The session ended (or the connection broke): send what is left, then close.
    Finishing(CloseReason),
    /// `Backend::close` was called; waiting for `Closed`.
    Closing(CloseReason),
}

impl Phase {
    /// Whether the session is over (its last replies may still be leaving).
    pub(crate) fn ended(self) -> bool {
        matches!(self, Phase::Finishing(_) | Phase::Closing(_))
    }
}

pub(crate) struct Conn {
    pub(crate) generation: u32,
    pub(crate) session: Session,
    pub(crate) peer: SocketAddr,
    pub(crate) started: Instant,
    /// Bytes received but not yet consumed by the session.
    pub(crate) input: Vec<u8>,
    /// Replies not yet handed to the backend.
    pub(crate) out: Vec<u8>,
    /// Message content from the current batch of input, not yet handed to the spool.
    pub(crate) body: Vec<u8>,
    pub(crate) phase: Phase,
    /// A send is in flight (at most one per connection).
    pub(crate) sending: bool,
    /// What the backend was last told about receiving.
    pub(crate) receiving: bool,
    /// On the list of connections to settle this turn.
    pub(crate) dirty: bool,
    pub(crate) message: Message,
    /// The TLS layer, after STARTTLS or from the start on an implicit TLS listener.
    pub(crate) tls: Option<Box<Tls>>,
    /// Waiting for the PROXY header (a proxy listener).
    pub(crate) proxy: Option<ProxyWait>,
    /// The connection's count in the per-client table, given back at close.
    pub(crate) admitted: Option<Admitted>,
    pub(crate) timer: Tick,
    /// Content octets of the message in progress (after dot-unstuffing), for its log line;
    /// 32 bits hold `max_message_size` (at most 1 GiB) and keep an idle connection small.
    pub(crate) size: u32,
    /// The log line's accepted messages and the counters of earlier folds; none until there
    /// are some.
    pub(crate) log: Option<Box<Record>>,
}

/// Session buffers for reuse, so an idle connection holds none and a busy one does not
/// allocate per batch.
pub(crate) struct Pool {
    free: Vec<Vec<u8>>,
    /// Buffers grown past this are dropped rather than kept.
    max_capacity: usize,
}

impl Pool {
    pub(crate) fn new(input_buffer: usize) -> Pool {
        Pool {
            free: Vec::new(),
            max_capacity: 4 * input_buffer,
        }
    }

    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(OUT_CAPACITY))
    }

    pub(crate) fn put(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > 0 && self.free.len() < POOL_MAX && buf.capacity() <= self.max_capacity {
            buf.clear();
            self.free.push(buf);
        }
    }

    /// Gives `buf` a pooled buffer if it has none.
    pub(crate) fn ensure(&mut self, buf: &mut Vec<u8>) {
        if buf.capacity() == 0 {
            *buf = self.take();
        }
    }
}

/// What handling any connection needs from its worker: the clock of this turn, the settings,
/// the buffer pool, the store, the counters, and the connections to settle at the end of it.
pub(crate) struct Shared {
    pub(crate) id: usize,
    pub(crate) settings: Arc<Settings>,
    /// The configuration for new TLS handshakes (replaced on reload), if TLS is configured.
    pub(crate) tls_config: Option<Arc<rustls::ServerConfig>>,
    /// How long a TLS handshake may take (`tls_handshake_timeout_secs`).
    pub(crate) handshake_timeout: Duration,
    /// Clients that may send to any domain (`relay_networks`).
    pub(crate) relay_networks: Arc<[ipnet::IpNet]>,
    /// The largest PROXY v2 header accepted (`proxy_header_max`).
    pub(crate) proxy_header_max: usize,
    /// How long a balancer has for its PROXY header (`proxy_header_timeout_secs`).
    pub(crate) proxy_timeout: Duration,
    /// The per-client limits shared by every worker, unless both are off.
    pub(crate) clients: Option<Arc<ClientTable>>,
    /// Whether `relay_networks` are held to the per-client limits too.
    pub(crate) limit_relay_networks: bool,
    pub(crate) admit_stats: AdmitStats,
    pub(crate) now: Instant,
    pub(crate) stats: Stats,
    pub(crate) tls_stats: TlsStats,
    pub(crate) store: Store,
    pub(crate) pool: Pool,
    pub(crate) dirty: Vec<Token>,
    /// Connections paused on a full spool queue, to settle again once it drains.
    pub(crate) spool_waiting: Vec<Token>,
}

impl Shared {
    /// What the session is told of a client at `peer` (the real client, after a PROXY header).
    pub(crate) fn client(&self, peer: SocketAddr, tls: bool) -> Client {
        let ip = peer.ip().to_canonical();
        Client {
            relay: self.relay_networks.iter().any(|net| net.contains(&ip)),
            tls,
        }
    }

    /// Puts a connection on this turn's list to settle (once).
    pub(crate) fn mark(&mut self, conn: &mut Conn, token: Token) {
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(token);
        }
    }
}

/// The live connection a token names, if its slot still holds that generation.
pub(crate) fn live(conns: &mut Slab<Conn>, token: Token) -> Option<&mut Conn> {
    conns
        .get_mut(token.slot as usize)
        .filter(|c| c.generation == token.generation)
}

impl Conn {
    pub(crate) fn new(
        session: Session,
        generation: u32,
        peer: SocketAddr,
        now: Instant,
        out: Vec<u8>,
    ) -> Conn {
        Conn {
            generation,
            session,
            peer,
            started: now,
            input: Vec::new(),
            out,
            body: Vec::new(),
            phase: Phase::Open,
            sending: false,
            receiving: true,
            dirty: false,
            message: Message::None,
            tls: None,
            proxy: None,
            admitted: None,
            timer: 0,
            size: 0,
            log: None,
        }
    }

    /// Adds the session's counters to the worker's totals and starts them again from zero;
    /// returns the counters folded (the log line's, at close).
    pub(crate) fn fold_stats(&mut self, stats: &mut Stats) -> SessionStats {
        let s = self.session.take_stats();
        stats.add(&s);
        s
    }

    /// Notes an accepted message for the log line, before its `250` resets the envelope;
    /// a full record is written out at once.
    fn accepted(&mut self, id: &str) {
        let env = self.session.envelope();
        let size = u64::from(self.size);
        if Record::queued(&mut self.log, id, env.mail_from(), env.rcpt_count(), size) {
            if let Some(record) = self.log.as_deref_mut() {
                log::session_messages(self.peer, record);
                record.clear_messages();
            }
        }
    }

    /// Starts TLS at once (an implicit TLS listener): the session's greeting waits for the
    /// handshake. Returns false if rustls refused the configuration.
    pub(crate) fn start_tls(&mut self, sh: &mut Shared, wire: Vec<u8>) -> bool {
        let Some(config) = sh.tls_config.clone() else {
            return false;
        };
        match Tls::new(config, sh.now + sh.handshake_timeout, wire) {
            Ok(tls) => {
                self.tls = Some(tls);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a TLS session");
                false
            }
        }
    }

    /// Octets of replies waiting to leave: the session's and, under TLS, the records.
    pub(crate) fn pending(&self) -> usize {
        self.out.len() + self.tls.as_ref().map_or(0, |t| t.wire.len())
    }

    /// Takes received bytes: fed straight from the backend's buffer when nothing waits before
    /// them, else appended to what waits; what the session leaves is kept for later. Under
    /// TLS they are records, decrypted into the input first.
    pub(crate) fn receive(&mut self, sh: &mut Shared, token: Token, buf: &[u8]) {
        if let Some(wait) = self.proxy {
            return self.receive_proxy_header(sh, token, wait, buf);
        }
        if let Some(tls) = &mut self.tls {
            sh.pool.ensure(&mut self.input);
            match tls.receive(buf, &mut self.input) {
                Ok(established) => {
                    if established {
                        tls.established(&mut sh.tls_stats);
                        sh.pool.ensure(&mut self.out);
                        // An implicit TLS session starts now; one after STARTTLS starts over.
                        let client = sh.client(self.peer, true);
                        self.session.handle_start(sh.now, client, &mut self.out);
                        self.session.handle_tls_established(sh.now, &mut self.out);
                        self.events(sh, token);
                    }
                    self.pump(sh, token);
                }
                Err(failure) => self.tls_failed(sh, token, failure),
            }
            if self.input.is_empty() {
                sh.pool.put(std::mem::take(&mut self.input));
            }
            return;
        }
        if self.input.is_empty() {
            let n = self.feed(sh, token, buf);
            if n < buf.len() {
                self.input = sh.pool.take();
                self.input.extend_from_slice(&buf[n..]);
            }
        } else {
            self.input.extend_from_slice(buf);
            self.pump(sh, token);
        }
    }

    /// Feeds `bytes` to the session until it has consumed them or cannot take more now
    /// (waiting for a commit, or its reply backlog is full); returns how many it took.
    ///
    /// Under TLS the bytes are the plaintext rustls yielded, and records waiting for the
    /// socket count against the reply backlog. After STARTTLS, whatever follows its line is
    /// discarded and counted, never executed (RFC 3207 §4.2, CVE-2011-0411).
    fn feed(&mut self, sh: &mut Shared, token: Token, bytes: &[u8]) -> usize {
        let plaintext = self.tls.is_none();
        let mut off = 0;
        loop {
            if self
                .tls
                .as_ref()
                .is_some_and(|t| t.wire.len() >= sh.settings.config.limits.max_reply_backlog)
            {
                return off;
            }
            sh.pool.ensure(&mut self.out);
            let progress = self.session.handle_input(sh.now, &bytes[off..], &mut self.out);
            let n = progress.consumed;
            if self.session.stats().should_fold() {
                let folded = self.fold_stats(&mut sh.stats);
                Record::folded(&mut self.log, &folded);
            }
            let octets = u32::try_from(progress.body.octets()).unwrap_or(u32::MAX);
            self.size = self.size.saturating_add(octets);
            if !progress.body.is_empty() && sh.store.keeps_bodies() {
                sh.pool.ensure(&mut self.body);
                for piece in progress.body.pieces() {
                    self.body.extend_from_slice(piece);
                }
            }
            off += n;
            let evented = self.events(sh, token);
            if plaintext && self.tls.is_some() {
                let injected = (bytes.len() - off) as u64;
                if injected > 0 {
                    sh.tls_stats.injections += 1;
                    sh.tls_stats.injected_octets += injected;
                    tracing::debug!(peer = %self.peer, octets = injected, "input after STARTTLS discarded");
                }
                self.flush_body(sh, token);
                return bytes.len();
            }
            if off == bytes.len() || (n == 0 && !evented) {
                self.flush_body(sh, token);
                return off;
            }
        }
    }

    /// Feeds the bytes the session left unconsumed earlier.
    pub(crate) fn pump(&mut self, sh: &mut Shared, token: Token) {
        if self.input.is_empty() {
            return;
        }
        let mut input = std::mem::take(&mut self.input);
        let n = self.feed(sh, token, &input);
        input.drain(..n);
        if input.is_empty() {
            sh.pool.put(input);
        } else {
            self.input = input;
        }
    }

    /// Hands the content gathered from one batch of input to the store.
    fn flush_body(&mut self, sh: &mut Shared, token: Token) {
        if !self.body.is_empty() {
            sh.store.chunk(token, std::mem::take(&mut self.body));
        }
    }

    /// Drains the session's events; returns whether there were any.
    pub(crate) fn events(&mut self, sh: &mut Shared, token: Token) -> bool {
        let mut any = false;
        while let Some(event) = self.session.poll_event() {
            any = true;
            match event {
                Event::MessageStart => {
                    self.size = 0;
                    let tls = &self.tls;
                    self.message = sh.store.start(token, self.session.envelope(), self.peer, || {
                        tls.as_ref().and_then(|t| t.info())
                    });
                }
                Event::MessageEnd => {
                    self.flush_body(sh, token);
                    if let Ended::Queued(id) = sh.store.end(token, &mut self.message, sh.now) {
                        self.accepted(&id);
                        sh.pool.ensure(&mut self.out);
                        self.session
                            .handle_commit(sh.now, Commit::Queued(&id), &mut self.out);
                    }
                }
                Event::MessageAbort => self.abort_message(sh, token),
                Event::StartTls => {
                    // The replies up to the `220` leave in plaintext, ahead of the handshake.
                    let wire = std::mem::take(&mut self.out);
                    if !self.start_tls(sh, wire) {
                        self.abandon(sh, token, CloseReason::TlsError);
                    }
                }
                Event::Close(reason) => self.finish(reason),
            }
        }
        any
    }

    /// Hands the store's result for the message this connection waits for to its session.
    pub(crate) fn committed(&mut self, sh: &mut Shared, token: Token, id: &str, ok: bool) {
        self.message = Message::None;
        if ok {
            self.accepted(id);
        }
        let commit = if ok { Commit::Queued(id) } else { Commit::Failed };
        sh.pool.ensure(&mut self.out);
        self.session.handle_commit(sh.now, commit, &mut self.out);
        self.events(sh, token);
        self.pump(sh, token);
        self.after_eof(sh, token);
    }

    fn abort_message(&mut self, sh: &mut Shared, token: Token) {
        let body = std::mem::take(&mut self.body);
        sh.pool.put(body);
        sh.store.abort(token, &mut self.message);
    }

    /// Ends the session: what is queued is sent (under TLS followed by close_notify, see
    /// [`seal`](Self::seal)), then the connection closes.
    fn finish(&mut self, reason: CloseReason) {
        if !self.phase.ended() {
            self.phase = Phase::Finishing(reason);
        }
    }

    /// The TLS session failed: counted by cause; the alert rustls queued leaves with what is
    /// already waiting, then the connection closes.
    pub(crate) fn tls_failed(&mut self, sh: &mut Shared, token: Token, failure: Failure) {
        tracing::debug!(peer = %self.peer, cause = failure.name(), "TLS failed");
        sh.tls_stats.fail(failure);
        let reason = if failure == Failure::Timeout {
            CloseReason::TlsTimeout
        } else {
            CloseReason::TlsError
        };
        self.abandon(sh, token, reason);
    }

    /// Moves the session's replies into records, under TLS; what to send is then
    /// [`wire`](Self::wire). Once the session is over, close_notify follows its last replies
    /// (RFC 8446 §6.1), so the client can tell the end from a truncation.
    pub(crate) fn seal(&mut self, pool: &mut Pool) {
        if let Some(tls) = &mut self.tls {
            let ended = self.phase.ended();
            if ended || !self.out.is_empty() || tls.wants_write() {
                pool.ensure(&mut tls.wire);
            }
            tls.seal(&mut self.out);
            if ended {
                tls.close();
                tls.seal(&mut self.out);
            }
        }
    }

    /// The bytes for the socket: the records under TLS, the replies otherwise.
    pub(crate) fn wire(&mut self) -> &mut Vec<u8> {
        match &mut self.tls {
            Some(tls) => &mut tls.wire,
            None => &mut self.out,
        }
    }

    /// After the client's end of stream, the input already received is still answered (a
    /// client may send its last commands and half-close); once nothing more can come of it,
    /// the session is abandoned like a broken connection.
    pub(crate) fn after_eof(&mut self, sh: &mut Shared, token: Token) {
        let committing = matches!(self.message, Message::Committing(_));
        // Input the session left because its reply backlog is full is answered once the
        // replies before it have left, whether they are in flight or still waiting here.
        let blocked_on_replies = !self.input.is_empty() && (self.sending || self.pending() > 0);
        if self.phase == Phase::PeerClosed && !committing && !blocked_on_replies {
            self.abandon(sh, token, CloseReason::PeerClosed);
        }
    }

    /// The connection is unusable or the client left: drop the message still streaming, if
    /// any, and close once what is already queued has been sent. A message whose end arrived
    /// intact is not dropped: it is committed, and its `250` attempted if the connection
    /// still takes it (the contract of both backends: what was received is answered).
    pub(crate) fn abandon(&mut self, sh: &mut Shared, token: Token, reason: CloseReason) {
        if !matches!(self.message, Message::Committing(_)) {
            self.abort_message(sh, token);
        }
        self.finish(reason);
        let input = std::mem::take(&mut self.input);
        sh.pool.put(input);
    }

    /// Gives every buffer back to the pool and the connection's count back to the per-client
    /// table (the connection is gone).
    pub(crate) fn release(&mut self, pool: &mut Pool, clients: Option<&ClientTable>) {
        if let (Some(admitted), Some(table)) = (self.admitted.take(), clients) {
            table.release(admitted);
        }
        if let Some(mut tls) = self.tls.take() {
            pool.put(std::mem::take(&mut tls.wire));
        }
        for buf in [
            std::mem::take(&mut self.input),
            std::mem::take(&mut self.out),
            std::mem::take(&mut self.body),
        ] {
            pool.put(buf);
        }
    }
}
