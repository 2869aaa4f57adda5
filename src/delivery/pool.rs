//! One destination's delivery threads: up to `destination_concurrency` of them, each holding one pooled connection that it reuses for message after message, started when work waits and ended after `relay_idle_secs` without any.
//!
//! The queue runner hands each [`Work`] (one message, up to `destination_recipients` of its
//! recipients) to the destination's channel; whichever thread is free takes it. The outcome
//! goes back to the runner as an [`Outcome`], which says how far the attempt got
//! ([`Attempt`]): the runner judges the destination's health by it (`health.rs`) and hands
//! nothing more to a dead one but its probe. Work that was already waiting here when a
//! connection failed is deferred with the same reason at once, until `destination_dead_secs`
//! pass or a connection succeeds, instead of every message waiting for its own connect
//! timeout (Postfix's dead-destination marking); work handed over after the failure (the
//! runner's probe, a flush, a release) tries again.

use super::client::{ClientSettings, Conn, Failure};
use super::reply::Reply;
use super::route::Dest;
use super::transfer::{self, Message};
use crate::config::DeliveryLimits;
use crate::spool::Queue;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A message's recipients for one destination.
#[derive(Debug)]
pub struct Work {
    pub id: String,
    pub from: Arc<[u8]>,
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// Recipient indices in the envelope, and their addresses.
    pub rcpts: Vec<(usize, Vec<u8>)>,
    /// When it was handed over.
    pub queued: Instant,
}

/// What became of a [`Work`]: each recipient's reply.
#[derive(Debug)]
pub struct Outcome {
    pub id: String,
    pub dest: Arc<Dest>,
    pub replies: Vec<(usize, Reply)>,
    pub attempt: Attempt,
}

/// How far an attempt got: what the runner learns of its destination's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The next hop answered each recipient (whatever the replies say): it is alive.
    Answered,
    /// No session could be opened (refused, timed out, a refusing greeting, EHLO or
    /// STARTTLS): Postfix's failed cohort, which marks the destination dead.
    ConnectFailed,
    /// An open session broke during the transaction (a pooled connection may have been closed
    /// by the peer while idle): a failure, but no proof the destination is down.
    Lost,
    /// Not tried: the destination was dead when a thread took the work; every recipient is
    /// deferred with its last connection error.
    Dead,
    /// Not tried: the message could not be read (deleted meanwhile, or unreadable).
    Unread,
}

/// What every thread of a destination shares.
struct Shared {
    dest: Arc<Dest>,
    /// The settings in force, and the limits below, replaced by a reload ([`Pool::reconfigure`]):
    /// a thread opens its next connection with them, and closes a pooled one opened with older
    /// settings before its next transaction.
    settings: Mutex<Arc<ClientSettings>>,
    queue: Arc<dyn Queue>,
    work: Receiver<Work>,
    outcomes: Sender<Outcome>,
    threads: AtomicUsize,
    limit: AtomicUsize,
    idle: Mutex<Duration>,
    /// How long the destination stays dead after a failed connection (`destination_dead_secs`).
    dead_for: Mutex<Duration>,
    stop: Arc<AtomicBool>,
    /// Since and until when the destination is dead, and why.
    dead: Mutex<Option<(Instant, Instant, Reply)>>,
    /// Connections opened, for the counters.
    connections: AtomicUsize,
}

/// A destination's pool, owned by the runner.
pub struct Pool {
    tx: Sender<Work>,
    shared: Arc<Shared>,
}

impl Pool {
    pub fn new(
        dest: Arc<Dest>,
        settings: Arc<ClientSettings>,
        queue: Arc<dyn Queue>,
        outcomes: Sender<Outcome>,
        limits: &DeliveryLimits,
        stop: Arc<AtomicBool>,
    ) -> Pool {
        let (tx, work) = crossbeam_channel::unbounded();
        Pool {
            tx,
            shared: Arc::new(Shared {
                dest,
                settings: Mutex::new(settings),
                queue,
                work,
                outcomes,
                threads: AtomicUsize::new(0),
                limit: AtomicUsize::new(limits.destination_concurrency),
                idle: Mutex::new(Duration::from_secs(limits.relay_idle_secs)),
                dead_for: Mutex::new(limits.destination_dead()),
                stop,
                dead: Mutex::new(None),
                connections: AtomicUsize::new(0),
            }),
        }
    }

    /// Hands over `work`, starting a thread for it if all are busy and the limit allows.
    pub fn submit(&self, work: Work) {
        let _ = self.tx.send(work);
        let s = &self.shared;
        // Sent first, counted after: a thread that is about to end sees the work (it looks
        // at the channel after lowering the count), or this sees it gone.
        let threads = s.threads.load(Ordering::SeqCst);
        if threads < s.limit.load(Ordering::SeqCst) && (threads == 0 || !s.work.is_empty()) {
            s.threads.fetch_add(1, Ordering::SeqCst);
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("ringmx-deliver".into())
                .spawn(move || run(&shared));
            if let Err(e) = spawned {
                s.threads.fetch_sub(1, Ordering::SeqCst);
                tracing::error!(error = %e, "cannot start a delivery thread");
            }
        }
    }

    /// A reload's settings and limits, for the transactions that start from now on. The pool
    /// and its threads stay: replaced by a new pool, the old one's threads went on with the
    /// work already handed to them beside the new one's, so each reload under load added up
    /// to `destination_concurrency` connections to the next hop (and their memory: RSS rose
    /// by ~900 MiB over 9 reloads in the soak).
    pub fn reconfigure(&self, settings: Arc<ClientSettings>, limits: &DeliveryLimits) {
        let s = &self.shared;
        *lock(&s.settings) = settings;
        s.limit.store(limits.destination_concurrency, Ordering::SeqCst);
        *lock(&s.idle) = Duration::from_secs(limits.relay_idle_secs);
        *lock(&s.dead_for) = limits.destination_dead();
    }

    /// Messages waiting for a free connection.
    pub fn waiting(&self) -> usize {
        self.tx.len()
    }

    pub fn threads(&self) -> usize {
        self.shared.threads.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

/// A delivery thread: take work, deliver it over the connection kept from the last, until
/// idle for `idle` (then the connection is closed and the thread ends) or told to stop.
fn run(s: &Shared) {
    let mut conn: Option<Pooled> = None;
    loop {
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        let idle = *lock(&s.idle);
        let wait = if conn.is_some() {
            idle
        } else {
            idle.max(Duration::from_secs(1))
        };
        match s.work.recv_timeout(wait) {
            Ok(work) => {
                let outcome = deliver(s, &mut conn, work);
                if s.outcomes.send(outcome).is_err() {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(c) = conn.take() {
                    c.conn.quit();
                    continue;
                }
                s.threads.fetch_sub(1, Ordering::SeqCst);
                // Work sent while the count was still up started no thread: take it.
                if s.work.is_empty() {
                    return;
                }
                s.threads.fetch_add(1, Ordering::SeqCst);
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Some(c) = conn.take() {
        c.conn.quit();
    }
    s.threads.fetch_sub(1, Ordering::SeqCst);
}

/// A kept connection and the settings it was opened with.
struct Pooled {
    conn: Conn,
    settings: Arc<ClientSettings>,
}

/// A poisoned lock (a thread panicked holding it) still holds a whole value: these are
/// replaced whole, never left half-written.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One work item: a connection (kept or new), the transaction, each recipient's reply.
fn deliver(s: &Shared, conn: &mut Option<Pooled>, work: Work) -> Outcome {
    let defer_all = |reply: Reply, attempt: Attempt| Outcome {
        id: work.id.clone(),
        dest: s.dest.clone(),
        replies: work.rcpts.iter().map(|(i, _)| (*i, reply.clone())).collect(),
        attempt,
    };
    let mut body = match s.queue.content(&work.id) {
        Ok(body) => body,
        Err(e) => {
            // Deleted meanwhile (`queue delete`), or unreadable: nothing is sent.
            let reply = Reply::local(451, format!("4.3.0 cannot read the message: {e}"));
            return defer_all(reply, Attempt::Unread);
        }
    };
    let settings = lock(&s.settings).clone();
    if conn
        .as_ref()
        .is_some_and(|c| !Arc::ptr_eq(&c.settings, &settings))
    {
        // Opened before a reload: its TLS and EHLO name may no longer be what is configured.
        if let Some(c) = conn.take() {
            c.conn.quit();
        }
    }
    if conn.is_none() {
        if let Some((since, until, reply)) = s.dead.lock().map_or(None, |d| d.clone()) {
            if work.queued <= since && Instant::now() < until {
                return defer_all(reply, Attempt::Dead);
            }
        }
        match Conn::open(&s.dest, &settings) {
            Ok(c) => {
                s.connections.fetch_add(1, Ordering::Relaxed);
                // Alive again: what waits here is tried, not deferred with the old error.
                if let Ok(mut dead) = s.dead.lock() {
                    *dead = None;
                }
                *conn = Some(Pooled { conn: c, settings });
            }
            Err(f) => {
                let reply = failure_reply(&s.dest, &f, "connect to");
                if let Ok(mut dead) = s.dead.lock() {
                    let now = Instant::now();
                    *dead = Some((now, now + *lock(&s.dead_for), reply.clone()));
                }
                return defer_all(reply, Attempt::ConnectFailed);
            }
        }
    }
    let Some(Pooled { conn: c, .. }) = conn.as_mut() else {
        return defer_all(Reply::local(451, "4.4.1 no connection"), Attempt::ConnectFailed);
    };
    let msg = Message {
        from: &work.from,
        size: work.size,
        eight_bit: work.eight_bit,
        smtputf8: work.smtputf8,
    };
    let addrs: Vec<&[u8]> = work.rcpts.iter().map(|(_, a)| a.as_slice()).collect();
    match transfer::send(c, &msg, &addrs, &mut body) {
        Ok(replies) => Outcome {
            id: work.id.clone(),
            dest: s.dest.clone(),
            replies: work.rcpts.iter().map(|(i, _)| *i).zip(replies).collect(),
            attempt: Attempt::Answered,
        },
        Err(f) => {
            *conn = None;
            defer_all(failure_reply(&s.dest, &f, "lost connection with"), Attempt::Lost)
        }
    }
}

/// A connection failure as the deferred recipients' reply: the next hop's own refusal keeps
/// its text, in class 4 (another attempt may find it willing).
fn failure_reply(dest: &Dest, f: &Failure, what: &str) -> Reply {
    match f {
        Failure::Refused(r) if r.class() == 4 => r.clone(),
        Failure::Refused(r) => Reply::local(451, format!("4.4.0 {dest} refused the session: {r}")),
        Failure::Io(e)
            if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            Reply::local(451, format!("4.4.2 {what} {dest}: timed out"))
        }
        Failure::Io(e) => Reply::local(451, format!("4.4.1 {what} {dest}: {e}")),
        Failure::Protocol(e) => Reply::local(451, format!("4.5.0 {what} {dest}: {e}")),
    }
}
