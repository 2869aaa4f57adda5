//! Delivery to the next hop: the queue runner beside the accepting workers, relaying every committed message over SMTP or LMTP with pooled, pipelined connections, retries with backoff, and a notification for what fails.
//!
//! The data path after the spool: a committer commits a message and sends its id to the
//! runner ([`runner`]); the runner routes each recipient ([`route`]) and hands work to the
//! destination's pool ([`pool`]), whose threads each keep one connection ([`client`]) and run
//! transactions on it ([`transfer`], replies parsed by [`reply`]); outcomes come back to the
//! runner, which marks recipients done in the spool, saves the schedule of deferred ones
//! ([`state`]), and commits a notification ([`dsn`]) before a message with failed recipients
//! goes. `ringmx queue` talks to the runner over [`control`]. None of it runs on a worker's
//! thread: the event loops see only the committers' channel send per message.

mod client;
pub mod control;
mod dsn;
mod health;
mod log;
mod message;
mod pool;
pub mod reply;
mod route;
mod runner;
mod state;
mod stats;
mod transfer;

pub use route::{Dest, Protocol, Routes};
pub use stats::{DestStats, QueueGauges, Stats};

use crate::config::{DeliveryLimits, RelayTls, ServerConfig};
use crate::spool::{Backing, FilesQueue, LogSpool, Queue, Spool};
use crate::wake::Wake;
use client::ClientSettings;
use crossbeam_channel::Sender;
use runner::{Control, Runner};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What the runner and every delivery thread share.
pub(crate) struct Shared {
    hostname: String,
    limits: DeliveryLimits,
    client: Arc<ClientSettings>,
    /// Set at shutdown: delivery threads end after their current transaction.
    stop: Arc<AtomicBool>,
}

impl Shared {
    /// From the configuration: the hostname for EHLO, the limits, the client's TLS.
    fn new(config: &ServerConfig, stop: Arc<AtomicBool>) -> Result<Shared, String> {
        let d = &config.delivery;
        let limits = d.limits.clone();
        let client = Arc::new(ClientSettings {
            hostname: config.proto.hostname.clone(),
            tls: d.relay_tls,
            tls_config: tls_config(d.relay_tls, d.relay_tls_ca_file.as_deref())?,
            connect_timeout: Duration::from_secs(limits.relay_connect_timeout_secs),
            reply_timeout: Duration::from_secs(limits.relay_reply_timeout_secs),
            bounds: reply::Bounds {
                line_max: limits.relay_reply_line_max,
                lines_max: limits.relay_reply_lines_max,
            },
        });
        Ok(Shared {
            hostname: config.proto.hostname.clone(),
            limits,
            client,
            stop,
        })
    }
}

/// What a reload gives delivery, loaded and checked before anything is put in force.
pub struct Reload {
    routes: Routes,
    shared: Shared,
}

/// Sends a reload to the queue runner.
pub struct ReloadHandle(Sender<Control>);

impl ReloadHandle {
    /// Puts `reload` in force: work handed to a destination from now on uses the new routes,
    /// limits and TLS settings; connections at work finish their transaction first.
    pub fn reload(&self, reload: Reload) {
        let _ = self.0.send(Control::Reload(reload.routes, reload.shared));
    }
}

/// The running delivery side of a server.
pub struct Delivery {
    feed: Sender<String>,
    control: Sender<Control>,
    gauges: Arc<QueueGauges>,
    thread: Option<JoinHandle<Stats>>,
    socket: PathBuf,
}

/// The notifications' committer never wakes a worker: the runner waits on its results.
struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

/// Descriptors delivery may hold at once with `config`, 0 if nothing is routed: per
/// destination, `destination_concurrency` connections, each with its socket, the message it
/// sends and a moment's open of its envelope; the notifications' committer (its log segments,
/// or a message's two files with the directory); the queue runner's own opens (a compaction's
/// copy and source with the directory, a state file it reads); the state writer's (a state
/// file and its directory); the control socket and one client of it. Counted at start: routes
/// added by a reload are not.
pub fn descriptors(config: &ServerConfig) -> u64 {
    let d = &config.delivery;
    let Ok(routes) = Routes::new(d.relay_to.as_deref(), &d.routes) else {
        return 0;
    };
    if routes.is_empty() {
        return 0;
    }
    let connections = routes.destinations() as u64 * d.limits.destination_concurrency as u64;
    let notifications = crate::spool::log::COMMITTER_DESCRIPTORS.max(3);
    connections * 3 + notifications + 4 + 2 + 2
}

impl Delivery {
    /// Starts the queue runner for the (recovered) spool `backing` if anything is routed
    /// (`relay_to` or `[routes]`); `dsn_worker` numbers the notifications' committer after
    /// the workers', so their queue ids never collide.
    pub fn start(
        config: &ServerConfig,
        backing: &Backing,
        dsn_worker: usize,
    ) -> Result<Option<Delivery>, String> {
        let d = &config.delivery;
        let routes = Routes::new(d.relay_to.as_deref(), &d.routes)?;
        if routes.is_empty() {
            return Ok(None);
        }
        let (queue, log): (Arc<dyn Queue>, Option<Arc<LogSpool>>) = match backing {
            Backing::Log(log) => (log.clone(), Some(log.clone())),
            Backing::Files { dir, .. } => (Arc::new(FilesQueue::new(dir)), None),
        };
        let shared = Arc::new(Shared::new(config, Arc::new(AtomicBool::new(false)))?);
        let (feed, committed) = crossbeam_channel::unbounded();
        let (control, control_rx) = crossbeam_channel::unbounded();
        let dsn_spool = Spool::start(
            dsn_worker,
            backing.clone(),
            config.proto.hostname.clone(),
            config.limits.spool_queue_bytes,
            Arc::new(NoWake),
            Some(feed.clone()),
        )
        .map_err(|e| format!("cannot start the notifications' spool writer: {e}"))?;
        let states = state::StateStore::open(&config.spool)
            .map_err(|e| format!("spool {}: {e}", config.spool.display()))?;
        let writer = state::Writer::start(states.clone())
            .map_err(|e| format!("cannot start the delivery state writer: {e}"))?;
        let gauges = Arc::new(QueueGauges::default());
        let runner = Runner::new(
            queue,
            log,
            states,
            writer,
            routes,
            shared,
            committed,
            control_rx,
            dsn_spool,
            gauges.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("ringmx-queue".into())
            .spawn(move || runner.run())
            .map_err(|e| format!("cannot start the queue runner: {e}"))?;
        let socket = control::serve(&config.spool, control.clone()).map_err(|e| {
            format!(
                "cannot open the control socket in {}: {e}",
                config.spool.display()
            )
        })?;
        Ok(Some(Delivery {
            feed,
            control,
            gauges,
            thread: Some(thread),
            socket,
        }))
    }

    /// Loads the routes and the client settings of `config` for [`Delivery::reload`]: the
    /// files it names (`relay_tls_ca_file`) are read here, so a bad one refuses the reload.
    /// A configuration without routes is refused too: delivery cannot stop without a restart.
    pub fn prepare(config: &ServerConfig) -> Result<Reload, String> {
        let d = &config.delivery;
        let routes = Routes::new(d.relay_to.as_deref(), &d.routes)?;
        if routes.is_empty() {
            return Err("relay_to and routes cannot both be removed without a restart".into());
        }
        // The runner keeps its own stop flag; this one is never looked at.
        let shared = Shared::new(config, Arc::new(AtomicBool::new(false)))?;
        Ok(Reload { routes, shared })
    }

    /// How a reload reaches the runner, from another thread.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle(self.control.clone())
    }

    /// Where committers send the id of each message they commit.
    pub fn feed(&self) -> Sender<String> {
        self.feed.clone()
    }

    /// A handle the metrics thread asks the runner's counters with.
    pub fn stats_source(&self) -> StatsSource {
        StatsSource {
            control: self.control.clone(),
            gauges: self.gauges.clone(),
        }
    }

    /// Stops the runner: deliveries in flight get up to `grace` to finish and be marked;
    /// what is cut off is delivered again at the next start (a duplicate, never a loss).
    pub fn stop(mut self, grace: Duration) -> Stats {
        control::remove(&self.socket);
        let _ = self.control.send(Control::Stop(grace));
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(stats)) => stats,
            _ => {
                tracing::error!("the queue runner panicked");
                Stats::default()
            }
        }
    }
}

/// Asks the running queue runner for its counters, from another thread; reads the queue's
/// gauges it publishes without asking.
#[derive(Clone)]
pub struct StatsSource {
    control: Sender<Control>,
    gauges: Arc<QueueGauges>,
}

impl StatsSource {
    /// Asks the runner for its counters; the answer arrives on the returned channel between
    /// the runner's other work. None once the runner has stopped.
    pub fn ask(&self) -> Option<crossbeam_channel::Receiver<Stats>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.control.send(Control::Snapshot(tx)).ok()?;
        Some(rx)
    }

    /// The queue's size and its oldest message's age in seconds, as of the runner's last turn.
    pub fn queue(&self) -> (u64, u64) {
        self.gauges.read(std::time::SystemTime::now())
    }
}

/// The spool of a stopped server, for `ringmx queue`: the log if it has one, else the files.
fn open_queue(spool: &Path) -> std::io::Result<Arc<dyn Queue>> {
    if spool.join(crate::spool::log::LOG_DIR).is_dir() {
        let segment_size = crate::config::ServerLimits::default().spool_segment_size;
        let (log, _) = LogSpool::recover(spool, segment_size)?;
        Ok(log)
    } else {
        crate::spool::recover(spool)?;
        Ok(Arc::new(FilesQueue::new(spool)))
    }
}

/// The rustls client configuration for STARTTLS to the next hop.
fn tls_config(mode: RelayTls, ca_file: Option<&Path>) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match mode {
        RelayTls::None => return Ok(None),
        RelayTls::May => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Opportunistic(provider)))
            .with_no_client_auth(),
        RelayTls::Require => {
            let path = ca_file.unwrap_or(Path::new("/etc/ssl/certs/ca-certificates.crt"));
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("relay_tls_ca_file {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("relay_tls_ca_file {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("relay_tls_ca_file {}: no certificate", path.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// Opportunistic TLS (RFC 7435, Postfix's `may`): any certificate is taken, since the
/// alternative is plaintext, but the handshake's signatures are still checked, so the session
/// is encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct Opportunistic(Arc<CryptoProvider>);

impl ServerCertVerifier for Opportunistic {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
