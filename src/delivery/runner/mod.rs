//! The queue runner: one thread that owns the schedule of every queued message, hands its recipients to their destinations' pools when due, and settles the outcomes: done marks, deferrals with backoff, failures and their notification.
//!
//! It learns of new messages from the committers (each id after its commit) and of the queue
//! at start from [`Queue::list`]; it is the only thread that marks recipients done and that
//! compacts the log, so the two never race. Done marks of one turn are made durable together
//! ([`Queue::mark_done_many`]). A message leaves the spool only once every recipient is done
//! or failed and the notification for the failed ones is committed: at least once, never
//! zero times.
//!
//! Each destination has a [`Health`]: after a failed connection it is dead for
//! `destination_dead_secs`, and its recipients that come due are deferred at once with that
//! connection's error, without reaching the pool; then one probe decides (Postfix's
//! dead-destination marking). A deferral costs this thread a channel send to the state
//! [`Writer`], never a file write, and every turn ends by publishing the queue's size to
//! [`QueueGauges`], which scrapes read without asking.

use super::control::Request;
use super::health::Health;
use super::message::Msg;
use super::pool::{Outcome, Pool};
use super::route::{Dest, Routes};
use super::state::{unix_now, Jitter, State, StateStore, Writer};
use super::stats::{QueueGauges, Stats};
use super::Shared;
use crate::spool::{LogSpool, Queue, Queued, Spool};
use crossbeam_channel::{Receiver, Sender};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

mod attempt;
mod requests;

/// How often the log is compacted.
const COMPACT_EVERY: Duration = Duration::from_secs(30);
/// How often the oldest message's arrival is looked for again (a pass over the schedule) for
/// [`QueueGauges`]; its age itself is computed at each scrape.
const OLDEST_EVERY: Duration = Duration::from_secs(1);

/// How long done marks that could not be written (a full spool file system), or a queued
/// message that could not be read (no descriptor left), wait before they are tried again:
/// often enough that they go on soon after the cause is gone, seldom enough that it costs
/// one failed try and one log line a second, not one per turn.
const MARK_RETRY: Duration = Duration::from_secs(1);

/// What the runner is told.
pub(crate) enum Control {
    Request(Request, Sender<Result<String, String>>),
    /// Stop: finish what is in flight (up to the grace), make its marks, report.
    Stop(Duration),
    /// A reload: the routes and settings for work dispatched from now on.
    Reload(Routes, Shared),
    /// A scrape asks for the counters now, with the queue's size and age and the pools'.
    Snapshot(Sender<Stats>),
}

pub struct Runner {
    queue: Arc<dyn Queue>,
    log: Option<Arc<LogSpool>>,
    /// Read from this thread (a message taken in); written only through `writer`.
    states: StateStore,
    writer: Writer,
    routes: Routes,
    shared: Arc<Shared>,
    pools: HashMap<Arc<Dest>, Pool>,
    /// Kept across reloads (the pools are not): a destination stays dead, and parked work
    /// stays parked, whatever the routes now say.
    health: HashMap<Arc<Dest>, Health>,
    outcomes_tx: Sender<Outcome>,
    outcomes: Receiver<Outcome>,
    committed: Receiver<String>,
    control: Receiver<Control>,
    /// The handle notifications are committed through (its own committer).
    dsn_spool: Spool,
    msgs: HashMap<String, Msg>,
    /// Committed messages beyond `delivery_active_limit`, waiting for room.
    backlog: VecDeque<String>,
    due: BinaryHeap<Reverse<(u64, String)>>,
    /// Done marks not yet durable: this turn's, and those a failed write left behind. Their
    /// messages have left the schedule, so they are not delivered again while they wait.
    marks: Vec<(String, usize)>,
    /// After a failed write, the marks wait until then.
    marks_retry: Option<Instant>,
    /// After a queued message could not be read (EMFILE, EIO), the backlog waits until then.
    read_retry: Option<Instant>,
    jitter: Jitter,
    stats: Stats,
    gauges: Arc<QueueGauges>,
    oldest_looked: Option<Instant>,
    compacted: Instant,
}

impl Runner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        queue: Arc<dyn Queue>,
        log: Option<Arc<LogSpool>>,
        states: StateStore,
        writer: Writer,
        routes: Routes,
        shared: Arc<Shared>,
        committed: Receiver<String>,
        control: Receiver<Control>,
        dsn_spool: Spool,
        gauges: Arc<QueueGauges>,
    ) -> Runner {
        let (outcomes_tx, outcomes) = crossbeam_channel::unbounded();
        Runner {
            queue,
            log,
            states,
            writer,
            routes,
            shared,
            pools: HashMap::new(),
            health: HashMap::new(),
            outcomes_tx,
            outcomes,
            committed,
            control,
            dsn_spool,
            msgs: HashMap::new(),
            backlog: VecDeque::new(),
            due: BinaryHeap::new(),
            marks: Vec::new(),
            marks_retry: None,
            read_retry: None,
            jitter: Jitter::default(),
            stats: Stats::default(),
            gauges,
            oldest_looked: None,
            compacted: Instant::now(),
        }
    }

    /// Runs until told to stop; returns the counters.
    pub fn run(mut self) -> Stats {
        self.load();
        let grace = loop {
            let wait = self.until_due().min(Duration::from_secs(1));
            let stop = crossbeam_channel::select! {
                recv(self.committed) -> id => {
                    if let Ok(id) = id {
                        self.committed(id);
                    }
                    None
                }
                recv(self.outcomes) -> o => {
                    if let Ok(o) = o {
                        self.outcome(o);
                    }
                    None
                }
                recv(self.control) -> c => match c {
                    Ok(c) => self.control(c),
                    Err(_) => Some(Duration::ZERO),
                },
                default(wait) => None,
            };
            if let Some(grace) = stop {
                break grace;
            }
            // Everything else that is there already, then one batch of marks for it all.
            for _ in 0..4096 {
                match self.outcomes.try_recv() {
                    Ok(o) => self.outcome(o),
                    Err(_) => break,
                }
            }
            for _ in 0..4096 {
                match self.committed.try_recv() {
                    Ok(id) => self.committed(id),
                    Err(_) => break,
                }
            }
            self.flush_marks(Instant::now());
            self.refill();
            self.run_due();
            self.compact();
            self.publish();
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // Parked work never reached a pool: its messages are tried again at the next start.
        for health in self.health.values_mut() {
            for work in health.take_parked() {
                if let Some(m) = self.msgs.get_mut(&work.id) {
                    m.in_flight = m.in_flight.saturating_sub(1);
                }
            }
        }
        let deadline = Instant::now() + grace;
        while self.msgs.values().any(|m| m.in_flight > 0) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.outcomes.recv_timeout(left) {
                Ok(o) => self.outcome(o),
                Err(_) => break,
            }
        }
        self.flush_marks(Instant::now() + MARK_RETRY);
        if !self.marks.is_empty() {
            // Not marked, so delivered again after the restart: a duplicate, never a loss.
            tracing::error!(
                marks = self.marks.len(),
                "stopping with recipients delivered but not marked done"
            );
        }
        self.dsn_spool.finish();
        self.writer.finish();
        self.stats.queue_size = (self.msgs.len() + self.backlog.len()) as u64;
        for (dest, health) in &self.health {
            self.stats.dest(dest).health = health.name();
        }
        self.stats
    }

    /// The queue's size for scrapes, and its oldest arrival at most every [`OLDEST_EVERY`].
    fn publish(&mut self) {
        self.gauges
            .set_messages((self.msgs.len() + self.backlog.len()) as u64);
        // An empty queue has no oldest message at once; otherwise the pass waits its second.
        if self.msgs.is_empty() || self.oldest_looked.is_none_or(|at| at.elapsed() >= OLDEST_EVERY) {
            self.oldest_looked = Some(Instant::now());
            self.gauges
                .set_oldest(self.msgs.values().map(|m| m.received).min());
        }
    }

    /// The queue as the spool has it at start, with each message's saved state.
    fn load(&mut self) {
        let listed = match self.queue.list() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the spool; delivering new messages only");
                Vec::new()
            }
        };
        let ids: std::collections::HashSet<String> = listed.iter().map(|q| q.meta.id.clone()).collect();
        if let Ok(saved) = self.states.ids() {
            for id in saved.iter().filter(|id| !ids.contains(*id)) {
                self.states.remove(id);
            }
        }
        let n = listed.len();
        for q in listed {
            if self.msgs.len() >= self.shared.limits.delivery_active_limit {
                self.backlog.push_back(q.meta.id);
                continue;
            }
            let state = self.states.load(&q.meta.id);
            self.admit(q, state, None);
        }
        tracing::info!(messages = n, "delivery queue loaded");
        self.publish();
    }

    /// A message just committed.
    fn committed(&mut self, id: String) {
        if self.msgs.len() >= self.shared.limits.delivery_active_limit {
            self.backlog.push_back(id);
            return;
        }
        if self.msgs.contains_key(&id) {
            // Listed at start and reported by its committer too.
            return;
        }
        match self.queue.get(&id) {
            Ok(q) => self.admit(q, None, Some(Instant::now())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(id, error = %e, "cannot read a committed message; trying again");
                self.backlog.push_back(id);
                self.read_retry = Some(Instant::now() + MARK_RETRY);
            }
        }
    }

    fn admit(&mut self, q: Queued, state: Option<State>, since: Option<Instant>) {
        let id = q.meta.id.clone();
        let mut msg = Msg::from_queued(q, state);
        msg.since = since;
        let due = msg.next_attempt;
        self.stats.queued += 1;
        self.msgs.insert(id.clone(), msg);
        if due <= unix_now() {
            self.dispatch(&id);
        } else {
            self.due.push(Reverse((due, id)));
        }
    }

    /// Brings messages waiting beyond the active limit into the schedule.
    /// Also every turn: after a read failed, the backlog is tried again a second later.
    fn refill(&mut self) {
        if self.read_retry.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.read_retry = None;
        while self.msgs.len() < self.shared.limits.delivery_active_limit {
            let Some(id) = self.backlog.pop_front() else { break };
            match self.queue.get(&id) {
                Ok(q) => {
                    let state = self.states.load(&id);
                    self.admit(q, state, None);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Kept at the head of the backlog: dropped from the schedule, an
                    // acknowledged message would wait in the spool until a restart (the
                    // soak's descriptor exhaustion left 7,273 so, the queue gauge at 0).
                    tracing::error!(id, error = %e, "cannot read a queued message; trying again");
                    self.backlog.push_front(id);
                    self.read_retry = Some(Instant::now() + MARK_RETRY);
                    break;
                }
            }
        }
    }

    /// Makes the marks durable in one batch. A failure (ENOSPC) keeps them for another try:
    /// dropped, the delivered recipients would stay pending in the spool for ever and be
    /// delivered again at the next start.
    fn flush_marks(&mut self, now: Instant) {
        if self.marks.is_empty() || self.marks_retry.is_some_and(|at| now < at) {
            return;
        }
        self.stats.mark_batches += 1;
        match self.queue.mark_done_many(&self.marks) {
            Ok(()) => {
                if self.marks_retry.take().is_some() {
                    tracing::info!(
                        marks = self.marks.len(),
                        "recipients marked done after failed tries"
                    );
                }
                self.marks.clear();
            }
            Err(e) => {
                // Marks are idempotent and the spool skips those of messages it no longer
                // has, so trying the whole batch again is safe.
                self.stats.mark_failures += 1;
                self.marks_retry = Some(now + MARK_RETRY);
                tracing::error!(error = %e, marks = self.marks.len(), "cannot mark recipients done; trying again");
            }
        }
        self.stats.marks_pending = self.marks.len() as u64;
    }

    fn until_due(&self) -> Duration {
        match self.due.peek() {
            Some(Reverse((at, _))) => Duration::from_secs(at.saturating_sub(unix_now())),
            None => Duration::from_secs(3600),
        }
    }

    fn run_due(&mut self) {
        let now = unix_now();
        while let Some(Reverse((at, _))) = self.due.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, id))) = self.due.pop() else {
                break;
            };
            // An entry is stale if the message was rescheduled, flushed or has gone since.
            if self.msgs.get(&id).is_some_and(|m| m.next_attempt == at) {
                self.dispatch(&id);
            }
        }
    }

    fn compact(&mut self) {
        let Some(log) = &self.log else { return };
        if self.compacted.elapsed() < COMPACT_EVERY {
            return;
        }
        self.compacted = Instant::now();
        match log.compact() {
            Ok(0) => {}
            Ok(n) => tracing::info!(segments = n, "spool segments compacted"),
            Err(e) => tracing::error!(error = %e, "spool compaction failed"),
        }
    }

    /// A request of `ringmx queue`, or the stop.
    fn control(&mut self, c: Control) -> Option<Duration> {
        match c {
            Control::Stop(grace) => Some(grace),
            Control::Reload(routes, shared) => {
                self.routes = routes;
                self.shared = Arc::new(Shared {
                    stop: self.shared.stop.clone(),
                    ..shared
                });
                // A pool stays while its destination is still routed to, and takes the new
                // settings for its next transactions: its threads and their count (at most
                // `destination_concurrency` connections) carry over. A destination no longer
                // routed to loses its pool: its threads finish what was handed to them, then
                // end. Health is kept: a dead destination is not revived by a reload.
                let routed = self.routes.all();
                self.pools.retain(|dest, _| routed.contains(&**dest));
                for pool in self.pools.values() {
                    pool.reconfigure(self.shared.client.clone(), &self.shared.limits);
                }
                None
            }
            Control::Request(req, reply) => {
                let answer = self.request(req);
                let _ = reply.send(answer);
                None
            }
            Control::Snapshot(reply) => {
                let _ = reply.send(self.snapshot(SystemTime::now()));
                None
            }
        }
    }
}

/// A destination's pool with the settings in force.
fn new_pool(dest: &Arc<Dest>, shared: &Shared, queue: &Arc<dyn Queue>, outcomes: &Sender<Outcome>) -> Pool {
    Pool::new(
        dest.clone(),
        shared.client.clone(),
        queue.clone(),
        outcomes.clone(),
        &shared.limits,
        shared.stop.clone(),
    )
}
