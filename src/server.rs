//! `ringmx serve`: checks the configuration, claims the spool and the listen addresses, runs the pinned workers, and stops them on SIGTERM/SIGINT.

use crate::backend::{self, Backend, BackendConfig, WithBackend};
use crate::config::{ServerConfig, SpoolFormat};
use crate::delivery::{self, Delivery};
use crate::descriptors::{fit_max_connections, raise_nofile_limit, Needs, Storage};
use crate::policy::clients::{ClientLimits, ClientTable};
use crate::policy::recipients::Recipients;
use crate::privileges;
use crate::proto::Settings;
use crate::reload::{self, Reloader, Source};
use crate::signals::{block_signals, wait_for_signals};
use crate::spool::{self, Backing, IdGen, LogSpool, Spool, SpoolLock};
use crate::tls::TlsContext;
use crate::wake::Wake;
use crate::worker::{Control, ListenerRole, Report, Store, Worker, WorkerConfig};
use crossbeam_channel::Sender;
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Pending connections per listener; the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// What starting one worker needs besides its backend.
struct WorkerContext<'a> {
    id: usize,
    cpu: Option<usize>,
    config: &'a ServerConfig,
    settings: &'a Arc<Settings>,
    active: &'a Arc<AtomicUsize>,
    tls: Option<Arc<rustls::ServerConfig>>,
    clients: Option<Arc<ClientTable>>,
    /// Where committers write; `None` in sink mode.
    backing: Option<Backing>,
    /// Where committers report committed ids, when delivery runs.
    feed: Option<Sender<String>>,
}

/// A started worker: its thread, how to reach it, and the name of its backend.
struct Started {
    thread: JoinHandle<Report>,
    control: Sender<Control>,
    waker: Arc<dyn Wake>,
    backend: &'static str,
}

impl WithBackend for &WorkerContext<'_> {
    type Output = Result<Started, String>;

    fn with<B: Backend + Send + 'static>(self, backend: B) -> Self::Output {
        self.start(backend)
    }
}

impl WorkerContext<'_> {
    /// Starts the worker's spool writer (unless in sink mode) and its pinned thread; any
    /// backend that keeps the contract of [`crate::backend`] goes here unchanged.
    fn start<B: Backend + Send + 'static>(&self, backend: B) -> Result<Started, String> {
        let id = self.id;
        let waker = backend.waker();
        let name = backend.name();
        let store = match &self.backing {
            None => Store::Sink(IdGen::new(id)),
            Some(backing) => Store::Spool(
                Spool::start(
                    id,
                    backing.clone(),
                    self.config.proto.hostname.clone(),
                    self.config.limits.spool_queue_bytes,
                    waker.clone(),
                    self.feed.clone(),
                )
                .map_err(|e| format!("cannot start spool writer: {e}"))?,
            ),
        };
        // Room for a shutdown behind several reloads the worker has not taken yet.
        let (tx, rx) = crossbeam_channel::bounded(8);
        let (settings, active, cpu) = (self.settings.clone(), self.active.clone(), self.cpu);
        let limits = &self.config.limits;
        let config = WorkerConfig {
            max_connections: limits.max_connections,
            shutdown_grace: std::time::Duration::from_secs(limits.shutdown_grace_secs),
            input_buffer: limits.input_buffer,
            tls: self.tls.clone(),
            listeners: (self.config.listen.iter().map(|l| (l, false)))
                .chain(self.config.listen_tls.iter().map(|l| (l, true)))
                .map(|(l, tls)| ListenerRole { proxy: l.proxy, tls })
                .collect(),
            handshake_timeout: std::time::Duration::from_secs(limits.tls_handshake_timeout_secs),
            relay_networks: self.config.relay_networks.clone().into(),
            proxy_trusted: self.config.proxy_trusted.clone().into(),
            proxy_timeout: std::time::Duration::from_secs(limits.proxy_header_timeout_secs),
            proxy_header_max: limits.proxy_header_max,
            clients: self.clients.clone(),
            limit_relay_networks: limits.client_limits_for_relay_networks,
        };
        let thread = std::thread::Builder::new()
            .name(format!("ringmx-worker-{id}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                Worker::new(id, backend, settings, config, store, rx, active).run()
            })
            .map_err(|e| format!("cannot start worker: {e}"))?;
        Ok(Started {
            thread,
            control: tx,
            waker,
            backend: name,
        })
    }
}

/// Runs the server until SIGTERM or SIGINT has shut it down cleanly; returns the merged
/// counters of all workers. An error is a message for the operator.
///
/// `source` reads the configuration again for SIGHUP (the file, then the flags over it).
pub fn serve(
    mut config: ServerConfig,
    source: Source,
    stats_file: Option<PathBuf>,
) -> Result<Report, String> {
    config.validate().map_err(|e| e.to_string())?;
    let configured = config.clone();
    let cert_entries = config.cert_entries();
    let tls = if cert_entries.is_empty() {
        None
    } else {
        Some(TlsContext::new(&cert_entries, config.limits.tls_session_cache)?)
    };
    config.proto.starttls = tls.is_some();
    let backend = backend::choose(config.backend)?;
    let signals = block_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    let open_files = raise_nofile_limit();
    let cpus = allowed_cpus();
    let workers = if config.workers == 0 {
        cpus.len().max(1)
    } else {
        config.workers
    };
    // Plain listeners first, then implicit TLS ones: the workers tell them apart by index.
    let listen: Vec<SocketAddr> = config
        .listen
        .iter()
        .chain(&config.listen_tls)
        .map(|l| l.addr)
        .collect();
    let needs = Needs {
        workers,
        listeners: listen.len(),
        store: match (config.sink, config.spool_format) {
            (true, _) => Storage::Sink,
            (false, SpoolFormat::Files) => Storage::Files,
            (false, SpoolFormat::Log) => Storage::Log,
        },
        delivery: if config.sink {
            0
        } else {
            delivery::descriptors(&config)
        },
        metrics: config.metrics_listen.is_some(),
    };
    config.limits.max_connections = fit_max_connections(config.limits.max_connections, open_files, &needs)?;
    let backend_config = BackendConfig::from(&config.limits);
    // Everything that may need root comes first: the listeners (ports 25 and 465), the
    // certificates above and the recipients table (files an operator may keep root's).
    let (per_worker, bound) = bind_all(&listen, workers)?;
    let metrics = crate::metrics::bind(&config)?;
    let recipients =
        Recipients::new(&config.domains, config.recipients.as_deref()).map_err(|e| e.to_string())?;
    tracing::info!(
        domains = config.domains.len(),
        addresses = recipients.len(),
        "recipients loaded"
    );
    // Opened before the switch, as root would: it is written at exit, by the user.
    let stats_file = match stats_file {
        Some(path) => Some(
            std::fs::File::create(&path)
                .map(|f| (path.clone(), f))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        ),
        None => None,
    };
    if let Some(name) = &config.user {
        become_user(name, &config)?;
    }
    // Held until this function returns, after every committer has finished.
    let (_spool_lock, backing) = claim_spool(&config)?;
    let delivery = match &backing {
        Some(b) => Delivery::start(&config, b, workers)?,
        None => None,
    };
    if delivery.is_none() && !config.sink {
        tracing::info!("no relay_to or routes: messages stay in the spool (store-only)");
    }
    let settings = Settings::with_recipients(config.proto.clone(), Arc::new(recipients));
    let active = Arc::new(AtomicUsize::new(0));
    let limits = &config.limits;
    // Always there, even with both limits off, so a reload can turn them on.
    let clients = Arc::new(ClientTable::new(ClientLimits {
        max_connections: limits.max_connections_per_client,
        rate_per_minute: limits.connection_rate_per_client,
        ipv6_prefix: limits.client_ipv6_prefix,
        max_tracked: limits.client_table_size,
    }));
    let mut controls: Vec<(Sender<Control>, Arc<dyn Wake>)> = Vec::new();
    let mut threads = Vec::new();
    let mut backend_name = "";
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let cpu = cpus.get(id % cpus.len().max(1)).copied();
        let ctx = WorkerContext {
            id,
            cpu,
            config: &config,
            settings: &settings,
            active: &active,
            tls: tls.as_ref().map(TlsContext::server_config),
            clients: Some(clients.clone()),
            backing: backing.clone(),
            feed: delivery.as_ref().map(Delivery::feed),
        };
        let started = backend::open(backend, listeners, &backend_config, &ctx)??;
        backend_name = started.backend;
        threads.push(started.thread);
        controls.push((started.control, started.waker));
    }
    crate::metrics::start(
        metrics,
        &config,
        &controls,
        &active,
        delivery.as_ref(),
        backend_name,
    )?;
    let list = |addrs: &[SocketAddr]| {
        let mut s = String::new();
        for (i, addr) in addrs.iter().enumerate() {
            let _ = write!(s, "{}{addr}", if i > 0 { "," } else { "" });
        }
        if s.is_empty() {
            s.push('-');
        }
        s
    };
    let (plain, implicit) = bound.split_at(config.listen.len());
    tracing::info!(
        listeners = %list(plain),
        tls_listeners = %list(implicit),
        starttls = config.proto.starttls,
        backend = backend_name,
        workers,
        relay_to = config.delivery.relay_to.as_deref().unwrap_or("-"),
        routes = config.delivery.routes.len(),
        spool = %if config.sink {
            "sink".to_string()
        } else {
            match config.spool_format {
                SpoolFormat::Files => format!("{} (files, sync: {:?})", config.spool.display(), config.spool_sync),
                SpoolFormat::Log => format!("{} (log)", config.spool.display()),
            }
        },
        "ringmx started"
    );
    reload::LAST_APPLIED.store(reload::unix_now(), std::sync::atomic::Ordering::Relaxed);
    let reloader = Reloader {
        source,
        running: configured,
        tls,
        clients,
        delivery: delivery.as_ref().map(Delivery::reload_handle),
        workers: controls.clone(),
    };
    std::thread::Builder::new()
        .name("ringmx-signals".into())
        .spawn(move || wait_for_signals(signals, controls, reloader))
        .map_err(|e| format!("cannot start signal thread: {e}"))?;
    // After the start line: listening, the spool recovered, the workers running.
    crate::notify::notify(&format!("READY=1\nSTATUS=listening on {}", list(&bound)));
    let mut report = Report::default();
    for thread in threads {
        match thread.join() {
            Ok(r) => report.merge(&r),
            Err(_) => return Err("a worker panicked".into()),
        }
    }
    // The workers are gone, so nothing new is committed: delivery stops after them.
    let delivered =
        delivery.map(|d| d.stop(std::time::Duration::from_secs(config.limits.shutdown_grace_secs)));
    if let Some(d) = &delivered {
        tracing::info!(
            queued = d.queued,
            delivered = d.delivered(),
            deferred = d.deferred,
            bounced = d.bounced,
            dsn_sent = d.dsn_sent,
            queue_size = d.queue_size,
            "delivery stopped"
        );
    }
    let line = stats_line(&report);
    tracing::info!("stopped: {line}");
    tracing::info!(
        replies = %nonzero(report.stats.replies_by_name()),
        non_smtp = %nonzero(report.stats.non_smtp_by_name()),
        sessions_ended = %nonzero(report.stats.closed_by_name()),
        tls = %nonzero(report.tls.by_name()),
        proxy = %nonzero(report.admit.proxy_by_name()),
        client_limits = report.admit.client_connections + report.admit.client_rate,
        log_lines_dropped = crate::logging::dropped_lines(),
        "counters"
    );
    if let Some((path, mut file)) = stats_file {
        use std::io::Write as _;
        file.write_all((stats_json(&report, delivered.as_ref()) + "\n").as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(report)
}

/// Becomes `user` (see [`crate::privileges`]): as root, after creating the spool for it if
/// missing, then checks as that user that nobody else owns or may write the spool; as that
/// user already, only the check; as anyone else, an error, since only root can switch.
fn become_user(name: &str, config: &ServerConfig) -> Result<(), String> {
    let account = privileges::lookup(name)?;
    let me = privileges::current_uid();
    if me == account.uid {
        // Started as the user already (systemd's `User=`): nothing to switch.
        return if config.sink {
            Ok(())
        } else {
            privileges::verify_spool(&config.spool, &account)
        };
    }
    if me != 0 {
        return Err(format!(
            "cannot switch to user {name}: running as uid {me}, not root"
        ));
    }
    if !config.sink {
        privileges::create_spool(&config.spool, &account)?;
    }
    privileges::drop_to(&account)?;
    tracing::info!(user = %account.name, uid = account.uid, gid = account.gid, "running as");
    if !config.sink {
        privileges::verify_spool(&config.spool, &account)?;
    }
    Ok(())
}

/// Takes the spool for this process, then removes what a crash left in it: in this order, so
/// a second server never deletes the first one's messages in flight. The `files` leftovers are
/// removed whatever the format, so a spool switched from one to the other starts clean; with
/// `log`, its segments are scanned and their torn tails cut. None with `--sink`.
fn claim_spool(config: &ServerConfig) -> Result<(Option<SpoolLock>, Option<Backing>), String> {
    if config.sink {
        return Ok((None, None));
    }
    let spool_error = |e| format!("spool {}: {e}", config.spool.display());
    let lock = spool::lock(&config.spool).map_err(spool_error)?;
    let removed = spool::recover(&config.spool).map_err(spool_error)?;
    if removed > 0 {
        tracing::warn!(removed, spool = %config.spool.display(), "removed uncommitted files");
    }
    let backing = match config.spool_format {
        SpoolFormat::Files => Backing::Files {
            dir: config.spool.clone(),
            sync: config.spool_sync,
        },
        SpoolFormat::Log => {
            let (log, found) =
                LogSpool::recover(&config.spool, config.limits.spool_segment_size).map_err(spool_error)?;
            tracing::info!(
                segments = found.segments,
                messages = found.messages,
                dropped = found.dropped,
                truncated = found.truncated,
                deleted = found.deleted,
                duplicates = found.duplicates,
                "spool log recovered"
            );
            Backing::Log(log)
        }
    };
    Ok((Some(lock), Some(backing)))
}

/// The summary counters as `key=value` pairs, for the exit log line.
fn stats_line(r: &Report) -> String {
    format!(
        "accepted={} rejected={} commands={} errors={} messages={} reads={} writes={}",
        r.accepted,
        r.rejected(),
        r.stats.commands,
        r.stats.errors,
        r.stats.messages,
        r.io.reads,
        r.io.writes
    )
}

/// The counts of a group that are not zero, as `name=count` pairs (`-` if none).
fn nonzero(pairs: impl Iterator<Item = (&'static str, u64)>) -> String {
    let mut out = String::new();
    for (name, count) in pairs.filter(|&(_, n)| n > 0) {
        let _ = write!(out, "{}{name}={count}", if out.is_empty() { "" } else { "," });
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

/// The counters as one JSON object, for `--stats-file`: the summary at the top, then every
/// group by name (connections refused by reason, sessions ended by reason, replies by kind,
/// non-SMTP sessions by class) and the backend's own figures under `io`.
fn stats_json(r: &Report, delivery: Option<&delivery::Stats>) -> String {
    let named = |pairs: &mut dyn Iterator<Item = (&'static str, u64)>| {
        pairs
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
            .collect::<serde_json::Map<_, _>>()
    };
    let mut all = serde_json::json!({
        "accepted": r.accepted,
        "rejected": r.rejected(),
        "commands": r.stats.commands,
        "errors": r.stats.errors,
        "messages": r.stats.messages,
        "refused": {
            "max_connections": r.refused.max_connections,
            "shutting_down": r.refused.shutting_down,
            "attach_failed": r.refused.attach_failed,
            "out_of_descriptors": r.refused.out_of_descriptors,
        },
        "sessions_ended": named(&mut r.stats.closed_by_name()),
        "replies": named(&mut r.stats.replies_by_name()),
        "non_smtp": named(&mut r.stats.non_smtp_by_name()),
        "tls": named(&mut r.tls.by_name()),
        "proxy": named(&mut r.admit.proxy_by_name()),
        "client_limits": {
            "connections": r.admit.client_connections,
            "rate": r.admit.client_rate,
        },
        "io": r.io,
        "spool": r.spool,
        "log_lines_dropped": crate::logging::dropped_lines(),
    });
    if let Some(d) = delivery {
        all["delivery"] = d.json();
    }
    all.to_string()
}

/// Binds every listen address once per worker, after checking that no other process has any
/// of them: every probe is made (and closed) before the first real bind, which two listen
/// addresses that overlap (`0.0.0.0:25` and `127.0.0.1:25`) would otherwise make conflict.
/// Returns each worker's listeners and the addresses bound.
fn bind_all(
    listen: &[SocketAddr],
    workers: usize,
) -> Result<(Vec<Vec<TcpListener>>, Vec<SocketAddr>), String> {
    for &addr in listen {
        probe(addr)?;
    }
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in listen {
        // Port 0 is resolved by the first bind; the other workers share the port it got.
        let mut addr = addr;
        for listeners in &mut per_worker {
            let listener = bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            addr = listener.local_addr().map_err(|e| e.to_string())?;
            listeners.push(listener);
        }
        bound.push(addr);
    }
    Ok((per_worker, bound))
}

/// Refuses an address another process listens on. The real binds set `SO_REUSEPORT` (one
/// socket per worker), and so would a second ringmx: Linux lets sockets of one user that all
/// set it share a port, so the second server would start without a word and take a share of
/// the connections. A bind without `SO_REUSEPORT` conflicts with every socket bound there,
/// which is the test; the probe is closed at once, since it would block the real binds too.
///
/// A race remains: a process that binds between this probe and the first real bind (a few
/// microseconds) is not seen, so two servers started at the same instant on different spools
/// could still share the port (on the same spool, the second stops at the spool lock, taken
/// first). Closing it would take the first real socket bound without `SO_REUSEPORT` and
/// switched to it before `listen`, which rests on undocumented kernel behaviour.
///
/// A predecessor killed with SIGKILL keeps its listeners for a moment after it is reaped: the
/// kernel releases an io_uring's files asynchronously, after the process is gone (measured
/// with the io_uring backend: 14 ms with 3,000 connections open, 24–98 ms with 6,000; with
/// epoll the address was free at the first probe). A supervisor restarting at once
/// would be refused, so an address in use is probed again for up to `PROBE_WAIT` before the
/// start fails; a live server holds it for the whole wait and is still refused.
fn probe(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + PROBE_WAIT;
    loop {
        match probe_once(addr) {
            Err(Probe::InUse) if Instant::now() < deadline => std::thread::sleep(PROBE_INTERVAL),
            Err(Probe::InUse) => {
                return Err(format!(
                    "cannot listen on {addr}: already in use by another process (another ringmx?)"
                ))
            }
            Err(Probe::Failed(e)) => return Err(e),
            Ok(()) => return Ok(()),
        }
    }
}

/// How long an address in use is probed again before the start fails: twenty times the
/// longest release of a killed predecessor's listeners measured (see `probe`).
const PROBE_WAIT: Duration = Duration::from_secs(2);
/// Between two probes of an address in use.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// Why one probe failed.
enum Probe {
    /// Another socket is bound there.
    InUse,
    /// Anything else, as the start reports it.
    Failed(String),
}

/// One probe of `addr` (see `probe`).
fn probe_once(addr: SocketAddr) -> Result<(), Probe> {
    // Port 0: the kernel picks a port no socket holds, never one of a SO_REUSEPORT group.
    if addr.port() == 0 {
        return Ok(());
    }
    let refused = |e: io::Error| Probe::Failed(format!("cannot listen on {addr}: {e}"));
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(refused)?;
    // As the real binds: connections of a previous run in TIME_WAIT are no conflict (Linux
    // still refuses the address while a socket listens on it), nor is `0.0.0.0:25` beside
    // `[::]:25`.
    socket.set_reuse_address(true).map_err(refused)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(refused)?;
    }
    match socket.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(Probe::InUse),
        Err(e) => Err(refused(e)),
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Each worker has its own socket on the same port; the kernel spreads connections.
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it and CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins the calling thread to one CPU, so its caches and its sockets' softirq work stay there.
fn pin_to(cpu: usize) {
    // SAFETY: as in `allowed_cpus`; pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        tracing::warn!(cpu, error = %io::Error::last_os_error(), "cannot pin worker");
    }
}
