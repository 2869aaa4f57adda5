//! What a scrape of `/metrics` collects and from where: each worker's counters (asked over its control channel, with a timeout), the shared connection count, the committers' histograms (inside the workers' answers), the queue runner's stats, the log writer's drops and `/proc/self`.
//!
//! Nothing is counted here: every value is a snapshot of a counter kept where its event
//! happens. A worker's counters stay plain `u64`s on its own thread; a scrape sends each
//! worker [`Control::Snapshot`] and wakes it, the worker answers at its next turn with its
//! totals plus its live sessions' unfolded counters, and the scrape waits for all of them up
//! to [`SNAPSHOT_WAIT`]. A worker that has not answered by then is shown with its last
//! answer (its request stays outstanding, so the channel holds at most one per worker and
//! keeps room for a shutdown). Scrapes are served one at a time (a lock), which bounds the
//! work a scraper can ask of the workers.
//!
//! The threads ([`http`]) live as long as the process: they keep nothing a shutdown must
//! save, and once a worker has stopped the scrape shows its last answer.

pub mod histogram;
pub mod http;
pub mod render;

use crate::backend::IoStats;
use crate::config::{ServerConfig, SpoolFormat};
use crate::delivery::{self, StatsSource};
use crate::proto::{Reply, Stats};
use crate::wake::Wake;
use crate::worker::{Control, Report, TlsFailure};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use render::{Exposition, Kind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use http::Endpoint;

/// How long a scrape waits for the workers' answers (all asked at once). A worker's turn is
/// far shorter unless it is stuck, and Prometheus's default scrape timeout is 10 s.
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(1);
/// How long a scrape waits for the queue runner (it answers between its other messages).
pub const DELIVERY_WAIT: Duration = Duration::from_secs(1);

/// Bounds of the delivery latency histogram in seconds: it runs from a message's commit to
/// the next hop's reply, so it includes time spent queued and retried, up to an hour.
const DELIVERY_SECONDS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The replies that refuse a message at its end of data (or at its commit), by which
/// `ringmx_messages_rejected_total{reason}` counts.
const END_OF_DATA_REFUSALS: [Reply; 5] = [
    Reply::MessageTooBig,
    Reply::TextLineTooLong,
    Reply::BareLf,
    Reply::Storage,
    Reply::CommitTimeout,
];

/// Where a scrape's values come from.
pub struct Sources {
    /// Each worker's control channel and waker.
    pub workers: Vec<(Sender<Control>, Arc<dyn Wake>)>,
    /// Connections open now, across workers (the count `max_connections` is checked on).
    pub active: Arc<AtomicUsize>,
    /// The queue runner, when delivery runs.
    pub delivery: Option<StatsSource>,
    /// For `ringmx_build_info`.
    pub backend: &'static str,
    pub spool_format: &'static str,
}

/// One worker as the scrapes know it.
#[derive(Default)]
struct Known {
    last: Report,
    /// The request not answered yet, if any.
    pending: Option<Receiver<Report>>,
}

/// The scrapes' state, behind one lock.
struct Collected {
    workers: Vec<Known>,
    /// The runner's last answer, and its request not answered yet.
    delivery: Option<delivery::Stats>,
    delivery_pending: Option<Receiver<delivery::Stats>>,
}

/// Builds the page for each scrape.
pub struct Collector {
    sources: Sources,
    state: Mutex<Collected>,
}

impl Collector {
    pub fn new(sources: Sources) -> Collector {
        let workers = sources.workers.iter().map(|_| Known::default()).collect();
        Collector {
            sources,
            state: Mutex::new(Collected {
                workers,
                delivery: None,
                delivery_pending: None,
            }),
        }
    }

    /// Asks every worker and the runner, waits (bounded), and renders the page.
    pub fn scrape(&self) -> String {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = Instant::now() + SNAPSHOT_WAIT;
        for ((tx, waker), known) in self.sources.workers.iter().zip(&mut state.workers) {
            if known.pending.is_none() {
                let (reply, answer) = crossbeam_channel::bounded(1);
                if tx.try_send(Control::Snapshot(reply)).is_ok() {
                    waker.wake();
                    known.pending = Some(answer);
                }
            }
        }
        let mut report = Report::default();
        for known in &mut state.workers {
            if let Some(answer) = &known.pending {
                match answer.recv_deadline(deadline) {
                    Ok(r) => {
                        known.last = r;
                        known.pending = None;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => known.pending = None,
                }
            }
            report.merge(&known.last);
        }
        if let Some(source) = &self.sources.delivery {
            // As with the workers: one request outstanding at most, the last answer kept.
            if state.delivery_pending.is_none() {
                state.delivery_pending = source.ask();
            }
            if let Some(answer) = &state.delivery_pending {
                match answer.recv_timeout(DELIVERY_WAIT) {
                    Ok(stats) => {
                        state.delivery = Some(stats);
                        state.delivery_pending = None;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => state.delivery_pending = None,
                }
            }
        }
        let mut e = Exposition::default();
        self.render(&mut e, &report, state.delivery.as_ref());
        e.finish()
    }

    fn render(&self, e: &mut Exposition, r: &Report, delivery: Option<&delivery::Stats>) {
        let queue = self.sources.delivery.as_ref().map(StatsSource::queue);
        let s = &self.sources;
        e.family(
            "ringmx_build_info",
            Kind::Gauge,
            "The running build: version, I/O backend and spool format.",
        )
        .sample(
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("backend", s.backend),
                ("spool_format", s.spool_format),
            ],
            1u64,
        );
        let f = &r.refused;
        e.family(
            "ringmx_connections_total",
            Kind::Counter,
            "Connections accepted by the workers, or refused at accept by reason.",
        )
        .sample(&[("result", "accepted")], r.accepted)
        .sample(&[("result", "max_connections")], f.max_connections)
        .sample(&[("result", "shutting_down")], f.shutting_down)
        .sample(&[("result", "attach_failed")], f.attach_failed)
        .sample(&[("result", "out_of_descriptors")], f.out_of_descriptors);
        e.single(
            "ringmx_sessions_active",
            Kind::Gauge,
            "Connections open now, across all workers.",
            s.active.load(Ordering::Relaxed) as u64,
        );
        sessions(e, &r.stats);
        e.single(
            "ringmx_received_octets_total",
            Kind::Counter,
            "Octets read from clients (before TLS decryption).",
            r.received_octets,
        );
        spool(e, r);
        tls(e, r);
        admit(e, r);
        io(e, &r.io);
        e.single(
            "ringmx_log_lines_dropped_total",
            Kind::Counter,
            "Log lines dropped because the log writer fell behind.",
            crate::logging::dropped_lines(),
        );
        use std::sync::atomic::Ordering::Relaxed;
        e.family(
            "ringmx_config_reloads_total",
            Kind::Counter,
            "SIGHUP reloads put in force (applied) or refused with the running configuration kept.",
        )
        .sample(&[("result", "applied")], crate::reload::APPLIED.load(Relaxed))
        .sample(&[("result", "refused")], crate::reload::REFUSED.load(Relaxed));
        e.single(
            "ringmx_config_last_reload_success_timestamp_seconds",
            Kind::Gauge,
            "When the configuration in force was put in force (the start, or the last reload applied).",
            crate::reload::LAST_APPLIED.load(Relaxed),
        );
        if let Some((messages, oldest)) = queue {
            // From the runner's gauges, not its answer: a busy runner cannot leave them stale.
            e.single(
                "ringmx_queue_messages",
                Kind::Gauge,
                "Messages in the delivery queue.",
                messages,
            );
            e.single(
                "ringmx_queue_oldest_age_seconds",
                Kind::Gauge,
                "Age of the oldest message in the delivery queue.",
                oldest,
            );
        }
        if let Some(d) = delivery {
            deliveries(e, d);
            health(e, d);
        }
        process(e);
    }
}

fn sessions(e: &mut Exposition, st: &Stats) {
    {
        let mut f = e.family(
            "ringmx_sessions_closed_total",
            Kind::Counter,
            "SMTP sessions ended, by reason.",
        );
        for (reason, n) in st.closed_by_name() {
            f.sample(&[("reason", reason)], n);
        }
    }
    e.single(
        "ringmx_commands_total",
        Kind::Counter,
        "Command lines handled.",
        st.commands,
    );
    e.single(
        "ringmx_command_errors_total",
        Kind::Counter,
        "Error replies to commands (the ones the error limit counts).",
        st.errors,
    );
    let mut by_status: BTreeMap<(u16, &str), u64> = BTreeMap::new();
    for r in Reply::ALL {
        *by_status.entry(r.status()).or_default() += st.replies_of(r);
    }
    {
        let mut f = e.family(
            "ringmx_replies_total",
            Kind::Counter,
            "Replies sent, by reply code and enhanced status code (empty when none).",
        );
        for ((code, enhanced), n) in by_status {
            f.sample(&[("code", &code.to_string()), ("enhanced", enhanced)], n);
        }
    }
    {
        let mut f = e.family(
            "ringmx_non_smtp_sessions_total",
            Kind::Counter,
            "Sessions ended because the client spoke another protocol, by class.",
        );
        for (class, n) in st.non_smtp_by_name() {
            f.sample(&[("class", class)], n);
        }
    }
    e.single(
        "ringmx_messages_accepted_total",
        Kind::Counter,
        "Messages acknowledged with 250 after their commit.",
        st.messages,
    );
    let mut f = e.family(
        "ringmx_messages_rejected_total",
        Kind::Counter,
        "Messages refused at their end of data or commit, by reply kind.",
    );
    for r in END_OF_DATA_REFUSALS {
        f.sample(&[("reason", r.name())], st.replies_of(r));
    }
}

fn spool(e: &mut Exposition, r: &Report) {
    e.family(
        "ringmx_spool_commit_seconds",
        Kind::Histogram,
        "Per message, from its hand-over to the committer to its batch being durable.",
    )
    .histogram(&[], &r.commit_seconds);
    e.family(
        "ringmx_spool_commit_batch_messages",
        Kind::Histogram,
        "Messages per commit batch.",
    )
    .histogram(&[], &r.commit_batch);
    e.single(
        "ringmx_spool_commit_failures_total",
        Kind::Counter,
        "Messages whose commit failed (answered 452).",
        r.spool.failed,
    );
    e.single(
        "ringmx_spool_syncs_total",
        Kind::Counter,
        "fdatasync, fsync and syncfs calls made to commit batches.",
        r.spool.syncs,
    );
}

fn tls(e: &mut Exposition, r: &Report) {
    let t = &r.tls;
    e.family(
        "ringmx_tls_handshakes_total",
        Kind::Counter,
        "TLS handshakes completed, by protocol version.",
    )
    .sample(&[("version", "TLSv1.2")], t.tls12)
    .sample(&[("version", "TLSv1.3")], t.tls13);
    e.single(
        "ringmx_tls_resumed_total",
        Kind::Counter,
        "Handshakes that resumed an earlier session.",
        t.resumed,
    );
    {
        let mut f = e.family(
            "ringmx_tls_failures_total",
            Kind::Counter,
            "TLS sessions that failed, by cause.",
        );
        for cause in TlsFailure::ALL {
            f.sample(&[("cause", cause.name())], t.failures[cause as usize]);
        }
    }
    e.single(
        "ringmx_tls_injections_total",
        Kind::Counter,
        "Sessions that sent input behind STARTTLS in the same read (discarded, CVE-2011-0411).",
        t.injections,
    );
}

fn admit(e: &mut Exposition, r: &Report) {
    {
        let mut f = e.family(
            "ringmx_proxy_headers_total",
            Kind::Counter,
            "PROXY protocol headers, by outcome.",
        );
        for (outcome, n) in r.admit.proxy_by_name().filter(|(name, _)| *name != "proxied") {
            f.sample(&[("outcome", outcome)], n);
        }
    }
    e.family(
        "ringmx_client_limit_hits_total",
        Kind::Counter,
        "Connections refused over a per-client limit.",
    )
    .sample(&[("limit", "connections")], r.admit.client_connections)
    .sample(&[("limit", "rate")], r.admit.client_rate);
}

fn io(e: &mut Exposition, io: &IoStats) {
    e.single(
        "ringmx_io_reads_total",
        Kind::Counter,
        "Receives that returned data or end of stream.",
        io.reads,
    );
    e.single(
        "ringmx_io_writes_total",
        Kind::Counter,
        "Sends that wrote octets.",
        io.writes,
    );
    e.family(
        "ringmx_accept_errors_total",
        Kind::Counter,
        "Accepts that failed, by cause.",
    )
    .sample(&[("cause", "no_fds")], io.accept_no_fds)
    .sample(&[("cause", "no_memory")], io.accept_no_memory)
    .sample(&[("cause", "aborted")], io.accept_aborted);
    e.single(
        "ringmx_uring_enobufs_total",
        Kind::Counter,
        "Receives ended because the provided-buffer ring was empty (io_uring only).",
        io.enobufs,
    );
    e.single(
        "ringmx_uring_backlog_peak",
        Kind::Gauge,
        "The most submissions that waited at once for a full submission queue (io_uring only).",
        io.backlog_peak,
    );
}

fn deliveries(e: &mut Exposition, d: &delivery::Stats) {
    {
        let mut f = e.family(
            "ringmx_delivery_recipients_total",
            Kind::Counter,
            "Recipient delivery attempts by destination and result (deferred counts each attempt).",
        );
        for (dest, s) in d.dests() {
            f.sample(&[("destination", dest), ("result", "delivered")], s.delivered)
                .sample(&[("destination", dest), ("result", "deferred")], s.deferred)
                .sample(&[("destination", dest), ("result", "failed")], s.failed);
        }
    }
    e.single(
        "ringmx_delivery_dsn_sent_total",
        Kind::Counter,
        "Delivery status notifications sent.",
        d.dsn_sent,
    );
    e.single(
        "ringmx_delivery_expired_total",
        Kind::Counter,
        "Deferred recipients failed because max_queue_lifetime_secs passed.",
        d.expired,
    );
    e.single(
        "ringmx_delivery_mark_failures_total",
        Kind::Counter,
        "Batches of done marks the spool could not write (kept and tried again a second later).",
        d.mark_failures,
    );
    e.single(
        "ringmx_delivery_marks_pending",
        Kind::Gauge,
        "Recipients delivered whose done mark is not yet durable (a restart now would deliver them again).",
        d.marks_pending,
    );
    {
        let mut f = e.family(
            "ringmx_delivery_seconds",
            Kind::Histogram,
            "From a message's commit to the next hop's reply that delivered a recipient.",
        );
        for (dest, s) in d.dests() {
            f.histogram(&[("destination", dest)], &s.latency_buckets(&DELIVERY_SECONDS));
        }
    }
    let mut per_dest = |name, kind, help, value: fn(&delivery::DestStats) -> u64| {
        let mut f = e.family(name, kind, help);
        for (dest, s) in d.dests() {
            f.sample(&[("destination", dest)], value(s));
        }
    };
    per_dest(
        "ringmx_delivery_connections_total",
        Kind::Counter,
        "Connections opened to the destination.",
        |s| s.connections,
    );
    per_dest(
        "ringmx_delivery_connection_failures_total",
        Kind::Counter,
        "Work items whose connection failed (refused, broken, timed out).",
        |s| s.connection_failures,
    );
    per_dest(
        "ringmx_delivery_dead_deferrals_total",
        Kind::Counter,
        "Recipients deferred without a connection because the destination was dead (its last connection error as the reason).",
        |s| s.dead_deferrals,
    );
    per_dest(
        "ringmx_delivery_threads",
        Kind::Gauge,
        "Delivery threads of the destination's pool.",
        |s| s.threads,
    );
}

/// Each destination's health, one sample per state (1 for the one it is in), as a Prometheus
/// state set.
fn health(e: &mut Exposition, d: &delivery::Stats) {
    let mut f = e.family(
        "ringmx_delivery_destination_state",
        Kind::Gauge,
        "The destination's health: alive, dead (recipients deferred without a connection) or probing (one delivery decides).",
    );
    for (dest, s) in d.dests() {
        for state in ["alive", "dead", "probing"] {
            f.sample(
                &[("destination", dest), ("state", state)],
                u64::from(s.health == state),
            );
        }
    }
}

/// The process's own figures, from `/proc/self` (the names of Prometheus's client libraries).
fn process(e: &mut Exposition) {
    // SAFETY: sysconf only reads a system constant.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces: the
    // first is field 3 (state) of proc(5).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        if ticks > 0 {
            e.single(
                "process_cpu_seconds_total",
                Kind::Counter,
                "User and system CPU time spent, in seconds.",
                (utime + stime) as f64 / ticks as f64,
            );
        }
    }
    if let Some(rss) = field(24) {
        e.single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            rss * page.max(0) as u64,
        );
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    if let (Some(boot), Some(start)) = (boot, field(22)) {
        if ticks > 0 {
            e.single(
                "process_start_time_seconds",
                Kind::Gauge,
                "Start time of the process since the Unix epoch, in seconds.",
                boot as f64 + start as f64 / ticks as f64,
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // Less the descriptor of the directory being read.
        let open = fds.count().saturating_sub(1) as u64;
        e.single("process_open_fds", Kind::Gauge, "Open file descriptors.", open);
    }
    // SAFETY: getrlimit writes the struct we own.
    let max = unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        (libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0).then_some(lim.rlim_cur as u64)
    };
    if let Some(max) = max {
        e.single(
            "process_max_fds",
            Kind::Gauge,
            "The soft limit on open file descriptors.",
            max,
        );
    }
}

/// Binds `metrics_listen`, if set, while the server starts (before its workers).
pub fn bind(config: &ServerConfig) -> Result<Option<Endpoint>, String> {
    config.metrics_listen.map(Endpoint::bind).transpose()
}

/// Serves the page on the bound endpoint, if any, from the started workers (their control
/// channels and wakers), the shared connection count and the queue runner.
pub fn start(
    endpoint: Option<Endpoint>,
    config: &ServerConfig,
    workers: &[(Sender<Control>, Arc<dyn Wake>)],
    active: &Arc<AtomicUsize>,
    delivery: Option<&crate::delivery::Delivery>,
    backend: &'static str,
) -> Result<(), String> {
    let Some(endpoint) = endpoint else {
        return Ok(());
    };
    let collector = Collector::new(Sources {
        workers: workers.to_vec(),
        active: active.clone(),
        delivery: delivery.map(crate::delivery::Delivery::stats_source),
        backend,
        spool_format: spool_format(config),
    });
    endpoint.serve(move || collector.scrape())
}

/// The spool format's name for `ringmx_build_info` (`sink` with `--sink`).
fn spool_format(config: &ServerConfig) -> &'static str {
    match (config.sink, config.spool_format) {
        (true, _) => "sink",
        (false, SpoolFormat::Log) => "log",
        (false, SpoolFormat::Files) => "files",
    }
}
