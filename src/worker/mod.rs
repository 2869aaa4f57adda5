//! The per-core event loop: one turn takes the backend's completions to the connections, the spool's results to their sessions, runs the due timers, and settles every connection touched.
//!
//! One turn: wait for completions (sleeping at most until the next timer), read the clock
//! once, handle every completion, collect commit results, run due timers (a bounded number),
//! then settle each connection touched this turn exactly once: send its output in one buffer,
//! close it if its session ended, turn receiving on or off, re-arm its timer. Nothing here
//! blocks but the backend's wait, and nothing is shared with other workers on the per-command
//! path: the only cross-thread traffic is the shutdown message, the commit results and one
//! atomic connection count per accept and close.
//!
//! A received buffer's path: the backend lends it (`Completion::Received`), `conn` feeds it
//! to the session and takes the session's events to `store`, which hands messages to the
//! spool; the replies collect in the connection's output buffer until `settle` sends them.
//!
//! Buffers: a connection holds an input buffer only while it has unconsumed bytes, and an
//! output buffer only while it has unsent replies; both come from, and go back to, a
//! per-worker pool, so an idle connection costs its session and its socket, little more.

mod admit;
mod conn;
mod log;
mod report;
mod store;
pub mod timer;
mod tls;

pub use admit::AdmitStats;
pub use report::{Refused, Report};
pub use store::Store;
pub use tls::{Failure as TlsFailure, Tls, TlsStats};

use crate::backend::{Backend, Completion, Token, RESERVED_GENERATION};
use crate::proto::{CloseReason, Reply, Session, Settings, Stats};
use admit::ProxyWait;
use conn::{live, Conn, Phase, Pool, Shared};
use crossbeam_channel::Receiver;
use slab::Slab;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timer::{Tick, Wheel};

/// A message from the main thread.
#[derive(Debug, Clone)]
pub enum Control {
    /// Stop accepting, say goodbye to idle sessions, let transactions finish within the grace.
    Shutdown,
    /// The configuration was reloaded: what is accepted from now on uses it.
    Reload(Arc<Reload>),
    /// A scrape asks for the worker's counters now ([`Worker::snapshot`]): answered at the
    /// start of its next turn. The metrics side keeps at most one of these outstanding per
    /// worker, so the channel keeps room for a shutdown.
    Snapshot(crossbeam_channel::Sender<Report>),
}

/// A reload, in one message so that the bounded control channel always has room for a
/// shutdown behind a few of them.
#[derive(Debug)]
pub struct Reload {
    /// For the sessions that start from now on (limits, hostname, recipients table); open
    /// ones keep theirs.
    pub settings: Arc<Settings>,
    /// For the connections accepted from now on.
    pub live: Live,
    /// For new TLS handshakes, if there are certificates; sessions already in TLS keep
    /// theirs. Without, STARTTLS is no longer offered (the settings say so).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The part of [`WorkerConfig`] a reload may change; the rest needs a restart.
#[derive(Debug, Clone)]
pub struct Live {
    pub shutdown_grace: Duration,
    pub handshake_timeout: Duration,
    pub relay_networks: Arc<[ipnet::IpNet]>,
    pub proxy_trusted: Arc<[ipnet::IpNet]>,
    pub proxy_timeout: Duration,
    pub proxy_header_max: usize,
    pub limit_relay_networks: bool,
}

/// The worker's own settings, from the server's limits table.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Connections open at once across all workers (`max_connections`).
    pub max_connections: usize,
    /// After shutdown, how long a transaction in progress may take (`shutdown_grace_secs`).
    pub shutdown_grace: Duration,
    /// Unconsumed input a connection may hold before it stops being read (`input_buffer`).
    pub input_buffer: usize,
    /// The configuration for TLS handshakes, if a certificate is configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What each of the worker's listeners, by index, expects first.
    pub listeners: Vec<ListenerRole>,
    /// How long a TLS handshake may take (`tls_handshake_timeout_secs`).
    pub handshake_timeout: Duration,
    /// Clients that may send to any domain (`relay_networks`).
    pub relay_networks: Arc<[ipnet::IpNet]>,
    /// Balancers whose PROXY headers are believed (`proxy_trusted`).
    pub proxy_trusted: Arc<[ipnet::IpNet]>,
    /// How long a balancer has for its PROXY header (`proxy_header_timeout_secs`).
    pub proxy_timeout: Duration,
    /// The largest PROXY v2 header accepted (`proxy_header_max`).
    pub proxy_header_max: usize,
    /// The per-client limits shared by every worker, unless both are off.
    pub clients: Option<Arc<crate::policy::clients::ClientTable>>,
    /// Whether `relay_networks` are held to the per-client limits too.
    pub limit_relay_networks: bool,
}

/// What a listener's connections start with, before SMTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerRole {
    /// A PROXY header from a trusted balancer (the real client's address).
    pub proxy: bool,
    /// A TLS handshake (an implicit TLS listener, RFC 8314).
    pub tls: bool,
}

/// Timers handled per turn, so a mass expiry cannot stall live sessions for long.
const TIMERS_PER_TURN: usize = 1024;
/// How long a finished session's last reply may take to leave before the connection is cut.
const LINGER: Duration = Duration::from_secs(10);
/// Connection slots reserved up front (address space only); beyond this the slab grows.
const RESERVE_MAX: usize = 1 << 16;

/// One worker's state. Generic over the backend: both honour `crate::backend`'s contract.
pub struct Worker<B: Backend> {
    backend: B,
    shared: Shared,
    conns: Slab<Conn>,
    generations: Vec<u32>,
    wheel: Wheel,
    control: Receiver<Control>,
    active: Arc<AtomicUsize>,
    config: WorkerConfig,
    /// Set at shutdown: when sessions still open are cut off.
    grace_until: Option<Instant>,
    accepted: u64,
    refused: Refused,
    received_octets: u64,
}

impl<B: Backend> Worker<B> {
    pub fn new(
        id: usize,
        backend: B,
        settings: Arc<Settings>,
        config: WorkerConfig,
        store: Store,
        control: Receiver<Control>,
        active: Arc<AtomicUsize>,
    ) -> Worker<B> {
        let now = Instant::now();
        Worker {
            backend,
            shared: Shared {
                id,
                settings,
                tls_config: config.tls.clone(),
                handshake_timeout: config.handshake_timeout,
                relay_networks: config.relay_networks.clone(),
                proxy_header_max: config.proxy_header_max,
                proxy_timeout: config.proxy_timeout,
                clients: config.clients.clone(),
                limit_relay_networks: config.limit_relay_networks,
                admit_stats: AdmitStats::default(),
                now,
                stats: Stats::default(),
                tls_stats: TlsStats::default(),
                store,
                pool: Pool::new(config.input_buffer),
                dirty: Vec::new(),
                spool_waiting: Vec::new(),
            },
            // Reserved, not touched: the pages of unused slots are never faulted in, and the
            // slab never moves (a copy of every session) as connections arrive.
            conns: Slab::with_capacity(config.max_connections.min(RESERVE_MAX)),
            generations: Vec::new(),
            wheel: Wheel::new(now),
            control,
            active,
            config,
            grace_until: None,
            accepted: 0,
            refused: Refused::default(),
            received_octets: 0,
        }
    }

    /// Runs until shutdown has closed every session; returns the worker's counters.
    pub fn run(mut self) -> Report {
        let mut completions = Vec::with_capacity(1024);
        let mut expired = Vec::with_capacity(TIMERS_PER_TURN);
        loop {
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.backend.wait(timeout, &mut completions) {
                tracing::error!(worker = self.shared.id, error = %e, "backend wait failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            self.shared.now = Instant::now();
            // Reloads first: a connection accepted in this turn gets what was sent before it.
            while let Ok(control) = self.control.try_recv() {
                match control {
                    Control::Shutdown if self.grace_until.is_none() => self.shutdown(),
                    Control::Shutdown => {}
                    Control::Reload(reload) => {
                        self.shared.settings = reload.settings.clone();
                        if let Some(tls) = &reload.tls {
                            self.shared.tls_config = Some(tls.clone());
                        }
                        self.apply(&reload.live);
                    }
                    Control::Snapshot(reply) => {
                        let _ = reply.try_send(self.snapshot());
                    }
                }
            }
            for completion in completions.drain(..) {
                self.complete(completion);
            }
            self.commits();
            self.timers(&mut expired);
            self.settle();
            if self.grace_until.is_some() && self.conns.is_empty() {
                break;
            }
        }
        let mut report = self.snapshot();
        report.spool = self.shared.store.finish();
        report
    }

    /// The worker's counters now: its totals plus the counters its live sessions have not
    /// folded yet (a copy: nothing is reset), so every counter only grows from one snapshot
    /// to the next. Costs a pass over the connections, once per scrape, not per command.
    fn snapshot(&self) -> Report {
        let mut stats = self.shared.stats.clone();
        for (_, conn) in &self.conns {
            stats.add(conn.session.stats());
        }
        let commit = self.shared.store.commit_metrics();
        let (commit_seconds, commit_batch) = commit.map(|m| m.histograms()).unwrap_or_default();
        Report {
            spool: commit.map(|m| m.stats()).unwrap_or_default(),
            stats,
            io: self.backend.io_stats(),
            tls: self.shared.tls_stats,
            admit: self.shared.admit_stats,
            accepted: self.accepted,
            refused: self.refused,
            received_octets: self.received_octets,
            commit_seconds,
            commit_batch,
        }
    }

    /// A reload's settings, for what is accepted from now on. A connection waiting for its
    /// PROXY header keeps the deadline it was given.
    fn apply(&mut self, live: &Live) {
        let (c, sh) = (&mut self.config, &mut self.shared);
        c.shutdown_grace = live.shutdown_grace;
        c.handshake_timeout = live.handshake_timeout;
        c.proxy_trusted = live.proxy_trusted.clone();
        c.proxy_timeout = live.proxy_timeout;
        c.proxy_header_max = live.proxy_header_max;
        c.limit_relay_networks = live.limit_relay_networks;
        c.relay_networks = live.relay_networks.clone();
        sh.handshake_timeout = live.handshake_timeout;
        sh.relay_networks = live.relay_networks.clone();
        sh.proxy_timeout = live.proxy_timeout;
        sh.proxy_header_max = live.proxy_header_max;
        sh.limit_relay_networks = live.limit_relay_networks;
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        match (self.wheel.next_deadline(), self.grace_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn complete(&mut self, completion: Completion) {
        match completion {
            Completion::Accepted {
                socket,
                peer,
                listener,
            } => self.accept(socket, peer, listener),
            Completion::Refused { socket, .. } => {
                self.refused.out_of_descriptors += 1;
                self.refuse(socket, Reply::TooManyConnections);
            }
            Completion::Received { token, result } => {
                if let Ok(buf) = &result {
                    self.received_octets += buf.len() as u64;
                }
                self.received(token, result)
            }
            Completion::Sent { token, buf, result } => self.sent(token, buf, result),
            Completion::Closed { token } => self.closed(token),
            Completion::Woken => {}
        }
    }

    fn received(&mut self, token: Token, result: std::io::Result<Vec<u8>>) {
        let Worker {
            backend,
            shared,
            conns,
            ..
        } = self;
        let Some(conn) = live(conns, token).filter(|c| !c.phase.ended()) else {
            if let Ok(buf) = result {
                backend.recycle(buf);
            }
            return;
        };
        match result {
            Ok(buf) if buf.is_empty() => {
                backend.recycle(buf);
                if conn
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.handshake_deadline().is_some())
                {
                    conn.tls_failed(shared, token, tls::Failure::Eof);
                } else {
                    conn.phase = Phase::PeerClosed;
                    conn.after_eof(shared, token);
                }
            }
            Ok(buf) => {
                conn.receive(shared, token, &buf);
                backend.recycle(buf);
            }
            Err(e) => {
                tracing::debug!(peer = %conn.peer, error = %e, "receive failed");
                conn.abandon(shared, token, CloseReason::ReceiveError);
            }
        }
        shared.mark(conn, token);
    }

    fn sent(&mut self, token: Token, buf: Vec<u8>, result: std::io::Result<()>) {
        let Worker { shared, conns, .. } = self;
        let Some(conn) = live(conns, token) else {
            return;
        };
        conn.sending = false;
        shared.pool.put(buf);
        if let Err(e) = result {
            tracing::debug!(peer = %conn.peer, error = %e, "send failed");
            conn.abandon(shared, token, CloseReason::SendError);
            conn.out.clear();
        } else {
            conn.pump(shared, token);
            conn.after_eof(shared, token);
        }
        shared.mark(conn, token);
    }

    fn accept(&mut self, socket: OwnedFd, peer: SocketAddr, listener: usize) {
        if self.grace_until.is_some() {
            self.refuse(socket, Reply::ShuttingDown);
            self.refused.shutting_down += 1;
            return;
        }
        let role = self.config.listeners.get(listener).copied().unwrap_or_default();
        let ip = peer.ip().to_canonical();
        if role.proxy && !self.config.proxy_trusted.iter().any(|net| net.contains(&ip)) {
            // Only a trusted balancer may speak for a client; anyone else is hung up on.
            self.shared.admit_stats.untrusted += 1;
            if self.shared.admit_stats.untrusted % 1000 == 1 {
                tracing::warn!(%peer, "connection to a PROXY listener from outside proxy_trusted");
            }
            self.backend.reject(socket, b"");
            return;
        }
        let max = self.config.max_connections;
        if self.active.fetch_add(1, Ordering::Relaxed) >= max {
            self.active.fetch_sub(1, Ordering::Relaxed);
            self.refused.max_connections += 1;
            // One line per thousand refusals: a connection flood must not become a log flood.
            if self.refused.max_connections % 1000 == 1 {
                tracing::warn!(%peer, max, refused = self.refused.max_connections, "too many connections");
            }
            self.refuse(socket, Reply::TooManyConnections);
            return;
        }
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if self.generations.len() <= slot {
            self.generations.resize(slot + 1, 0);
        }
        let token = Token {
            slot: slot as u32,
            generation: self.generations[slot],
        };
        if let Err(e) = self.backend.attach(token, socket) {
            tracing::warn!(%peer, error = %e, "cannot register connection");
            self.active.fetch_sub(1, Ordering::Relaxed);
            self.refused.attach_failed += 1;
            return;
        }
        self.accepted += 1;
        let sh = &mut self.shared;
        let session = Session::pending(sh.settings.clone(), sh.now);
        let conn = entry.insert(Conn::new(session, token.generation, peer, sh.now, Vec::new()));
        if role.proxy {
            conn.proxy = Some(ProxyWait { tls: role.tls });
        } else {
            conn.begin(sh, token, role.tls);
        }
        sh.mark(conn, token);
    }

    /// Answers an accepted socket with one of the fixed `421`s and closes it.
    fn refuse(&mut self, socket: OwnedFd, reply: Reply) {
        self.shared.stats.count_reply(reply);
        self.backend.reject(socket, reply.fixed());
    }

    fn closed(&mut self, token: Token) {
        if live(&mut self.conns, token).is_none() {
            return;
        }
        let slot = token.slot as usize;
        let mut conn = self.conns.remove(slot);
        // The generation reserved for the backend's own tokens is skipped.
        let next = conn.generation.wrapping_add(1);
        self.generations[slot] = if next == RESERVED_GENERATION { 0 } else { next };
        self.active.fetch_sub(1, Ordering::Relaxed);
        let sh = &mut self.shared;
        // A message still streaming is dropped; one committing is left to commit (its end
        // arrived intact), and its late result finds no connection.
        if matches!(conn.message, store::Message::Streaming(_)) {
            sh.store.abort(token, &mut conn.message);
        }
        let tls = conn.tls.as_ref().and_then(|t| t.describe());
        conn.release(&mut sh.pool, sh.clients.as_deref());
        let reason = match conn.phase {
            Phase::Finishing(reason) | Phase::Closing(reason) => reason,
            Phase::Open | Phase::PeerClosed => CloseReason::PeerClosed,
        };
        let last = conn.fold_stats(&mut sh.stats);
        sh.stats.count_close(reason);
        log::session_ended(&log::Ended {
            client: conn.peer,
            helo: conn.session.envelope().helo(),
            tls,
            record: conn.log.as_deref(),
            last: &last,
            duration: sh.now.saturating_duration_since(conn.started),
            reason,
        });
    }

    /// Hands the spool's results to their sessions.
    fn commits(&mut self) {
        let Worker { shared, conns, .. } = self;
        for done in shared.store.results() {
            let token = Token::from_u64(done.key);
            let Some(conn) = live(conns, token).filter(|c| store::awaited(&c.message, &done)) else {
                // Gone, or the session gave up waiting (commit timeout) and has moved on.
                continue;
            };
            conn.committed(shared, token, &done.id, done.ok);
            shared.mark(conn, token);
        }
        if !shared.spool_waiting.is_empty() && !shared.store.full() {
            for token in std::mem::take(&mut shared.spool_waiting) {
                if let Some(conn) = live(conns, token) {
                    shared.mark(conn, token);
                }
            }
        }
    }

    fn timers(&mut self, expired: &mut Vec<(u64, Tick)>) {
        let now = self.shared.now;
        self.wheel.expire(now, TIMERS_PER_TURN, expired);
        for (key, tick) in expired.drain(..) {
            let token = Token::from_u64(key);
            let Worker {
                shared,
                conns,
                backend,
                ..
            } = self;
            let Some(conn) = live(conns, token).filter(|c| c.timer == tick) else {
                continue;
            };
            conn.timer = 0;
            match conn.phase {
                // The last reply did not leave within the linger time.
                Phase::Finishing(reason) => {
                    conn.phase = Phase::Closing(reason);
                    backend.close(token);
                }
                Phase::Closing(_) => {}
                Phase::Open | Phase::PeerClosed => {
                    let handshake = conn.tls.as_ref().and_then(|t| t.handshake_deadline());
                    let proxy = conn.proxy_deadline(shared.proxy_timeout);
                    if proxy.is_some_and(|deadline| now >= deadline) {
                        conn.proxy_timed_out(shared, token);
                    } else if handshake.is_some_and(|deadline| now >= deadline) {
                        conn.tls_failed(shared, token, tls::Failure::Timeout);
                    } else {
                        shared.pool.ensure(&mut conn.out);
                        conn.session.handle_timeout(now, &mut conn.out);
                        conn.events(shared, token);
                        // A held reply (the tarpit) or the rest of a delayed greeting went
                        // out: what waits behind it is read now.
                        conn.pump(shared, token);
                    }
                    shared.mark(conn, token);
                }
            }
        }
        if self.grace_until.is_some_and(|grace| now >= grace) {
            let Worker { shared, conns, .. } = self;
            for (slot, conn) in conns.iter_mut() {
                if !conn.phase.ended() {
                    let token = Token {
                        slot: slot as u32,
                        generation: conn.generation,
                    };
                    conn.abandon(shared, token, CloseReason::GraceExpired);
                    shared.mark(conn, token);
                }
            }
        }
    }

    fn shutdown(&mut self) {
        self.grace_until = Some(self.shared.now + self.config.shutdown_grace);
        self.backend.stop_accepting();
        let Worker { shared, conns, .. } = self;
        for (slot, conn) in conns.iter_mut() {
            let token = Token {
                slot: slot as u32,
                generation: conn.generation,
            };
            shared.pool.ensure(&mut conn.out);
            conn.session.handle_shutdown(&mut conn.out);
            conn.events(shared, token);
            shared.mark(conn, token);
        }
    }

    /// Settles every connection touched this turn: one send, then close, receive and timer.
    fn settle(&mut self) {
        let dirty = std::mem::take(&mut self.shared.dirty);
        for &token in &dirty {
            let Worker {
                backend,
                shared,
                conns,
                wheel,
                config,
                ..
            } = self;
            let Some(conn) = live(conns, token) else {
                continue;
            };
            conn.dirty = false;
            conn.seal(&mut shared.pool);
            if conn.tls.is_some() && conn.out.capacity() > 0 {
                // Sealed: the replies are records in the wire buffer now.
                let out = std::mem::take(&mut conn.out);
                shared.pool.put(out);
            }
            let sending = conn.sending;
            let wire = conn.wire();
            if !sending && !wire.is_empty() {
                backend.send(token, std::mem::take(wire));
                conn.sending = true;
            } else if wire.is_empty() && wire.capacity() > 0 {
                let wire = std::mem::take(wire);
                shared.pool.put(wire);
            }
            match conn.phase {
                Phase::Finishing(reason) if !conn.sending => {
                    conn.phase = Phase::Closing(reason);
                    backend.close(token);
                }
                Phase::Finishing(_) => {
                    // A client that does not read its last reply is not waited for long.
                    if wheel.earlier(shared.now + LINGER, conn.timer) {
                        conn.timer = wheel.schedule(token.to_u64(), shared.now + LINGER);
                    }
                }
                Phase::Closing(_) => {}
                Phase::Open | Phase::PeerClosed => {
                    Self::pace(backend, shared, wheel, config, conn, token);
                }
            }
        }
        self.shared.dirty = dirty;
        self.shared.dirty.clear();
    }

    /// Turns receiving on or off for a live connection (memory stays bounded: its input, its
    /// replies and the spool queue each stop reading when full) and re-arms its timer.
    fn pace(
        backend: &mut B,
        sh: &mut Shared,
        wheel: &mut Wheel,
        config: &WorkerConfig,
        conn: &mut Conn,
        token: Token,
    ) {
        let spool_full = matches!(conn.message, store::Message::Streaming(_)) && sh.store.full();
        if spool_full {
            sh.spool_waiting.push(token);
        }
        let backlog = sh.settings.config.limits.max_reply_backlog;
        let want = !spool_full
            && conn.phase == Phase::Open
            && conn.input.len() < config.input_buffer
            && conn.pending() < backlog;
        if want != conn.receiving {
            conn.receiving = want;
            backend.set_receiving(token, want);
        }
        let handshake = conn.tls.as_ref().and_then(|t| t.handshake_deadline());
        let proxy = conn.proxy_deadline(sh.proxy_timeout);
        let deadline = [conn.session.poll_timeout(), handshake, proxy]
            .into_iter()
            .flatten()
            .min();
        if let Some(deadline) = deadline {
            if wheel.earlier(deadline, conn.timer) {
                conn.timer = wheel.schedule(token.to_u64(), deadline);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// An idle connection is this struct and its socket: the session's counters (a `u16` per
    /// reply kind), its envelope and deadlines (command line, session, message rate), and one
    /// pointer for TLS. Growth past this is a choice to make knowingly.
    #[test]
    fn an_idle_connection_stays_small() {
        assert!(
            std::mem::size_of::<super::Conn>() <= 640,
            "{}",
            std::mem::size_of::<super::Conn>()
        );
    }
}
