//! The durable spool as a worker sees it: the `Spool` handle and the jobs it streams to its committer; a message is acknowledged only once it is on disk.
//!
//! Two formats share the jobs, the committer's batching and the read interface ([`Queue`]):
//! `log` ([`log`], the default: per-worker append-only segments, one `fdatasync` per segment
//! per batch) and `files`, described here.
//!
//! Layout of `files`: `DIR/<id>.eml` is a `Received:` trace header (RFC 5321 §4.4) followed by the
//! message exactly as received after dot-unstuffing; `DIR/<id>.json` is its envelope. Both are
//! written in `DIR/tmp/` and renamed into `DIR`; the `.json` is the commit marker. Writing in a
//! separate, small directory keeps file creation cheap (inserting a name into a directory of
//! 100,000 entries costs several times more than into one of 100) and leaves the big directory
//! one insertion per file.
//!
//! Each worker has one committer thread, so the worker's event loop never touches the disk.
//! The worker streams `Start`, `Chunk`, `End` and `Abort` jobs; the committer writes body bytes
//! as they come and, whenever it finds ended messages, commits all of them together:
//!
//! 1. write each `tmp/<id>.json`; start writeback of every file of the batch
//!    (`sync_file_range`), so their blocks are allocated in one journal transaction;
//! 2. `fdatasync` each file: the first waits for that transaction, the others find their data
//!    and metadata mostly durable already (with [`SpoolSync::Filesystem`], steps 1 and 2 are
//!    one `syncfs` instead);
//! 3. rename each `tmp/<id>.eml` to `<id>.eml`, then each `tmp/<id>.json` to `<id>.json`;
//! 4. fsync the directory once for the whole batch; only then are the ids reported back (to
//!    the worker's channel, then its waker), and the sessions send `250`.
//!
//! A crash before step 4 completes can leave either name without the other, or files in
//! `tmp/`; none of those was acknowledged, and [`recover`] removes all of them at start.
//!
//! One server owns a spool at a time ([`lock`]): recovery in a second one would delete the
//! first one's messages in flight.

mod committer;
pub(crate) mod format;
mod id;
mod lock;
pub mod log;
mod queue;
mod recover;
pub mod tool;

pub use id::IdGen;
pub use lock::{lock, SpoolLock};
pub use log::LogSpool;
pub use queue::{FilesQueue, Queue, Queued};
pub use recover::recover;

use crate::config::SpoolSync;
use crate::metrics::histogram::{AtomicHistogram, Histogram};
use crate::wake::Wake;
use committer::Committer;
use crossbeam_channel::{Receiver, Sender};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

/// Where messages are written before their commit.
const TMP: &str = "tmp";

/// What the spool records about a message besides its content.
#[derive(Debug, Clone)]
pub struct MessageMeta {
    pub id: String,
    pub helo: Vec<u8>,
    pub esmtp: bool,
    pub smtputf8: bool,
    pub client: SocketAddr,
    pub mail_from: Vec<u8>,
    pub mail_params: Vec<u8>,
    pub recipients: Vec<Vec<u8>>,
    pub received: SystemTime,
    /// The TLS session the message came over, if it did.
    pub tls: Option<TlsInfo>,
}

/// What the `Received:` header and the envelope record of a message's TLS session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`, as Postfix writes it (borrowed when received, so the hot path
    /// allocates nothing for it; owned only when read back from a spool with a name rustls
    /// does not know).
    pub version: Cow<'static, str>,
    /// The IANA name of the cipher suite (`TLS13_AES_256_GCM_SHA384`).
    pub cipher: Cow<'static, str>,
    /// The name the client asked for (RFC 6066 SNI), if any.
    pub sni: Option<String>,
}

/// A job for the committer, keyed by the session's token.
#[derive(Debug)]
pub enum Job {
    Start {
        key: u64,
        meta: Box<MessageMeta>,
    },
    Chunk {
        key: u64,
        data: Vec<u8>,
    },
    /// The message is complete; `at` is when the worker handed it over (the start of its
    /// commit latency).
    End {
        key: u64,
        at: Instant,
    },
    Abort {
        key: u64,
    },
}

/// The committer's answer to an `End`.
#[derive(Debug)]
pub struct Done {
    pub key: u64,
    pub id: String,
    pub ok: bool,
}

/// Which format a worker's committer writes.
#[derive(Clone)]
pub enum Backing {
    /// Two files per message (`DIR/<id>.eml`, `DIR/<id>.json`), made durable as `sync` says.
    Files { dir: PathBuf, sync: SpoolSync },
    /// The log-structured spool ([`log`]), shared by every worker's committer.
    Log(Arc<LogSpool>),
}

/// What a committer did, reported when it stops (the exit report, `--stats-file`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SpoolStats {
    /// Commit batches: each ended with its flushes and then its acknowledgements.
    pub batches: u64,
    /// `fdatasync`/`fsync`/`syncfs` calls made to commit those batches.
    pub syncs: u64,
    /// Messages acknowledged, and messages answered `452` (a write or sync failed).
    pub committed: u64,
    pub failed: u64,
}

impl SpoolStats {
    pub fn merge(&mut self, other: &SpoolStats) {
        self.batches += other.batches;
        self.syncs += other.syncs;
        self.committed += other.committed;
        self.failed += other.failed;
    }
}

/// Bounds of the commit latency histogram in microseconds: from 0.5 ms (a batch on a fast
/// NVMe disk) to 5 s (a disk that stalls; the sessions' `commit_timeout_secs` is near).
const COMMIT_MICROS: [u64; 13] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000,
];
/// Bounds of the batch size histogram: powers of two up to [`BATCH_JOBS`], the most jobs
/// (so messages) one batch takes.
const BATCH_MESSAGES: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// What a committer publishes while it runs, for a scrape: written by its thread alone, so
/// no write contends; the worker reads it only when asked for a snapshot.
#[derive(Debug)]
pub struct CommitMetrics {
    /// Per message, from its hand-over (`Job::End`) to its batch's durable end.
    latency: AtomicHistogram,
    /// Per batch, the messages it committed (or failed).
    batch: AtomicHistogram,
    batches: AtomicU64,
    syncs: AtomicU64,
    committed: AtomicU64,
    failed: AtomicU64,
}

impl CommitMetrics {
    fn new() -> CommitMetrics {
        CommitMetrics {
            latency: AtomicHistogram::new(&COMMIT_MICROS),
            batch: AtomicHistogram::new(&BATCH_MESSAGES),
            batches: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn publish(&self, s: &SpoolStats) {
        self.batches.store(s.batches, Ordering::Relaxed);
        self.syncs.store(s.syncs, Ordering::Relaxed);
        self.committed.store(s.committed, Ordering::Relaxed);
        self.failed.store(s.failed, Ordering::Relaxed);
    }

    /// The committer's counters as of its last batch.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            batches: self.batches.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            committed: self.committed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Commit latency in seconds and batch sizes in messages.
    pub fn histograms(&self) -> (Histogram, Histogram) {
        (self.latency.snapshot(1e-6), self.batch.snapshot(1.0))
    }
}

/// The hand-over time of each ended message until its batch commits, and where the
/// measurements go; each committer has one.
struct CommitClock {
    ended: HashMap<u64, Instant>,
    metrics: Arc<CommitMetrics>,
}

impl CommitClock {
    fn ended(&mut self, key: u64, at: Instant) {
        self.ended.insert(key, at);
    }

    fn aborted(&mut self, key: u64) {
        self.ended.remove(&key);
    }

    /// A batch of these messages is done (committed or failed): records each one's latency
    /// and the batch's size.
    fn batch_done(&mut self, keys: impl Iterator<Item = u64>) {
        let now = Instant::now();
        let mut n = 0;
        for key in keys {
            n += 1;
            if let Some(at) = self.ended.remove(&key) {
                let micros = now.saturating_duration_since(at).as_micros();
                self.metrics
                    .latency
                    .record(u64::try_from(micros).unwrap_or(u64::MAX));
            }
        }
        self.metrics.batch.record(n);
    }
}

/// Jobs taken per batch, so a stream of body chunks cannot postpone the commit of messages
/// that have already ended.
const BATCH_JOBS: usize = 1024;

/// What each format's committer does with jobs; [`run_batches`] is the loop both share.
trait Batching {
    /// Takes one job: writes what it carries, or notes that its message ended.
    fn handle(&mut self, job: Job);
    /// Whether a message ended since the last batch.
    fn ended(&self) -> bool;
    /// Makes every ended message durable, then reports each to the worker.
    fn commit_batch(&mut self);
}

/// A committer's loop until the worker drops its sender: take what is queued (up to
/// [`BATCH_JOBS`]), commit the messages that ended, and wake the worker for them or for a
/// queue that drained below its limit.
fn run_batches(c: &mut impl Batching, jobs: &Receiver<Job>, backlog: &Backlog, waker: &dyn Wake) {
    while let Ok(first) = jobs.recv() {
        c.handle(first);
        for job in jobs.try_iter().take(BATCH_JOBS) {
            c.handle(job);
        }
        // A worker that found the queue full waits for this wake (see `Spool::full`).
        let drained = backlog.queued.load(Ordering::SeqCst) <= backlog.limit
            && backlog.waiting.swap(false, Ordering::SeqCst);
        let committed = c.ended();
        if committed {
            c.commit_batch();
        }
        if committed || drained {
            waker.wake();
        }
    }
}

/// Body bytes handed by a worker to its committer and not yet written; shared by both.
struct Backlog {
    queued: AtomicUsize,
    /// The worker found the queue full and waits for the committer to wake it.
    waiting: AtomicBool,
    limit: usize,
}

/// The worker's side of its committer.
pub struct Spool {
    jobs: Option<Sender<Job>>,
    pub results: Receiver<Done>,
    backlog: Arc<Backlog>,
    thread: Option<JoinHandle<SpoolStats>>,
    pub ids: IdGen,
    metrics: Arc<CommitMetrics>,
}

impl Spool {
    /// Starts the committer thread of worker `worker` for the (recovered) spool `backing`;
    /// with a `feed`, the id of every message committed is sent there too (for delivery).
    pub fn start(
        worker: usize,
        backing: Backing,
        hostname: String,
        limit: usize,
        waker: Arc<dyn Wake>,
        feed: Option<Sender<String>>,
    ) -> io::Result<Spool> {
        let (jobs, job_rx) = crossbeam_channel::unbounded();
        let (done_tx, results) = crossbeam_channel::unbounded();
        let backlog = Arc::new(Backlog {
            queued: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            limit,
        });
        let metrics = Arc::new(CommitMetrics::new());
        let clock = CommitClock {
            ended: HashMap::new(),
            metrics: metrics.clone(),
        };
        let name = format!("ringmx-spool-{worker}");
        let thread = match backing {
            Backing::Files { dir, sync } => {
                let committer =
                    Committer::new(dir, hostname, sync, backlog.clone(), done_tx, feed, waker, clock)?;
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || committer.run(job_rx))?
            }
            Backing::Log(spool) => {
                let committer =
                    log::Committer::new(spool, hostname, backlog.clone(), done_tx, feed, waker, clock);
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || committer.run(job_rx))?
            }
        };
        Ok(Spool {
            jobs: Some(jobs),
            results,
            backlog,
            thread: Some(thread),
            ids: IdGen::new(worker),
            metrics,
        })
    }

    /// What the committer has published so far (for a scrape).
    pub fn metrics(&self) -> &CommitMetrics {
        &self.metrics
    }

    /// Queues a job; a body chunk counts towards the queue limit until written.
    pub fn submit(&self, job: Job) {
        if let Job::Chunk { data, .. } = &job {
            self.backlog.queued.fetch_add(data.len(), Ordering::SeqCst);
        }
        if let Some(jobs) = &self.jobs {
            // The committer outlives every send: it exits only when this sender is dropped.
            let _ = jobs.send(job);
        }
    }

    /// Whether body bytes handed to the committer but not yet taken by it exceed the limit;
    /// sessions in DATA stop being read until the committer catches up, and then it wakes the
    /// worker. The flag is raised before the queue is looked at again, and the committer
    /// lowers its count before it looks at the flag, so one of the two always sees the other:
    /// no wake-up is lost.
    pub fn full(&self) -> bool {
        let backlog = &self.backlog;
        if backlog.queued.load(Ordering::SeqCst) <= backlog.limit {
            return false;
        }
        backlog.waiting.store(true, Ordering::SeqCst);
        backlog.queued.load(Ordering::SeqCst) > backlog.limit
    }

    /// Lets the committer finish every job already queued, then waits for it.
    pub fn finish(&mut self) -> SpoolStats {
        self.jobs = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(stats)) => stats,
            Some(Err(_)) => {
                tracing::error!("spool committer panicked");
                SpoolStats::default()
            }
            None => SpoolStats::default(),
        }
    }
}
