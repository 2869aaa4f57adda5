//! SIGHUP: re-reads the configuration file, loads everything it names, and puts it in force for new sessions, or refuses it whole and keeps the running one.
//!
//! A reload is all or nothing. The file is read and checked as at start (the same messages),
//! then every file it names is loaded: the certificates, the recipients table, delivery's CA
//! file. Only when all of that succeeded is anything sent to the workers and the queue runner,
//! so a broken file never leaves half a configuration in force. Sessions already open keep
//! what they started with (their `Arc<Settings>`, their TLS session); connections accepted
//! after the workers take the update get the new values.
//!
//! Some keys cannot change in a running process: the listeners, the workers and their
//! backend, the spool, the user, the metrics listener, the buffers sized at start. A change to
//! one of them is logged as needing a restart and the running value stays; the rest of the
//! file is still applied. The certificates and the recipients table are re-read on every
//! reload even when their paths did not change: a renewed certificate (`certbot` deploy hook,
//! `systemctl reload`) is the common case.

use crate::config::{changed_keys, ServerConfig};
use crate::delivery::Delivery;
use crate::policy::clients::ClientTable;
use crate::policy::recipients::Recipients;
use crate::proto::Settings;
use crate::tls::TlsContext;
use crate::wake::Wake;
use crate::worker::{Control, Live, Reload};
use crossbeam_channel::Sender;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Reloads put in force, for the metrics (`ringmx_config_reloads_total{result="applied"}`).
pub static APPLIED: AtomicU64 = AtomicU64::new(0);
/// Reloads refused, the running configuration kept.
pub static REFUSED: AtomicU64 = AtomicU64::new(0);
/// When the last reload was put in force (or the server started), in seconds since the epoch.
pub static LAST_APPLIED: AtomicU64 = AtomicU64::new(0);

/// Keys a running server cannot change: they size or own what was set up at start.
const RESTART_KEYS: &[&str] = &[
    "listen",
    "listen_tls",
    "workers",
    "backend",
    "spool",
    "sink",
    "spool_format",
    "spool_sync",
    "user",
    "metrics_listen",
    "log_format",
    "max_connections",
    "read_budget",
    "input_buffer",
    "spool_queue_bytes",
    "spool_segment_size",
    "uring_entries",
    "uring_sqpoll",
    "uring_buffers",
    "uring_buffer_size",
    "uring_min_wait_us",
    "tls_session_cache",
    "client_ipv6_prefix",
    "client_table_size",
    "log_buffer_lines",
];

/// The worker settings of a configuration that a reload may change.
pub(crate) fn live(config: &ServerConfig) -> Live {
    let limits = &config.limits;
    Live {
        shutdown_grace: Duration::from_secs(limits.shutdown_grace_secs),
        handshake_timeout: Duration::from_secs(limits.tls_handshake_timeout_secs),
        relay_networks: config.relay_networks.clone().into(),
        proxy_trusted: config.proxy_trusted.clone().into(),
        proxy_timeout: Duration::from_secs(limits.proxy_header_timeout_secs),
        proxy_header_max: limits.proxy_header_max,
        limit_relay_networks: limits.client_limits_for_relay_networks,
    }
}

/// Reads the configuration again: the file and the command line's flags over it, as at start.
pub type Source = Box<dyn FnMut() -> Result<ServerConfig, String> + Send>;

/// What SIGHUP needs: where the configuration comes from, what is in force, and whom to tell.
pub(crate) struct Reloader {
    pub(crate) source: Source,
    /// The configuration in force, as configured (before `max_connections` was fitted to the
    /// descriptor limit), with the keys that need a restart at their start values.
    pub(crate) running: ServerConfig,
    pub(crate) tls: Option<TlsContext>,
    pub(crate) clients: Arc<ClientTable>,
    pub(crate) delivery: Option<crate::delivery::ReloadHandle>,
    pub(crate) workers: Vec<(Sender<Control>, Arc<dyn Wake>)>,
}

/// Everything a new configuration needs, loaded and checked, not yet in force.
struct Loaded {
    config: ServerConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    new_tls: Option<TlsContext>,
    settings: Arc<Settings>,
    delivery: Option<crate::delivery::Reload>,
    restart: Vec<String>,
    changed: Vec<String>,
}

impl Reloader {
    /// Reloads, logging what changed, what needs a restart, or why the file was refused.
    pub(crate) fn reload(&mut self) {
        match self.load() {
            Ok(loaded) => self.install(loaded),
            Err(e) => {
                REFUSED.fetch_add(1, Ordering::Relaxed);
                tracing::error!(signal = "SIGHUP", error = %e, "reload refused, the running configuration stays");
            }
        }
    }

    fn load(&mut self) -> Result<Loaded, String> {
        let mut config = (self.source)()?;
        config.validate().map_err(|e| e.to_string())?;
        let changed = changed_keys(&self.running, &config);
        let mut restart: Vec<String> = changed
            .iter()
            .filter(|k| RESTART_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        keep_restart_keys(&self.running, &mut config);
        let limits = &config.limits;
        let rate_switch =
            (limits.connection_rate_per_client == 0) != (self.running.limits.connection_rate_per_client == 0);
        if rate_switch {
            // The table keeps its eviction order only with a rate (see `set_limits`).
            restart.push("connection_rate_per_client".into());
            config.limits.connection_rate_per_client = self.running.limits.connection_rate_per_client;
        }
        let entries = config.cert_entries();
        let (tls, new_tls) = match (&self.tls, entries.is_empty()) {
            (_, true) => (None, None),
            (Some(ctx), false) => (Some(ctx.prepare(&entries)?), None),
            (None, false) => {
                let ctx = TlsContext::new(&entries, config.limits.tls_session_cache)?;
                (Some(ctx.server_config()), Some(ctx))
            }
        };
        let recipients =
            Recipients::new(&config.domains, config.recipients.as_deref()).map_err(|e| e.to_string())?;
        let mut proto = config.proto.clone();
        proto.starttls = tls.is_some();
        let settings = Settings::with_recipients(proto, Arc::new(recipients));
        let routed = config.delivery.relay_to.is_some() || !config.delivery.routes.is_empty();
        let delivery = match (&self.delivery, routed) {
            (Some(_), _) => Some(Delivery::prepare(&config)?),
            (None, true) => {
                // Committers were started without a feed to a runner.
                restart.push("relay_to".into());
                restart.push("routes".into());
                config.delivery.relay_to = None;
                config.delivery.routes.clear();
                None
            }
            (None, false) => None,
        };
        restart.sort();
        restart.dedup();
        Ok(Loaded {
            config,
            tls,
            new_tls,
            settings,
            delivery,
            restart,
            changed,
        })
    }

    fn install(&mut self, loaded: Loaded) {
        let Loaded {
            config,
            tls,
            new_tls,
            settings,
            delivery,
            restart,
            changed,
        } = loaded;
        match (new_tls, &tls) {
            (Some(ctx), _) => self.tls = Some(ctx),
            (None, Some(tls)) => {
                if let Some(ctx) = self.tls.as_mut() {
                    ctx.install(tls.clone());
                }
            }
            // Every certificate removed (possible without implicit TLS listeners): STARTTLS
            // is no longer offered to new sessions.
            (None, None) => self.tls = None,
        }
        let limits = &config.limits;
        // Refused only for a switch of the rate on or off, which `load` kept out.
        let _ = (self.clients).set_limits(
            limits.max_connections_per_client,
            limits.connection_rate_per_client,
        );
        if let (Some(d), Some(reload)) = (&self.delivery, delivery) {
            d.reload(reload);
        }
        let level = match crate::logging::set_level(&config.log_level) {
            Ok(change) => change,
            Err(e) => {
                tracing::warn!(error = %e, "log_level not changed");
                crate::logging::LevelChange::NotInstalled
            }
        };
        let reload = Arc::new(Reload {
            settings,
            live: live(&config),
            tls,
        });
        for (tx, waker) in &self.workers {
            if tx.try_send(Control::Reload(reload.clone())).is_err() {
                tracing::warn!("a worker did not take the reload: its control queue is full");
            }
            waker.wake();
        }
        let applied: Vec<&String> = changed.iter().filter(|k| !restart.contains(k)).collect();
        for key in &restart {
            tracing::warn!(signal = "SIGHUP", key = %key, "changed, takes effect after a restart");
        }
        if level == crate::logging::LevelChange::KeptFromEnv && applied.iter().any(|k| *k == "log_level") {
            tracing::warn!(
                signal = "SIGHUP",
                "log_level changed but RUST_LOG is set and wins"
            );
        }
        self.running = config;
        APPLIED.fetch_add(1, Ordering::Relaxed);
        LAST_APPLIED.store(unix_now(), Ordering::Relaxed);
        tracing::info!(
            signal = "SIGHUP",
            changed = %list(applied.iter().map(|k| k.as_str())),
            restart_needed = %list(restart.iter().map(String::as_str)),
            certificates = self.tls.is_some(),
            "configuration reloaded"
        );
    }
}

/// Sets every key that needs a restart back to its running value.
fn keep_restart_keys(r: &ServerConfig, c: &mut ServerConfig) {
    c.listen.clone_from(&r.listen);
    c.listen_tls.clone_from(&r.listen_tls);
    c.workers = r.workers;
    c.backend = r.backend;
    c.spool.clone_from(&r.spool);
    c.sink = r.sink;
    c.spool_format = r.spool_format;
    c.spool_sync = r.spool_sync;
    c.user.clone_from(&r.user);
    c.metrics_listen = r.metrics_listen;
    c.log_format = r.log_format;
    let (l, rl) = (&mut c.limits, &r.limits);
    l.max_connections = rl.max_connections;
    l.read_budget = rl.read_budget;
    l.input_buffer = rl.input_buffer;
    l.spool_queue_bytes = rl.spool_queue_bytes;
    l.spool_segment_size = rl.spool_segment_size;
    l.uring_entries = rl.uring_entries;
    l.uring_sqpoll = rl.uring_sqpoll;
    l.uring_buffers = rl.uring_buffers;
    l.uring_buffer_size = rl.uring_buffer_size;
    l.uring_min_wait_us = rl.uring_min_wait_us;
    l.tls_session_cache = rl.tls_session_cache;
    l.client_ipv6_prefix = rl.client_ipv6_prefix;
    l.client_table_size = rl.client_table_size;
    l.log_buffer_lines = rl.log_buffer_lines;
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn list<'a>(keys: impl Iterator<Item = &'a str>) -> String {
    let keys: Vec<&str> = keys.collect();
    if keys.is_empty() {
        "-".into()
    } else {
        keys.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `RESTART_KEYS` (what is reported) and `keep_restart_keys` (what is kept) name the same
    /// keys: a configuration differing in every one of them differs in nothing once kept.
    #[test]
    fn the_restart_keys_reported_are_the_ones_kept() {
        let text = "listen = [\"127.0.0.1:26\"]\nlisten_tls = [\"127.0.0.1:465\"]\n\
                    tls_cert = \"/c\"\ntls_key = \"/k\"\nworkers = 3\nbackend = \"epoll\"\n\
                    spool = \"/s\"\nsink = true\nspool_format = \"files\"\n\
                    spool_sync = \"filesystem\"\nuser = \"nobody\"\n\
                    metrics_listen = \"127.0.0.1:9\"\nlog_format = \"json\"\n\
                    max_connections = 7\nread_budget = 2048\ninput_buffer = 4096\n\
                    spool_queue_bytes = 131072\nspool_segment_size = 131072\n\
                    uring_entries = 16\nuring_sqpoll = true\nuring_buffers = 4\n\
                    uring_buffer_size = 4096\nuring_min_wait_us = 5\ntls_session_cache = 5\n\
                    client_ipv6_prefix = 48\nclient_table_size = 128\nlog_buffer_lines = 2048\n";
        let running = ServerConfig::default();
        let mut new = ServerConfig::from_toml(text).unwrap();
        // The certificate keys are live; everything else in the text needs a restart.
        let mut expected: Vec<String> = RESTART_KEYS.iter().map(|k| k.to_string()).collect();
        expected.extend(["tls_cert".to_string(), "tls_key".to_string()]);
        expected.sort();
        assert_eq!(changed_keys(&running, &new), expected);
        keep_restart_keys(&running, &mut new);
        assert_eq!(changed_keys(&running, &new), ["tls_cert", "tls_key"]);
    }
}
