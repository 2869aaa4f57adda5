//! What SIGHUP re-reads: the TLS certificates and the recipients table, handed to every worker for the sessions that start after it.
//!
//! Each part reloads on its own: a file that does not load is logged with its reason (the
//! recipients file with its line number) and leaves that part as it was, so one broken file
//! never takes the other's update with it, nor the running configuration. Sessions already
//! open keep what they started with (their `Arc<Settings>`, their TLS session); the rest of
//! the configuration is not re-read.

use crate::config::ProtoConfig;
use crate::policy::recipients::Recipients;
use crate::proto::Settings;
use crate::tls::{CertEntry, TlsContext};
use crate::wake::Wake;
use crate::worker::Control;
use crossbeam_channel::Sender;
use std::path::PathBuf;
use std::sync::Arc;

/// The parts of the configuration SIGHUP reloads, and the files they come from.
pub(crate) struct Reloadable {
    pub(crate) tls: Option<TlsContext>,
    pub(crate) cert_entries: Vec<CertEntry>,
    pub(crate) proto: ProtoConfig,
    pub(crate) domains: Vec<String>,
    pub(crate) recipients: Option<PathBuf>,
}

impl Reloadable {
    /// Re-reads every file and sends what loaded to each worker; what reloaded is logged once
    /// it is sent, so a client that saw the line finds it in force.
    pub(crate) fn reload(&mut self, workers: &[(Sender<Control>, Arc<dyn Wake>)]) {
        let mut updates = Vec::new();
        let mut reloaded = Vec::new();
        if let Some(tls) = self.tls.as_mut() {
            match tls.reload(&self.cert_entries) {
                Ok(()) => {
                    reloaded.push("certificates reloaded".to_string());
                    updates.push(Control::Tls(tls.server_config()));
                }
                Err(e) => tracing::error!(
                    signal = "SIGHUP",
                    error = %e,
                    "reload refused, the old certificates stay"
                ),
            }
        }
        if let Some(path) = &self.recipients {
            match Recipients::new(&self.domains, Some(path)) {
                Ok(table) => {
                    reloaded.push(format!("recipients reloaded addresses={}", table.len()));
                    let settings = Settings::with_recipients(self.proto.clone(), Arc::new(table));
                    updates.push(Control::Settings(settings));
                }
                Err(e) => tracing::error!(
                    signal = "SIGHUP",
                    error = %e,
                    "recipients reload refused, the old table stays"
                ),
            }
        }
        if updates.is_empty() && self.tls.is_none() && self.recipients.is_none() {
            tracing::info!(signal = "SIGHUP", "nothing to reload");
        }
        for (tx, waker) in workers {
            for update in &updates {
                if tx.try_send(update.clone()).is_err() {
                    tracing::warn!("a worker did not take the reload yet");
                }
            }
            waker.wake();
        }
        for line in reloaded {
            tracing::info!(signal = "SIGHUP", "{line}");
        }
    }
}
