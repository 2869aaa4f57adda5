//! The load engine: worker threads that run scripted SMTP sessions over non-blocking sockets.
//!
//! Each worker owns a mio `Poll` and a fixed set of connection slots. Closed loop keeps
//! every slot busy with back-to-back sessions; open loop starts sessions on a fixed
//! schedule and, like wrk2, measures latency from when each session should have started,
//! so a slow server cannot hide its stalls by slowing the client down (coordinated
//! omission). Every reply is checked against the script before the next write.
//!
//! This file has the worker's loop and a session's start and end; beside it: `conn` (a
//! slot's state), `timeline` (the worker's clock), `io` (sockets, writes, reads), `replies`
//! (checking replies against the plan), `check` (what each expectation accepts),
//! `tls_layer` (rustls between socket and script), `drip` and `timer` (slowloris octets on
//! the worker's timer).

mod check;
mod conn;
mod drip;
mod io;
mod replies;
mod timeline;
mod timer;
mod tls_layer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::{Events, Interest, Poll, Token};
use ringmx_loadgen::reply::Caps;

use crate::cli::Config;
use crate::script::{self, BigMsg, Corpus, Expect, Rng, ScriptOpts};
use crate::stats::{Counters, PhaseHists};
use crate::tls;
use crate::vocab::{Class, Outcome, Phase, CLASSES, STEP_COUNT};
use conn::{micros, Conn, Failure, State};
use timeline::Timeline;
use timer::Timers;

/// Transcripts saved per class and step (the first few are enough to debug a server).
pub const TRANSCRIPTS_PER_STEP: u32 = 5;

/// State shared by all workers of one run.
pub struct Shared {
    pub cfg: Config,
    pub corpus: Arc<Corpus>,
    pub start: Instant,
    /// No session starts at or after this.
    pub stop_at: Option<Instant>,
    /// Sessions still allowed to start (`--sessions`).
    pub sessions_left: Option<AtomicI64>,
    /// Transcripts saved so far, by class and step.
    pub saved: Vec<AtomicU32>,
    pub mismatch_dir: Option<PathBuf>,
}

/// What a worker sends to the collector: everything measured in one interval.
pub struct Report {
    pub worker: usize,
    /// Whole seconds since the run start at which this interval began.
    pub interval: u64,
    pub corrected: PhaseHists,
    /// Latency from the actual send time; `None` in closed loop where it equals `corrected`.
    pub uncorrected: Option<PhaseHists>,
    pub counters: Counters,
    /// Extensions from the first EHLO reply this worker saw.
    pub caps: Option<Caps>,
    /// The end-of-data replies of the messages acknowledged in the interval, a line each
    /// (with `--out`: acked.txt).
    pub acked: Vec<u8>,
    /// Last report of this worker.
    pub done: Option<Done>,
}

/// What a worker's last report adds.
pub struct Done {
    /// Open loop: the sessions scheduled that never got a slot.
    pub backlog: u64,
    /// Where the worker's part of the run ends for its rates: when its last session ended,
    /// but not before it stopped starting sessions. The drain's wait for sessions it then
    /// aborts (a slowloris the server still holds) is no time the server served anything:
    /// counted in, a 10 s step with a 5 s `--timeout` would report two thirds of its rate.
    pub end: Instant,
}

struct Worker {
    id: usize,
    shared: Arc<Shared>,
    poll: Poll,
    conns: Vec<Conn>,
    free: Vec<usize>,
    rng: Rng,
    opts: ScriptOpts,
    corrected: PhaseHists,
    uncorrected: Option<PhaseHists>,
    counters: Counters,
    caps_seen: Option<Caps>,
    caps_reported: bool,
    source_next: usize,
    record: bool,
    /// Every TLS session's client (resuming with `--tls-resume`).
    tls: Option<tls::Client>,
    /// The client of the tls class's sessions that try to resume (`--tls-resume-share`),
    /// keeping its own session cache.
    tls_resuming: Option<tls::Client>,
    timers: Timers,
    /// The bigmsg pieces for the last SIZE limit seen.
    big: Option<Arc<BigMsg>>,
    /// acked.txt lines of this interval, when `--out` is set.
    acked: Option<Vec<u8>>,
    /// When a session last ended other than by the drain's abort.
    last_end: Instant,
}

pub fn run_worker(id: usize, shared: Arc<Shared>, slots: usize, tx: Sender<Report>) -> std::io::Result<()> {
    let now = Instant::now();
    let cfg = &shared.cfg;
    let open_loop = cfg.rate.is_some();
    let client = |o, resume| tls::Client::with_resumption(o, resume).map_err(std::io::Error::other);
    let (tls, tls_resuming) = match &cfg.tls {
        Some(o) if o.resume_share > 0 && !o.resume => (Some(client(o, false)?), Some(client(o, true)?)),
        Some(o) => (Some(client(o, o.resume)?), None),
        None => (None, None),
    };
    let mut w = Worker {
        id,
        poll: Poll::new()?,
        conns: (0..slots).map(|_| Conn::new(now)).collect(),
        free: (0..slots).rev().collect(),
        rng: Rng::new(cfg.seed.wrapping_mul(1_000_003).wrapping_add(id as u64)),
        opts: ScriptOpts {
            pipelining: cfg.pipelining,
            bdat: cfg.bdat,
            messages_per_session: cfg.messages_per_session,
            rcpts: cfg.rcpts,
            body_count: shared.corpus.body_count(),
            tls_resume_share: cfg.tls.as_ref().map_or(0, |t| t.resume_share),
        },
        corrected: PhaseHists::new(),
        uncorrected: open_loop.then(PhaseHists::new),
        counters: Counters::default(),
        caps_seen: None,
        caps_reported: false,
        source_next: id,
        record: shared.mismatch_dir.is_some(),
        tls,
        tls_resuming,
        timers: Timers::new(slots),
        big: None,
        acked: cfg.out.is_some().then(Vec::new),
        last_end: shared.start,
        shared,
    };
    w.run(&tx)
}

impl Worker {
    fn run(&mut self, tx: &Sender<Report>) -> std::io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let mut events = Events::with_capacity(1024);
        let mut t = Timeline::new(&shared.cfg, self.id, shared.start);
        loop {
            let now = Instant::now();
            if t.starting && shared.stop_at.is_some_and(|s| now >= s) {
                t.starting = false;
            }
            if t.starting {
                self.start_due(&mut t, now);
            }
            if !t.starting && self.drained(&mut t, now) {
                break;
            }
            if now >= t.next_report {
                self.report(tx, t.interval, None);
                t.interval += 1;
                t.next_report += Duration::from_secs(1);
            }
            if now >= t.next_scan {
                self.expire(now);
                t.next_scan = now + t.scan_every;
            }
            self.run_timers(now);
            let timeout = self.wake_at(&t).saturating_duration_since(Instant::now());
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.on_events(&events);
        }
        let backlog = t.backlog(shared.stop_at);
        let stopped_starting = t.drain_until.map_or(self.last_end, |d| d - shared.cfg.timeout);
        let end = self.last_end.max(stopped_starting);
        self.report(tx, t.interval, Some(Done { backlog, end }));
        Ok(())
    }

    /// Start the sessions that are due: in open loop those whose start time has come (while
    /// a slot is free), in closed loop one per free slot.
    fn start_due(&mut self, t: &mut Timeline, now: Instant) {
        if t.period.is_some() {
            while t.next_start <= now {
                let Some(slot) = self.free.pop() else { break };
                if !self.take_session() {
                    self.free.push(slot);
                    t.starting = false;
                    t.exhausted = true;
                    break;
                }
                self.start_session(slot, t.next_start, now);
                t.scheduled += 1;
                t.next_start = t.at(t.scheduled);
            }
        } else {
            while let Some(slot) = self.free.pop() {
                if !self.take_session() {
                    self.free.push(slot);
                    t.starting = false;
                    break;
                }
                self.start_session(slot, now, now);
            }
        }
    }

    /// Once no session may start: true when every session has ended, or when the drain
    /// time (one `--timeout`) has run out, after counting those still running as aborted.
    fn drained(&mut self, t: &mut Timeline, now: Instant) -> bool {
        let until = *t.drain_until.get_or_insert(now + self.shared.cfg.timeout);
        if self.free.len() == self.conns.len() {
            return true;
        }
        if now >= until {
            for slot in 0..self.conns.len() {
                if self.conns[slot].state != State::Idle {
                    self.end_session(slot, Some(Failure::Aborted), now);
                }
            }
            return true;
        }
        false
    }

    /// The earliest of the next report, timeout scan, scheduled start, drain end and stop.
    fn wake_at(&self, t: &Timeline) -> Instant {
        let mut wake = t.next_report.min(t.next_scan);
        if t.starting && t.period.is_some() && !self.free.is_empty() {
            wake = wake.min(t.next_start);
        }
        if let Some(d) = t.drain_until {
            wake = wake.min(d);
        }
        if let Some(s) = self.shared.stop_at.filter(|_| t.starting) {
            wake = wake.min(s);
        }
        if let Some(d) = self.timers.next_at() {
            wake = wake.min(d);
        }
        wake
    }

    fn on_events(&mut self, events: &Events) {
        for ev in events.iter() {
            let slot = ev.token().0;
            let now = Instant::now();
            if self.conns[slot].state == State::Connecting {
                self.finish_connect(slot, now);
            }
            if self.conns[slot].state == State::Running
                && (ev.is_readable() || ev.is_read_closed() || ev.is_error())
            {
                self.on_readable(slot, now, ev.is_read_closed() || ev.is_error());
            }
            if self.conns[slot].state == State::Running && ev.is_writable() && self.wants_flush(slot) {
                self.flush(slot, now);
            }
        }
    }

    fn take_session(&self) -> bool {
        match &self.shared.sessions_left {
            Some(left) => left.fetch_sub(1, Ordering::Relaxed) > 0,
            None => true,
        }
    }

    fn report(&mut self, tx: &Sender<Report>, interval: u64, done: Option<Done>) {
        let caps = if self.caps_reported { None } else { self.caps_seen };
        self.caps_reported |= caps.is_some();
        let r = Report {
            worker: self.id,
            interval,
            corrected: std::mem::replace(&mut self.corrected, PhaseHists::new()),
            uncorrected: self
                .uncorrected
                .as_mut()
                .map(|u| std::mem::replace(u, PhaseHists::new())),
            counters: std::mem::take(&mut self.counters),
            caps,
            acked: self.acked.as_mut().map(std::mem::take).unwrap_or_default(),
            done,
        };
        // The collector outlives the workers; a send error only means it gave up early.
        let _ = tx.send(r);
    }

    fn record(&mut self, phase: Phase, uncorrected_us: u64, lag_us: u64) {
        self.corrected.0[phase as usize].saturating_record(uncorrected_us.saturating_add(lag_us).max(1));
        if let Some(u) = &mut self.uncorrected {
            u.0[phase as usize].saturating_record(uncorrected_us.max(1));
        }
    }

    fn start_session(&mut self, slot: usize, intended: Instant, now: Instant) {
        let kind = script::choose(&self.shared.cfg.mix.0, &self.opts, &mut self.rng);
        self.counters.sessions_started += 1;
        let timeout = self.shared.cfg.timeout;
        let c = &mut self.conns[slot];
        c.generation = c.generation.wrapping_add(1);
        c.kind = kind;
        c.caps = Caps::default();
        script::prelude(kind, &mut c.plan);
        c.batch = 0;
        c.sent = 0;
        c.acked = 0;
        c.written = 0;
        c.batch_len = 0;
        c.in_head = 0;
        c.in_len = 0;
        c.intended = intended;
        c.started = now;
        c.lag_us = micros(now.saturating_duration_since(intended));
        c.deadline = now + timeout;
        c.transcript.clear();
        c.tls = None;
        c.handshaking = false;
        c.big = None;
        c.dripping = false;
        c.drip_pos = 0;
        c.saw_452 = false;
        c.state = State::Connecting;
        match self.open_socket() {
            Ok(mut s) => {
                match self.poll.registry().register(
                    &mut s,
                    Token(slot),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    Ok(()) => self.conns[slot].stream = Some(s),
                    Err(_) => self.end_session(slot, Some(Failure::Refused), now),
                }
            }
            Err(e) => {
                let f = if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                    Failure::Refused
                } else {
                    Failure::Reset
                };
                self.end_session(slot, Some(f), now);
            }
        }
    }

    fn end_session(&mut self, slot: usize, failure: Option<Failure>, now: Instant) {
        let c = &mut self.conns[slot];
        if c.state == State::Idle {
            return;
        }
        if let Some(mut s) = c.stream.take() {
            // Dropping closes the socket; epoll forgets it then, but say so explicitly.
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.state = State::Idle;
        c.dripping = false;
        let (kind, intended, started) = (c.kind, c.intended, c.started);
        // A slowloris session the server closed without a reply.
        let silent = c.plan.get(c.acked).is_some_and(|x| x.expect == Expect::Held);
        let cc = &mut self.counters.class[kind.class as usize];
        cc.sessions += 1;
        cc.variants[usize::from(kind.variant)] += 1;
        match failure {
            None => {
                cc.ok += 1;
                // How long a slowloris connection was held is no session latency: its own phase.
                let phase = if kind.class == Class::Slowloris {
                    cc.outcomes[Outcome::SlowlorisClosed.index()] += u64::from(silent);
                    Phase::Held
                } else {
                    Phase::Session
                };
                self.corrected.0[phase as usize].saturating_record(micros(now - intended).max(1));
                if let Some(u) = &mut self.uncorrected {
                    u.0[phase as usize].saturating_record(micros(now - started).max(1));
                }
            }
            Some(Failure::Mismatch) => cc.mismatch += 1,
            Some(Failure::Timeout) => cc.timeout += 1,
            Some(Failure::Reset) => cc.reset += 1,
            Some(Failure::Refused) => cc.refused += 1,
            Some(Failure::Tls) => cc.tls += 1,
            Some(Failure::Aborted) => cc.aborted += 1,
        }
        if failure != Some(Failure::Aborted) {
            self.last_end = now;
        }
        self.free.push(slot);
    }

    fn outcome(&mut self, o: Outcome) {
        self.counters.class[o.class() as usize].outcomes[o.index()] += 1;
    }
}

/// Slots per worker so that `total` connections are spread evenly.
pub fn split_slots(total: usize, threads: usize) -> Vec<usize> {
    (0..threads)
        .map(|i| total / threads + usize::from(i < total % threads))
        .collect()
}

pub fn saved_counters() -> Vec<AtomicU32> {
    (0..CLASSES.len() * STEP_COUNT)
        .map(|_| AtomicU32::new(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_split_evenly() {
        assert_eq!(split_slots(10, 3), vec![4, 3, 3]);
        assert_eq!(split_slots(2, 2), vec![1, 1]);
        assert_eq!(split_slots(7, 1), vec![7]);
    }
}
