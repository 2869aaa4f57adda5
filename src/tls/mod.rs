//! Turns the operator's certificate files into the rustls server configuration for TLS.
//!
//! TLS is what RFC 3207 (STARTTLS) and RFC 8314 (implicit TLS on submissions) put under
//! SMTP. The configuration offers TLS 1.2 and 1.3 only (rustls implements nothing older),
//! asks clients for no certificate, and offers no ALPN (SMTP defines no protocol id).
//! `certs` reads and checks each configured entry, `sni` picks one per handshake from the
//! client's server name and signature schemes. Resumption state (the ticket keys and the
//! session cache) belongs to the [`TlsContext`] and outlives every reload, so a client that
//! resumed before a certificate change still resumes after it.

mod certs;
mod sni;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::{ProtocolVersion, ServerConfig, ServerConnection};

pub use certs::CertEntry;

/// What the worker needs: a config for new handshakes. Built once at start, rebuilt on reload.
#[derive(Debug)]
pub struct TlsContext {
    provider: Arc<CryptoProvider>,
    /// RFC 5077 / RFC 8446 §4.6.1 tickets: the session state travels encrypted to the
    /// client, so resumption costs no server memory. The keys are random and rotate every
    /// 6 hours (a ticket lives 12), which bounds what a leaked key would expose.
    ticketer: Arc<dyn ProducesTickets>,
    /// The bounded server-side cache for TLS 1.2 clients that resume by session id
    /// rather than by ticket.
    sessions: Arc<dyn StoresServerSessions>,
    config: Arc<ServerConfig>,
}

impl TlsContext {
    /// Loads every entry (the first is the default for clients without SNI or with an
    /// unknown name). Err is an operator-facing message naming the file and what is wrong.
    /// `session_cache` bounds the server-side session cache (entries; 0 disables it).
    pub fn new(entries: &[CertEntry], session_cache: usize) -> Result<TlsContext, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| format!("TLS session ticket keys: {e}"))?;
        let sessions: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(session_cache);
        let config = build(&provider, &ticketer, &sessions, entries)?;
        Ok(TlsContext {
            provider,
            ticketer,
            sessions,
            config,
        })
    }

    /// Re-reads the files; on any error returns Err(message) and keeps the old
    /// certificates. On success, new handshakes get the new ones. The session cache and the
    /// ticketer are kept across reloads (resumption survives a reload).
    pub fn reload(&mut self, entries: &[CertEntry]) -> Result<(), String> {
        self.config = self.prepare(entries)?;
        Ok(())
    }

    /// Loads `entries` into a configuration sharing this context's resumption state, without
    /// putting it in force: a reload loads every part first and installs all or nothing.
    pub fn prepare(&self, entries: &[CertEntry]) -> Result<Arc<ServerConfig>, String> {
        build(&self.provider, &self.ticketer, &self.sessions, entries)
    }

    /// Puts a configuration from [`TlsContext::prepare`] in force for new handshakes.
    pub fn install(&mut self, config: Arc<ServerConfig>) {
        self.config = config;
    }

    /// The config for new handshakes (cheap clone of an Arc).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }
}

/// A fresh configuration over `entries` that shares the resumption state.
fn build(
    provider: &Arc<CryptoProvider>,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions>,
    entries: &[CertEntry],
) -> Result<Arc<ServerConfig>, String> {
    if entries.is_empty() {
        return Err("TLS needs at least one certificate".to_owned());
    }
    let loaded = entries
        .iter()
        .enumerate()
        .map(|(i, entry)| certs::load(entry, i == 0, provider))
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(sni::Resolver::new(loaded)));
    config.ticketer = Arc::clone(ticketer);
    config.session_storage = Arc::clone(sessions);
    // rustls leaves 0-RTT off (`max_early_data_size` 0): early data can be replayed
    // (RFC 8446 §8), and a replayed MAIL/RCPT/DATA would deliver a message twice.
    Ok(Arc::new(config))
}

/// The protocol and cipher suite of an established connection, for the log line Postfix
/// writes after a handshake (`TLSv1.3`, `TLS13_AES_256_GCM_SHA384`); None while handshaking.
/// The suite names are rustls' (the IANA names), not OpenSSL's.
pub fn describe(conn: &ServerConnection) -> Option<(&'static str, &'static str)> {
    let version = match conn.protocol_version()? {
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => return None,
    };
    Some((version, conn.negotiated_cipher_suite()?.suite().as_str()?))
}
