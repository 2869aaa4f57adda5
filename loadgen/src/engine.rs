//! The load engine: worker threads that run scripted SMTP sessions over non-blocking sockets.
//!
//! Each worker owns a mio `Poll` and a fixed set of connection slots. Closed loop keeps
//! every slot busy with back-to-back sessions; open loop starts sessions on a fixed
//! schedule and, like wrk2, measures latency from when each session should have started,
//! so a slow server cannot hide its stalls by slowing the client down (coordinated
//! omission). Every reply is checked against the script before the next write.

use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use ringmx_loadgen::reply::{ehlo_caps, parse_reply, Caps, Parse, Reply};

use crate::cli::Config;
use crate::script::{self, Cmd, Corpus, Expect, Piece, Rng, ScriptOpts, SessionKind};
use crate::stats::{Counters, PhaseHists};
use crate::tls;
use crate::vocab::{Class, Phase, Step, TlsMode, CLASSES, STEP_COUNT};

/// Transcripts saved per class and step (the first few are enough to debug a server).
pub const TRANSCRIPTS_PER_STEP: u32 = 5;
/// Cap on a transcript kept in memory per connection.
const TRANSCRIPT_CAP: usize = 32 * 1024;
/// Pieces longer than this are shown shortened in transcripts.
const TRANSCRIPT_PIECE: usize = 240;
/// Initial reply buffer; grows only for unusually long multi-line replies.
const INBUF: usize = 8192;
/// Most pieces in one write: MAIL + 100 RCPT (the --rcpts cap) + DATA/BDAT, with room.
const MAX_IOV: usize = 128;
/// Plaintext handed to rustls at a time: one TLS record's worth, so its send buffer stays
/// bounded however large the message.
const TLS_CHUNK: usize = 16 * 1024;

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
    /// Last report of this worker; carries the sessions still queued in open loop.
    pub done: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Connecting,
    Running,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Mismatch,
    Timeout,
    Reset,
    Refused,
    /// The TLS handshake failed or the TLS layer broke.
    Tls,
    /// Still running when the run's drain time ran out: not the server's fault.
    Aborted,
}

struct Conn {
    stream: Option<TcpStream>,
    state: State,
    kind: SessionKind,
    caps: Caps,
    plan: Vec<Cmd>,
    /// First command of the batch being written, next command to write, next to be answered.
    batch: usize,
    sent: usize,
    acked: usize,
    /// Octets of the current batch already written.
    written: usize,
    batch_len: usize,
    inbuf: Vec<u8>,
    in_head: usize,
    in_len: usize,
    intended: Instant,
    started: Instant,
    /// How late the session started against its schedule, added to every phase (open loop).
    lag_us: u64,
    batch_at: Instant,
    deadline: Instant,
    transcript: Vec<u8>,
    /// The session's TLS layer once started; the script waits while it handshakes.
    tls: Option<rustls::ClientConnection>,
    handshaking: bool,
    tls_at: Instant,
}

impl Conn {
    /// Free the consumed head of the reply buffer, or grow it when a reply fills it.
    fn make_room(&mut self) {
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

    fn new(now: Instant) -> Conn {
        Conn {
            stream: None,
            state: State::Idle,
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
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

/// A worker's clock: when sessions start (open loop), when it reports and scans for
/// timeouts, and whether it is still starting sessions or draining.
struct Timeline {
    start: Instant,
    /// Open loop: this worker's share of the schedule, interleaved with the others.
    period: Option<Duration>,
    offset: f64,
    period_s: f64,
    scheduled: u64,
    next_start: Instant,
    /// `--sessions` ran out (so no session was left unstarted for lack of a slot).
    exhausted: bool,
    interval: u64,
    next_report: Instant,
    scan_every: Duration,
    next_scan: Instant,
    starting: bool,
    drain_until: Option<Instant>,
}

impl Timeline {
    fn new(cfg: &Config, id: usize, start: Instant) -> Timeline {
        let period = cfg.rate.map(|r| Duration::from_secs_f64(cfg.threads as f64 / r));
        let scan_every = (cfg.timeout / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
        let mut t = Timeline {
            start,
            period,
            offset: cfg.rate.map_or(0.0, |r| id as f64 / r),
            period_s: period.map_or(0.0, |p| p.as_secs_f64()),
            scheduled: 0,
            next_start: start,
            exhausted: false,
            interval: 0,
            next_report: start + Duration::from_secs(1),
            scan_every,
            next_scan: start + scan_every,
            starting: true,
            drain_until: None,
        };
        t.next_start = t.at(0);
        t
    }

    /// Start time of this worker's session `k`. Computed from the index, not accumulated,
    /// so float rounding cannot drift the schedule.
    fn at(&self, k: u64) -> Instant {
        self.start + Duration::from_secs_f64(self.offset + k as f64 * self.period_s)
    }

    /// In open loop, sessions whose start time passed without a free slot never ran:
    /// their latency is unknown and at least the backlog, so report how many.
    fn backlog(&self, stop_at: Option<Instant>) -> u64 {
        match (self.period, stop_at) {
            (Some(_), Some(stop)) if !self.exhausted => {
                let window = (stop - self.start).as_secs_f64() - self.offset;
                let due = ((window / self.period_s) - 1e-9).ceil().max(0.0) as u64;
                due.saturating_sub(self.scheduled)
            }
            _ => 0,
        }
    }
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
    tls: Option<tls::Client>,
}

pub fn run_worker(id: usize, shared: Arc<Shared>, slots: usize, tx: Sender<Report>) -> io::Result<()> {
    let now = Instant::now();
    let cfg = &shared.cfg;
    let open_loop = cfg.rate.is_some();
    let tls = match &cfg.tls {
        Some(o) => Some(tls::Client::new(o).map_err(io::Error::other)?),
        None => None,
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
        },
        corrected: PhaseHists::new(),
        uncorrected: open_loop.then(PhaseHists::new),
        counters: Counters::default(),
        caps_seen: None,
        caps_reported: false,
        source_next: id,
        record: shared.mismatch_dir.is_some(),
        tls,
        shared,
    };
    w.run(&tx)
}

impl Worker {
    fn run(&mut self, tx: &Sender<Report>) -> io::Result<()> {
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
            let timeout = self.wake_at(&t).saturating_duration_since(Instant::now());
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.on_events(&events);
        }
        let backlog = t.backlog(shared.stop_at);
        self.report(tx, t.interval, Some(backlog));
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

    fn report(&mut self, tx: &Sender<Report>, interval: u64, done: Option<u64>) {
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

    fn open_socket(&mut self) -> io::Result<TcpStream> {
        let cfg = &self.shared.cfg;
        let target = cfg.target;
        let sock = Socket::new(
            Domain::for_address(target),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        // Commands are small and latency-bound: never let Nagle hold one back.
        sock.set_tcp_nodelay(true)?;
        if !cfg.source_ips.is_empty() {
            let ip: IpAddr = cfg.source_ips[self.source_next % cfg.source_ips.len()];
            self.source_next = self.source_next.wrapping_add(1);
            set_bind_no_port(&sock);
            sock.bind(&SocketAddr::new(ip, 0).into())?;
        }
        match sock.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(sock.into()))
    }

    fn start_session(&mut self, slot: usize, intended: Instant, now: Instant) {
        let kind = script::choose(&self.shared.cfg.mix.0, &mut self.rng);
        self.counters.sessions_started += 1;
        let timeout = self.shared.cfg.timeout;
        let c = &mut self.conns[slot];
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

    fn finish_connect(&mut self, slot: usize, now: Instant) {
        let c = &mut self.conns[slot];
        let Some(s) = &c.stream else { return };
        match s.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                let f = if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                    Failure::Refused
                } else {
                    Failure::Reset
                };
                self.end_session(slot, Some(f), now);
                return;
            }
        }
        match s.peer_addr() {
            Ok(_) => {}
            // Spurious wake-up: the handshake has not finished yet.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(_) => {
                self.end_session(slot, Some(Failure::Refused), now);
                return;
            }
        }
        let (lag, up) = (c.lag_us, micros(now - c.started));
        c.state = State::Running;
        self.record(Phase::Connect, up, lag);
        if self
            .shared
            .cfg
            .tls
            .as_ref()
            .is_some_and(|t| t.mode == TlsMode::Implicit)
        {
            // RFC 8314 3.3: the handshake comes first; the banner waits for it.
            self.start_tls(slot, now);
        } else {
            // The banner is the first "command": nothing to send, a 220 to wait for.
            self.next_batch(slot, now);
        }
    }

    /// Write the next group of commands: up to and including the next one marked `flush`.
    fn next_batch(&mut self, slot: usize, now: Instant) {
        let corpus = Arc::clone(&self.shared.corpus);
        let c = &mut self.conns[slot];
        c.batch = c.sent;
        let mut len = 0;
        while c.sent < c.plan.len() {
            let cmd = c.plan[c.sent];
            len += corpus.bytes(cmd.piece).len();
            c.sent += 1;
            if cmd.flush {
                break;
            }
        }
        c.batch_len = len;
        c.written = 0;
        c.batch_at = now;
        c.deadline = now + self.shared.cfg.timeout;
        if self.record {
            for i in c.batch..c.sent {
                let b = corpus.bytes(c.plan[i].piece);
                if !b.is_empty() {
                    append_transcript(&mut c.transcript, b"C: ", b);
                }
            }
        }
        if len > 0 {
            self.flush(slot, now);
        }
    }

    /// Write as much of the current batch as the socket takes, in one writev.
    fn flush(&mut self, slot: usize, now: Instant) {
        if self.conns[slot].tls.is_some() {
            self.flush_tls(slot, now);
            return;
        }
        let corpus = Arc::clone(&self.shared.corpus);
        loop {
            let c = &mut self.conns[slot];
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            let mut skip = c.written;
            for cmd in &c.plan[c.batch..c.sent] {
                let b = corpus.bytes(cmd.piece);
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                iov[n] = IoSlice::new(&b[skip..]);
                skip = 0;
                n += 1;
                if n == MAX_IOV {
                    break;
                }
            }
            match stream.write_vectored(&iov[..n]) {
                Ok(k) => {
                    c.written += k;
                    self.counters.bytes_sent += k as u64;
                    if c.written >= c.batch_len {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // A server that rejects a non-SMTP client may close before it has
                    // read everything we sent; that is the expected ending there.
                    if is_reset(&e) && self.close_expected(slot) {
                        self.end_session(slot, None, now);
                    } else {
                        self.end_session(slot, Some(Failure::Reset), now);
                    }
                    return;
                }
            }
        }
    }

    fn close_expected(&self, slot: usize) -> bool {
        let c = &self.conns[slot];
        c.plan
            .get(c.acked)
            .is_some_and(|cmd| matches!(cmd.expect, Expect::FiveOrClose | Expect::Close))
    }

    /// Read and check replies. `closing`: the event also reported the peer's FIN, which
    /// will not be signalled again, so read until EOF rather than stopping at a short read.
    fn on_readable(&mut self, slot: usize, now: Instant, closing: bool) {
        if self.conns[slot].tls.is_some() {
            self.on_readable_tls(slot, now);
            return;
        }
        loop {
            let c = &mut self.conns[slot];
            c.make_room();
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            let room = c.inbuf.len() - c.in_len;
            match stream.read(&mut c.inbuf[c.in_len..]) {
                Ok(0) => {
                    let ok = self.close_expected(slot);
                    self.end_session(slot, if ok { None } else { Some(Failure::Reset) }, now);
                    return;
                }
                Ok(n) => {
                    c.in_len += n;
                    self.counters.bytes_received += n as u64;
                    if !self.process_replies(slot, now) {
                        return;
                    }
                    if self.conns[slot].tls.is_some() {
                        // A 220 to STARTTLS: what follows is the server's handshake.
                        self.on_readable_tls(slot, now);
                        return;
                    }
                    // Edge-triggered: a short read means the socket buffer is drained
                    // (any later data or FIN raises a new edge).
                    if n < room && !closing {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let ok = is_reset(&e) && self.close_expected(slot);
                    self.end_session(slot, if ok { None } else { Some(Failure::Reset) }, now);
                    return;
                }
            }
        }
    }

    /// Check every complete reply buffered. Returns false once the session has ended.
    fn process_replies(&mut self, slot: usize, now: Instant) -> bool {
        loop {
            let c = &mut self.conns[slot];
            let buf = &c.inbuf[c.in_head..c.in_len];
            let reply = match parse_reply(buf) {
                Parse::Incomplete => return true,
                Parse::Invalid(why) => {
                    let step = c.plan.get(c.acked).map_or(Step::Quit, |x| x.step);
                    self.mismatch(slot, step, why, now);
                    return false;
                }
                Parse::Complete(r) => r,
            };
            if self.record {
                let (h, l) = (c.in_head, reply.len);
                let c = &mut self.conns[slot];
                let (t, b) = (&mut c.transcript, &c.inbuf[h..h + l]);
                append_transcript(t, b"S: ", b);
            }
            let c = &mut self.conns[slot];
            let reply_start = c.in_head;
            c.in_head += reply.len;
            if c.acked >= c.sent {
                let step = c
                    .plan
                    .get(c.acked.min(c.plan.len().saturating_sub(1)))
                    .map_or(Step::Quit, |x| x.step);
                self.mismatch(slot, step, "reply to no command (unsolicited or extra)", now);
                return false;
            }
            let cmd = c.plan[c.acked];
            if !self.reply_matches(slot, cmd, reply, now) {
                return false;
            }
            if !self.accept(slot, cmd, reply_start..reply_start + reply.len, now) {
                return false;
            }
            let c = &self.conns[slot];
            if c.acked == c.plan.len() {
                self.end_session(slot, None, now);
                return false;
            }
            if c.handshaking {
                return true;
            }
            if c.acked == c.sent {
                self.next_batch(slot, now);
                if self.conns[slot].state != State::Running {
                    return false;
                }
            }
        }
    }

    /// Whether `reply` is what `cmd` expects; a mismatch ends the session.
    fn reply_matches(&mut self, slot: usize, cmd: Cmd, reply: Reply, now: Instant) -> bool {
        let class = (reply.code / 100) as u8;
        let ok = match cmd.expect {
            Expect::Code(code) => reply.code == code,
            Expect::Class(d) => class == d,
            Expect::FiveOrClose => class == 5,
            Expect::Close => false,
        };
        if !ok {
            self.mismatch(slot, cmd.step, "unexpected reply code", now);
            return false;
        }
        // RFC 3463 / RFC 2034: once advertised, every 2xx/4xx/5xx reply after EHLO
        // carries an enhanced code whose class matches the reply's first digit.
        if self.conns[slot].caps.enhancedstatuscodes && matches!(class, 2 | 4 | 5) {
            match reply.enhanced_class {
                Some(e) if e != class => {
                    self.mismatch(
                        slot,
                        cmd.step,
                        "enhanced status class differs from reply code",
                        now,
                    );
                    return false;
                }
                Some(_) => {}
                None => self.counters.enhanced_missing += 1,
            }
        }
        true
    }

    /// Count and time the expected reply to `cmd`, in `inbuf[reply]`; the EHLO reply's
    /// extensions decide the rest of the script, a 220 to STARTTLS starts the handshake.
    /// Returns false once the session has ended.
    fn accept(&mut self, slot: usize, cmd: Cmd, reply: Range<usize>, now: Instant) -> bool {
        let c = &mut self.conns[slot];
        c.acked += 1;
        c.deadline = now + self.shared.cfg.timeout;
        let (lag, took) = (c.lag_us, micros(now - c.batch_at));
        if cmd.piece != Piece::Nothing {
            self.counters.commands += 1;
        }
        if matches!(cmd.step, Step::Eod | Step::Bdat) {
            self.counters.messages += 1;
        }
        if let Some(p) = cmd.phase {
            self.record(p, took, lag);
        }
        // The STARTTLS command's 220 starts the handshake; the starttls class's QUIT is counted
        // under the same step but its 221 ends the session.
        if matches!(cmd.piece, Piece::Starttls | Piece::StarttlsNoop) {
            if self.conns[slot].in_head < self.conns[slot].in_len {
                // RFC 3207 4: nothing may follow the 220 in plaintext.
                self.mismatch(slot, Step::Starttls, "plaintext after the 220 to STARTTLS", now);
                return false;
            }
            // RFC 3207 4.2: the client forgets what the first EHLO told it, so the second
            // EHLO's reply is exempt from the enhanced-code check as the first one was.
            self.conns[slot].caps = Caps::default();
            self.start_tls(slot, now);
        }
        if cmd.step == Step::Ehlo {
            return self.after_ehlo(slot, reply, now);
        }
        true
    }

    /// The EHLO reply's extensions decide the rest of the script: STARTTLS first when
    /// `--tls starttls` and not yet in TLS, else the class's commands.
    fn after_ehlo(&mut self, slot: usize, reply: Range<usize>, now: Instant) -> bool {
        let starttls = self
            .shared
            .cfg
            .tls
            .as_ref()
            .is_some_and(|t| t.mode == TlsMode::Starttls);
        let c = &mut self.conns[slot];
        c.caps = ehlo_caps(&c.inbuf[reply]);
        let (in_tls, offered) = (c.tls.is_some(), c.caps.starttls);
        if starttls && !in_tls {
            if !offered {
                self.mismatch(slot, Step::Ehlo, "STARTTLS not offered", now);
                return false;
            }
            script::starttls(c.kind, &mut c.plan);
            return true;
        }
        if in_tls && offered && starttls {
            // RFC 3207 4.2: a server must not offer STARTTLS again once in TLS.
            self.mismatch(slot, Step::Ehlo, "STARTTLS offered again inside TLS", now);
            return false;
        }
        self.caps_seen.get_or_insert(c.caps);
        script::after_ehlo(c.kind, c.caps, &self.opts, &mut self.rng, &mut c.plan);
        true
    }

    fn expire(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let c = &self.conns[slot];
            if c.state != State::Idle && now >= c.deadline {
                if c.state == State::Running && c.plan.get(c.acked).is_some_and(|x| x.expect == Expect::Close)
                {
                    // The server answered but never closed: that breaks the rule for
                    // non-SMTP input, it is not a slow server.
                    self.mismatch(slot, Step::Close, "connection not closed within the timeout", now);
                } else {
                    self.end_session(slot, Some(Failure::Timeout), now);
                }
            }
        }
    }

    fn mismatch(&mut self, slot: usize, step: Step, why: &str, now: Instant) {
        let class = self.conns[slot].kind.class;
        self.counters.mismatch_steps[class as usize][step as usize] += 1;
        if let Some(dir) = &self.shared.mismatch_dir {
            let i = class as usize * STEP_COUNT + step as usize;
            let n = self.shared.saved[i].fetch_add(1, Ordering::Relaxed);
            if n < TRANSCRIPTS_PER_STEP {
                let c = &self.conns[slot];
                let expected = c
                    .plan
                    .iter()
                    .find(|x| x.step == step)
                    .map_or("-".into(), |x| x.expect.describe());
                let mut text = format!(
                    "class: {}\nstep: {}\nexpected: {}\nproblem: {}\nunparsed: {:?}\n\n",
                    class.name(),
                    step.name(),
                    expected,
                    why,
                    String::from_utf8_lossy(&c.inbuf[c.in_head..c.in_len]),
                )
                .into_bytes();
                text.extend_from_slice(&c.transcript);
                let path = dir.join(format!("{}-{}-{}.txt", class.name(), step.name(), n + 1));
                // Losing a transcript must not stop the run; the counters still count it.
                let _ = std::fs::write(path, text);
            }
        }
        self.end_session(slot, Some(Failure::Mismatch), now);
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
        let (class, intended, started) = (c.kind.class as usize, c.intended, c.started);
        let cc = &mut self.counters.class[class];
        cc.sessions += 1;
        match failure {
            None => {
                cc.ok += 1;
                self.corrected.0[Phase::Session as usize].saturating_record(micros(now - intended).max(1));
                if let Some(u) = &mut self.uncorrected {
                    u.0[Phase::Session as usize].saturating_record(micros(now - started).max(1));
                }
            }
            Some(Failure::Mismatch) => cc.mismatch += 1,
            Some(Failure::Timeout) => cc.timeout += 1,
            Some(Failure::Reset) => cc.reset += 1,
            Some(Failure::Refused) => cc.refused += 1,
            Some(Failure::Tls) => cc.tls += 1,
            Some(Failure::Aborted) => cc.aborted += 1,
        }
        self.free.push(slot);
    }
}

/// The TLS side of a session: rustls between the socket and the script.
impl Worker {
    /// Whether a writable socket has something to take: the batch's rest or TLS records.
    fn wants_flush(&self, slot: usize) -> bool {
        let c = &self.conns[slot];
        c.written < c.batch_len || c.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Begin the handshake: the ClientHello goes out now, the script waits for its end.
    fn start_tls(&mut self, slot: usize, now: Instant) {
        let Some(client) = &self.tls else { return };
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
    fn flush_tls(&mut self, slot: usize, now: Instant) {
        let corpus = Arc::clone(&self.shared.corpus);
        loop {
            let c = &mut self.conns[slot];
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
                let b = corpus.bytes(cmd.piece);
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
    fn on_readable_tls(&mut self, slot: usize, now: Instant) {
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
        self.counters.tls_handshakes += 1;
        self.counters.tls_resumed += u64::from(kind == Some(rustls::HandshakeKind::Resumed));
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

fn append_transcript(t: &mut Vec<u8>, prefix: &[u8], b: &[u8]) {
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

/// Let the kernel pick the source port at connect time rather than at bind time, so
/// each source address can share ports across destinations and reuse TIME_WAIT ports
/// the way a plain connect does (Linux IP_BIND_ADDRESS_NO_PORT, 4.2+).
fn set_bind_no_port(sock: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `sock`; the option value points to a
    // c_int that outlives the call and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // Older kernels lack the option; binding still works, with fewer usable ports.
    let _ = rc;
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
