//! The per-core event loop: feeds backend completions to sessions, sessions' messages to the spool, and replies back out.
//!
//! One turn: wait for completions (sleeping at most until the next timer), read the clock
//! once, handle every completion, collect commit results, run due timers (a bounded number),
//! then settle each connection touched this turn exactly once: send its output in one buffer,
//! close it if its session ended, turn receiving on or off, re-arm its timer. Nothing here
//! blocks but the backend's wait, and nothing is shared with other workers on the per-command
//! path: the only cross-thread traffic is the shutdown message, the commit results and one
//! atomic connection count per accept and close.
//!
//! Buffers: a connection holds an input buffer only while it has unconsumed bytes, and an
//! output buffer only while it has unsent replies; both come from, and go back to, a
//! per-worker pool, so an idle connection costs its session and its socket, little more.

pub mod timer;

use crate::backend::{Backend, Completion, IoStats, Token, RESERVED_GENERATION};
use crate::proto::{Commit, Event, Session, Settings, Stats};
use crate::spool::{IdGen, Job, MessageMeta, Spool};
use crossbeam_channel::Receiver;
use slab::Slab;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use timer::{Tick, Wheel};

/// A message from the main thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop accepting, say goodbye to idle sessions, let transactions finish within the grace.
    Shutdown,
}

/// Where finished messages go.
pub enum Store {
    /// Count and drop (`--sink`): `250` right after the end of data.
    Sink(IdGen),
    /// Commit to the spool before `250`.
    Spool(Spool),
}

/// A worker's counters, merged by the main thread at exit.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub stats: Stats,
    pub io: IoStats,
    pub accepted: u64,
    pub rejected: u64,
}

impl Report {
    pub fn merge(&mut self, other: &Report) {
        self.stats.merge(&other.stats);
        self.io.merge(&other.io);
        self.accepted += other.accepted;
        self.rejected += other.rejected;
    }
}

const TOO_MANY: &[u8] = b"421 4.3.2 Too many connections, try again later\r\n";
const SHUTTING_DOWN: &[u8] = b"421 4.3.2 Service shutting down\r\n";
/// Timers handled per turn, so a mass expiry cannot stall live sessions for long.
const TIMERS_PER_TURN: usize = 1024;
/// How long a finished session's last reply may take to leave before the connection is cut.
const LINGER: Duration = Duration::from_secs(10);
/// Connection slots reserved up front (address space only); beyond this the slab grows.
const RESERVE_MAX: usize = 1 << 16;
/// Free session buffers kept for reuse.
const POOL_MAX: usize = 256;
/// Initial capacity of a session's output buffer; most reply batches fit.
const OUT_CAPACITY: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
enum Message {
    None,
    /// Between `MessageStart` and `MessageEnd`, under this queue id (empty in sink mode).
    Streaming(String),
    /// Handed to the spool under this id; waiting for its result. The id tells a late result
    /// for a message the session gave up on from the result for its current one.
    Committing(String),
}

struct Conn {
    generation: u32,
    session: Session,
    peer: SocketAddr,
    started: Instant,
    /// Bytes received but not yet consumed by the session.
    input: Vec<u8>,
    /// Replies not yet handed to the backend.
    out: Vec<u8>,
    /// Message content from the current batch of input, not yet handed to the spool.
    body: Vec<u8>,
    sending: bool,
    receiving: bool,
    /// The client closed its side; what it sent is still answered.
    eof: bool,
    /// The session ended (or the connection broke): send what is left, then close.
    finishing: bool,
    /// `Backend::close` was called; waiting for `Closed`.
    closing: bool,
    dirty: bool,
    message: Message,
    timer: Tick,
    commands: u64,
    messages: u64,
    errors: u64,
    reason: &'static str,
}

struct Core {
    id: usize,
    settings: Arc<Settings>,
    now: Instant,
    stats: Stats,
    store: Store,
    pool: Vec<Vec<u8>>,
    dirty: Vec<Token>,
    spool_waiting: Vec<Token>,
    read_cap: usize,
}

/// One worker's state. Generic over the backend, so io_uring slots in without changes here.
pub struct Worker<B: Backend> {
    backend: B,
    core: Core,
    conns: Slab<Conn>,
    generations: Vec<u32>,
    wheel: Wheel,
    control: Receiver<Control>,
    active: Arc<AtomicUsize>,
    max_connections: usize,
    /// Set at shutdown: when sessions still open are cut off.
    grace_until: Option<Instant>,
    accepted: u64,
    rejected: u64,
}

/// Why the session ended, read from the last reply it wrote before `Close` (always one of
/// the fixed final replies of the reply table).
fn close_reason(out: &[u8]) -> &'static str {
    let body = out.strip_suffix(b"\r\n").unwrap_or(out);
    let last = body
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(body, |p| &body[p + 1..]);
    const REASONS: [(&[u8], &str); 6] = [
        (b"221 ", "client quit"),
        (b"421 4.3.2 ", "shutdown"),
        (b"421 4.4.2 ", "timeout"),
        (b"421 4.7.0 ", "too many errors"),
        (b"451 4.3.0 ", "commit timeout"),
        (b"554 ", "non-SMTP traffic"),
    ];
    REASONS
        .iter()
        .find(|(prefix, _)| last.starts_with(prefix))
        .map_or("session closed", |&(_, reason)| reason)
}

impl Core {
    fn take_buf(&mut self) -> Vec<u8> {
        self.pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(OUT_CAPACITY))
    }

    fn put_buf(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > 0 && self.pool.len() < POOL_MAX && buf.capacity() <= 4 * self.read_cap {
            buf.clear();
            self.pool.push(buf);
        }
    }

    fn mark(&mut self, conn: &mut Conn, token: Token) {
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(token);
        }
    }

    /// Feeds `bytes` to the session until it has consumed them or cannot take more now
    /// (waiting for a commit, or its reply backlog is full); returns how many it took.
    ///
    /// This is the seam for STARTTLS: with TLS on, the received bytes go to rustls's
    /// `read_tls` and the plaintext it yields comes here; replies go through its `writer`.
    fn feed(&mut self, conn: &mut Conn, token: Token, bytes: &[u8]) -> usize {
        let mut off = 0;
        loop {
            if conn.out.capacity() == 0 {
                conn.out = self.take_buf();
            }
            let (commands, errors) = (self.stats.commands, self.stats.errors);
            let progress = conn
                .session
                .handle_input(self.now, &bytes[off..], &mut conn.out, &mut self.stats);
            conn.commands += self.stats.commands - commands;
            conn.errors += self.stats.errors - errors;
            let n = progress.consumed;
            if !progress.body.is_empty() && matches!(self.store, Store::Spool(_)) {
                if conn.body.capacity() == 0 {
                    conn.body = self.take_buf();
                }
                for piece in progress.body.pieces() {
                    conn.body.extend_from_slice(piece);
                }
            }
            off += n;
            let events = self.events(conn, token);
            if off == bytes.len() || (n == 0 && !events) {
                self.flush_body(conn, token);
                return off;
            }
        }
    }

    /// Feeds the bytes the session left unconsumed earlier.
    fn pump(&mut self, conn: &mut Conn, token: Token) {
        if conn.input.is_empty() {
            return;
        }
        let mut input = std::mem::take(&mut conn.input);
        let n = self.feed(conn, token, &input);
        input.drain(..n);
        if input.is_empty() {
            self.put_buf(input);
        } else {
            conn.input = input;
        }
    }

    /// Hands the body bytes gathered from one batch of input to the spool, as one job.
    fn flush_body(&mut self, conn: &mut Conn, token: Token) {
        if conn.body.is_empty() {
            return;
        }
        if let Store::Spool(spool) = &self.store {
            spool.submit(Job::Chunk {
                key: token.to_u64(),
                data: std::mem::take(&mut conn.body),
            });
        }
    }

    /// Drains the session's events; returns whether there were any.
    fn events(&mut self, conn: &mut Conn, token: Token) -> bool {
        let mut any = false;
        while let Some(event) = conn.session.poll_event() {
            any = true;
            match event {
                Event::MessageStart => self.start_message(conn, token),
                Event::MessageEnd => {
                    self.flush_body(conn, token);
                    self.end_message(conn, token);
                }
                Event::MessageAbort => self.abort_message(conn, token),
                Event::Close => {
                    conn.finishing = true;
                    conn.reason = close_reason(&conn.out);
                }
            }
        }
        any
    }

    fn start_message(&mut self, conn: &mut Conn, token: Token) {
        let Store::Spool(spool) = &mut self.store else {
            conn.message = Message::Streaming(String::new());
            return;
        };
        let id = spool.ids.next_id();
        conn.message = Message::Streaming(id.clone());
        let env = conn.session.envelope();
        let meta = MessageMeta {
            id,
            helo: env.helo().to_vec(),
            esmtp: env.esmtp(),
            smtputf8: env.params().smtputf8,
            client: conn.peer,
            mail_from: env.mail_from().to_vec(),
            mail_params: env.mail_params().to_vec(),
            recipients: env.recipients().map(<[u8]>::to_vec).collect(),
            received: SystemTime::now(),
        };
        spool.submit(Job::Start {
            key: token.to_u64(),
            meta: Box::new(meta),
        });
    }

    fn end_message(&mut self, conn: &mut Conn, token: Token) {
        match &mut self.store {
            Store::Sink(ids) => {
                let id = ids.next_id();
                conn.message = Message::None;
                conn.messages += 1;
                conn.session
                    .handle_commit(self.now, Commit::Queued(&id), &mut conn.out, &mut self.stats);
            }
            Store::Spool(spool) => {
                spool.submit(Job::End { key: token.to_u64() });
                conn.message = match std::mem::replace(&mut conn.message, Message::None) {
                    Message::Streaming(id) | Message::Committing(id) => Message::Committing(id),
                    Message::None => Message::Committing(String::new()),
                };
            }
        }
    }

    fn abort_message(&mut self, conn: &mut Conn, token: Token) {
        let body = std::mem::take(&mut conn.body);
        self.put_buf(body);
        if conn.message != Message::None {
            if let Store::Spool(spool) = &self.store {
                spool.submit(Job::Abort { key: token.to_u64() });
            }
        }
        conn.message = Message::None;
    }
}

impl<B: Backend> Worker<B> {
    pub fn new(
        id: usize,
        backend: B,
        settings: Arc<Settings>,
        store: Store,
        control: Receiver<Control>,
        active: Arc<AtomicUsize>,
    ) -> Worker<B> {
        let now = Instant::now();
        let limits = &settings.config.limits;
        let max_connections = limits.max_connections;
        let read_cap = limits.input_buffer;
        Worker {
            backend,
            core: Core {
                id,
                settings,
                now,
                stats: Stats::default(),
                store,
                pool: Vec::new(),
                dirty: Vec::new(),
                spool_waiting: Vec::new(),
                read_cap,
            },
            // Reserved, not touched: the pages of unused slots are never faulted in, and the
            // slab never moves (a copy of every session) as connections arrive.
            conns: Slab::with_capacity(max_connections.min(RESERVE_MAX)),
            generations: Vec::new(),
            wheel: Wheel::new(now),
            control,
            active,
            max_connections,
            grace_until: None,
            accepted: 0,
            rejected: 0,
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
                tracing::error!(worker = self.core.id, error = %e, "backend wait failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            self.core.now = Instant::now();
            for completion in completions.drain(..) {
                self.complete(completion);
            }
            self.commits();
            if self.control.try_recv().is_ok() && self.grace_until.is_none() {
                self.shutdown();
            }
            self.timers(&mut expired);
            self.settle();
            if self.grace_until.is_some() && self.conns.is_empty() {
                break;
            }
        }
        if let Store::Spool(spool) = &mut self.core.store {
            spool.finish();
        }
        Report {
            stats: self.core.stats,
            io: self.backend.io_stats(),
            accepted: self.accepted,
            rejected: self.rejected,
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        match (self.wheel.next_deadline(), self.grace_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn complete(&mut self, completion: Completion) {
        match completion {
            Completion::Accepted { socket, peer } => self.accept(socket, peer),
            Completion::Refused { socket, .. } => {
                self.rejected += 1;
                self.backend.reject(socket, TOO_MANY);
            }
            Completion::Received { token, result } => {
                let Worker {
                    backend, core, conns, ..
                } = self;
                let Some(conn) = conns
                    .get_mut(token.slot as usize)
                    .filter(|c| c.generation == token.generation && !c.finishing)
                else {
                    if let Ok(buf) = result {
                        backend.recycle(buf);
                    }
                    return;
                };
                match result {
                    Ok(buf) if buf.is_empty() => {
                        backend.recycle(buf);
                        conn.reason = "client closed";
                        conn.eof = true;
                        Self::after_eof(core, conn, token);
                    }
                    Ok(buf) => {
                        if conn.input.is_empty() {
                            let n = core.feed(conn, token, &buf);
                            if n < buf.len() {
                                conn.input = core.take_buf();
                                conn.input.extend_from_slice(&buf[n..]);
                            }
                        } else {
                            conn.input.extend_from_slice(&buf);
                            core.pump(conn, token);
                        }
                        backend.recycle(buf);
                    }
                    Err(e) => {
                        tracing::debug!(peer = %conn.peer, error = %e, "receive failed");
                        conn.reason = "receive error";
                        Self::abandon(core, conn, token);
                    }
                }
                core.mark(conn, token);
            }
            Completion::Sent { token, buf, result } => {
                let Worker { core, conns, .. } = self;
                let Some(conn) = conns
                    .get_mut(token.slot as usize)
                    .filter(|c| c.generation == token.generation)
                else {
                    return;
                };
                conn.sending = false;
                core.put_buf(buf);
                if let Err(e) = result {
                    tracing::debug!(peer = %conn.peer, error = %e, "send failed");
                    conn.reason = "send error";
                    Self::abandon(core, conn, token);
                    conn.out.clear();
                } else {
                    core.pump(conn, token);
                    Self::after_eof(core, conn, token);
                }
                core.mark(conn, token);
            }
            Completion::Closed { token } => self.closed(token),
            Completion::Woken => {}
        }
    }

    /// After the client's end of stream, the input already received is still answered (a
    /// client may send its last commands and half-close); once nothing more can come of it,
    /// the session is abandoned like a broken connection.
    fn after_eof(core: &mut Core, conn: &mut Conn, token: Token) {
        let committing = matches!(conn.message, Message::Committing(_));
        let blocked_on_send = conn.sending && !conn.input.is_empty();
        if conn.eof && !conn.finishing && !committing && !blocked_on_send {
            Self::abandon(core, conn, token);
        }
    }

    /// The connection is unusable or the client left: drop any message in progress and close
    /// once what is already queued has been sent.
    fn abandon(core: &mut Core, conn: &mut Conn, token: Token) {
        core.abort_message(conn, token);
        conn.finishing = true;
        let input = std::mem::take(&mut conn.input);
        core.put_buf(input);
    }

    fn accept(&mut self, socket: OwnedFd, peer: SocketAddr) {
        if self.grace_until.is_some() {
            self.backend.reject(socket, SHUTTING_DOWN);
            return;
        }
        if self.active.fetch_add(1, Ordering::Relaxed) >= self.max_connections {
            self.active.fetch_sub(1, Ordering::Relaxed);
            self.rejected += 1;
            // One line per thousand refusals: a connection flood must not become a log flood.
            if self.rejected % 1000 == 1 {
                tracing::warn!(%peer, max = self.max_connections, refused = self.rejected, "too many connections");
            }
            self.backend.reject(socket, TOO_MANY);
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
            return;
        }
        self.accepted += 1;
        let core = &mut self.core;
        let mut out = core.take_buf();
        let session = Session::new(core.settings.clone(), core.now, &mut out, &mut core.stats);
        let conn = entry.insert(Conn {
            generation: token.generation,
            session,
            peer,
            started: core.now,
            input: Vec::new(),
            out,
            body: Vec::new(),
            sending: false,
            receiving: true,
            eof: false,
            finishing: false,
            closing: false,
            dirty: false,
            message: Message::None,
            timer: 0,
            commands: 0,
            messages: 0,
            errors: 0,
            reason: "session closed",
        });
        core.mark(conn, token);
    }

    fn closed(&mut self, token: Token) {
        let slot = token.slot as usize;
        if self
            .conns
            .get(slot)
            .is_none_or(|c| c.generation != token.generation)
        {
            return;
        }
        let mut conn = self.conns.remove(slot);
        // The generation reserved for the backend's own tokens is skipped.
        let next = conn.generation.wrapping_add(1);
        self.generations[slot] = if next == RESERVED_GENERATION { 0 } else { next };
        self.active.fetch_sub(1, Ordering::Relaxed);
        if conn.message != Message::None {
            self.core.abort_message(&mut conn, token);
        }
        for buf in [
            std::mem::take(&mut conn.input),
            std::mem::take(&mut conn.out),
            std::mem::take(&mut conn.body),
        ] {
            self.core.put_buf(buf);
        }
        tracing::info!(
            client = %conn.peer,
            duration_ms = self.core.now.saturating_duration_since(conn.started).as_millis() as u64,
            commands = conn.commands,
            messages = conn.messages,
            errors = conn.errors,
            reason = conn.reason,
            "session ended"
        );
    }

    /// Hands the spool's results to their sessions.
    fn commits(&mut self) {
        let Worker { core, conns, .. } = self;
        let Store::Spool(spool) = &core.store else {
            return;
        };
        let results: Vec<_> = spool.results.try_iter().collect();
        for done in results {
            let token = Token::from_u64(done.key);
            let Some(conn) = conns
                .get_mut(token.slot as usize)
                .filter(|c| c.generation == token.generation)
            else {
                continue;
            };
            if !matches!(&conn.message, Message::Committing(id) if *id == done.id) {
                // The session gave up waiting (commit timeout) and has moved on.
                continue;
            }
            conn.message = Message::None;
            let commit = if done.ok {
                conn.messages += 1;
                Commit::Queued(&done.id)
            } else {
                Commit::Failed
            };
            if conn.out.capacity() == 0 {
                conn.out = core.take_buf();
            }
            conn.session
                .handle_commit(core.now, commit, &mut conn.out, &mut core.stats);
            core.events(conn, token);
            core.pump(conn, token);
            Self::after_eof(core, conn, token);
            core.mark(conn, token);
        }
        let full = matches!(&core.store, Store::Spool(s) if s.full());
        if !core.spool_waiting.is_empty() && !full {
            for token in std::mem::take(&mut core.spool_waiting) {
                if let Some(conn) = conns
                    .get_mut(token.slot as usize)
                    .filter(|c| c.generation == token.generation)
                {
                    core.mark(conn, token);
                }
            }
        }
    }

    fn timers(&mut self, expired: &mut Vec<(u64, Tick)>) {
        let now = self.core.now;
        self.wheel.expire(now, TIMERS_PER_TURN, expired);
        for (key, tick) in expired.drain(..) {
            let token = Token::from_u64(key);
            let Worker {
                core, conns, backend, ..
            } = self;
            let Some(conn) = conns
                .get_mut(token.slot as usize)
                .filter(|c| c.generation == token.generation && c.timer == tick)
            else {
                continue;
            };
            conn.timer = 0;
            if conn.finishing {
                if !conn.closing {
                    conn.closing = true;
                    backend.close(token);
                }
                continue;
            }
            if conn.out.capacity() == 0 {
                conn.out = core.take_buf();
            }
            conn.session.handle_timeout(now, &mut conn.out, &mut core.stats);
            core.events(conn, token);
            core.mark(conn, token);
        }
        if let Some(grace) = self.grace_until {
            if now >= grace {
                let Worker { core, conns, .. } = self;
                for (slot, conn) in conns.iter_mut() {
                    if !conn.finishing {
                        let token = Token {
                            slot: slot as u32,
                            generation: conn.generation,
                        };
                        conn.reason = "shutdown grace expired";
                        Self::abandon(core, conn, token);
                        core.mark(conn, token);
                    }
                }
            }
        }
    }

    fn shutdown(&mut self) {
        let grace = self.core.settings.config.limits.shutdown_grace_secs;
        self.grace_until = Some(self.core.now + Duration::from_secs(grace));
        self.backend.stop_accepting();
        let Worker { core, conns, .. } = self;
        for (slot, conn) in conns.iter_mut() {
            let token = Token {
                slot: slot as u32,
                generation: conn.generation,
            };
            if conn.out.capacity() == 0 {
                conn.out = core.take_buf();
            }
            conn.session.handle_shutdown(&mut conn.out, &mut core.stats);
            core.events(conn, token);
            core.mark(conn, token);
        }
    }

    /// Settles every connection touched this turn: one send, then close, receive and timer.
    fn settle(&mut self) {
        let dirty = std::mem::take(&mut self.core.dirty);
        let backlog = self.core.settings.config.limits.max_reply_backlog;
        for &token in &dirty {
            let Worker {
                backend,
                core,
                conns,
                wheel,
                ..
            } = self;
            let Some(conn) = conns
                .get_mut(token.slot as usize)
                .filter(|c| c.generation == token.generation)
            else {
                continue;
            };
            conn.dirty = false;
            if !conn.sending && !conn.out.is_empty() {
                backend.send(token, std::mem::take(&mut conn.out));
                conn.sending = true;
            } else if conn.out.is_empty() && conn.out.capacity() > 0 {
                let out = std::mem::take(&mut conn.out);
                core.put_buf(out);
            }
            if conn.finishing {
                if !conn.sending && !conn.closing {
                    conn.closing = true;
                    backend.close(token);
                } else if conn.sending && wheel.earlier(core.now + LINGER, conn.timer) {
                    // A client that does not read its last reply is not waited for long.
                    conn.timer = wheel.schedule(token.to_u64(), core.now + LINGER);
                }
                continue;
            }
            let spool_full = matches!(conn.message, Message::Streaming(_))
                && matches!(&core.store, Store::Spool(s) if s.full());
            if spool_full {
                core.spool_waiting.push(token);
            }
            let want =
                !spool_full && !conn.eof && conn.input.len() < core.read_cap && conn.out.len() < backlog;
            if want != conn.receiving {
                conn.receiving = want;
                backend.set_receiving(token, want);
            }
            if let Some(deadline) = conn.session.poll_timeout() {
                if wheel.earlier(deadline, conn.timer) {
                    conn.timer = wheel.schedule(token.to_u64(), deadline);
                }
            }
        }
        self.core.dirty = dirty;
        self.core.dirty.clear();
    }
}
#[cfg(test)]
mod tests {
    #[test]
    fn close_reason_is_read_from_the_final_reply() {
        use super::close_reason;
        assert_eq!(close_reason(b"250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"), "client quit");
        assert_eq!(close_reason(b"421 4.4.2 Error: timeout exceeded\r\n"), "timeout");
        assert_eq!(
            close_reason(b"554 5.5.0 Error: SSH on an SMTP port\r\n"),
            "non-SMTP traffic"
        );
        assert_eq!(close_reason(b""), "session closed");
    }

    #[test]
    fn an_idle_connection_stays_small() {
        assert!(
            std::mem::size_of::<super::Conn>() <= 512,
            "{}",
            std::mem::size_of::<super::Conn>()
        );
    }
}
