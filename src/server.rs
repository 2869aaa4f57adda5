//! `ringmx serve`: checks the configuration, binds each worker's listeners, runs the pinned workers, and stops them on SIGTERM/SIGINT.

use crate::backend::{self, Backend, BackendConfig, WithBackend};
use crate::config::{Limits, ServerConfig};
use crate::proto::Settings;
use crate::spool::{self, IdGen, Spool};
use crate::wake::Wake;
use crate::worker::{Control, Report, Store, Worker};
use crossbeam_channel::Sender;
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Pending connections per listener; the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// What starting one worker needs besides its backend.
struct WorkerContext<'a> {
    id: usize,
    cpu: Option<usize>,
    config: &'a ServerConfig,
    settings: &'a Arc<Settings>,
    active: &'a Arc<AtomicUsize>,
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
        let store = if self.config.sink {
            Store::Sink(IdGen::new(id))
        } else {
            Store::Spool(
                Spool::start(
                    id,
                    self.config.spool.clone(),
                    self.config.proto.hostname.clone(),
                    self.config.proto.limits.spool_queue_bytes,
                    self.config.spool_sync,
                    waker.clone(),
                )
                .map_err(|e| format!("cannot start spool writer: {e}"))?,
            )
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (settings, active, cpu) = (self.settings.clone(), self.active.clone(), self.cpu);
        let thread = std::thread::Builder::new()
            .name(format!("ringmx-worker-{id}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                Worker::new(id, backend, settings, store, rx, active).run()
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
pub fn serve(config: ServerConfig, stats_file: Option<PathBuf>) -> Result<Report, String> {
    config.validate().map_err(|e| e.to_string())?;
    let backend = backend::choose(config.backend)?;
    let signals = block_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    raise_nofile_limit();
    let cpus = allowed_cpus();
    let workers = if config.workers == 0 {
        cpus.len().max(1)
    } else {
        config.workers
    };
    let backend_config = backend_config(&config.proto.limits);
    if !config.sink {
        let removed =
            spool::recover(&config.spool).map_err(|e| format!("spool {}: {e}", config.spool.display()))?;
        if removed > 0 {
            tracing::warn!(removed, spool = %config.spool.display(), "removed uncommitted files");
        }
    }
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in &config.listen {
        // Port 0 is resolved by the first bind; the other workers share the port it got.
        let mut addr = addr;
        for listeners in &mut per_worker {
            let listener = bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            addr = listener.local_addr().map_err(|e| e.to_string())?;
            listeners.push(listener);
        }
        bound.push(addr);
    }
    let settings = Settings::new(config.proto.clone());
    let active = Arc::new(AtomicUsize::new(0));
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
        };
        let started = backend::open(backend, listeners, &backend_config, &ctx)??;
        backend_name = started.backend;
        threads.push(started.thread);
        controls.push((started.control, started.waker));
    }
    let mut listeners = String::new();
    for (i, addr) in bound.iter().enumerate() {
        let _ = write!(listeners, "{}{addr}", if i > 0 { "," } else { "" });
    }
    tracing::info!(
        listeners = %listeners,
        backend = backend_name,
        workers,
        spool = %if config.sink {
            "sink".to_string()
        } else {
            format!("{} (sync: {:?})", config.spool.display(), config.spool_sync)
        },
        "ringmx started"
    );
    std::thread::Builder::new()
        .name("ringmx-signals".into())
        .spawn(move || wait_for_signals(signals, controls))
        .map_err(|e| format!("cannot start signal thread: {e}"))?;
    let mut report = Report::default();
    for thread in threads {
        match thread.join() {
            Ok(r) => report.merge(&r),
            Err(_) => return Err("a worker panicked".into()),
        }
    }
    let line = stats_line(&report);
    tracing::info!("stopped: {line}");
    if let Some(path) = stats_file {
        std::fs::write(&path, stats_json(&report) + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(report)
}

/// What the backends are built with, from the configured limits.
fn backend_config(limits: &Limits) -> BackendConfig {
    BackendConfig {
        read_budget: limits.read_budget,
        recv_buffer_size: limits.input_buffer,
        slot_reserve: limits.max_connections.min(1 << 16),
        uring_entries: limits.uring_entries,
        uring_sqpoll: limits.uring_sqpoll,
        uring_buffers: limits.uring_buffers,
        uring_buffer_size: limits.uring_buffer_size,
        uring_min_wait_us: limits.uring_min_wait_us,
    }
}

/// The counters as `key=value` pairs.
fn stats_line(r: &Report) -> String {
    format!(
        "accepted={} rejected={} commands={} messages={} reads={} writes={}",
        r.accepted, r.rejected, r.stats.commands, r.stats.messages, r.io.reads, r.io.writes
    )
}

/// The counters as one JSON object, for `--stats-file`: the top-level counts, then the
/// backend's own figures under `io`.
fn stats_json(r: &Report) -> String {
    serde_json::json!({
        "accepted": r.accepted,
        "rejected": r.rejected,
        "commands": r.stats.commands,
        "errors": r.stats.errors,
        "messages": r.stats.messages,
        "io": r.io,
    })
    .to_string()
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

/// Blocks SIGTERM and SIGINT in this thread and (by inheritance) every thread it starts, so
/// they are only ever taken by `sigwait` in the signal thread. Ignores SIGXFSZ, so a file
/// size limit shows up as `EFBIG` on the spool write (answered 452), not as a dead server.
fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset before use; the calls only
    // read and write the set we own and this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        Ok(set)
    }
}

/// The first signal starts a graceful shutdown; a second one exits at once.
fn wait_for_signals(set: libc::sigset_t, controls: Vec<(Sender<Control>, Arc<dyn Wake>)>) {
    let mut first = true;
    loop {
        let mut sig = 0;
        // SAFETY: `set` is an initialized signal set and `sig` a valid out-pointer.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            continue;
        }
        if !first {
            tracing::warn!(signal = sig, "second signal, exiting at once");
            std::process::exit(1);
        }
        first = false;
        tracing::info!(signal = sig, "shutting down");
        for (tx, waker) in &controls {
            let _ = tx.try_send(Control::Shutdown);
            waker.wake();
        }
    }
}

/// Raises the soft descriptor limit to the hard one: each connection needs a descriptor.
fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
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
