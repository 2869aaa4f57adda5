//! Who a connection is before its session starts: the PROXY header a balancer sends first on a proxy listener, then the per-client limits on the real client's address.
//!
//! A connection on a plain or implicit TLS listener is admitted at accept; one on a proxy
//! listener first has its PROXY header read (from a `proxy_trusted` address only, within
//! `proxy_header_timeout_secs`), which replaces the balancer's address with the client's for
//! everything after: the relay decision, the per-client limits, the `Received:` header, the
//! envelope and the logs. Only then does the session start (or the implicit TLS handshake,
//! whose ClientHello may follow the header in the same packet).

use super::conn::{Conn, Shared};
use crate::backend::Token;
use crate::policy::clients::Refusal;
use crate::proto::CloseReason;
use crate::proxy::{self, Origin, Parsed, ProxyError};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// A connection waiting for its PROXY header, due `proxy_header_timeout_secs` after its
/// accept (`Conn::started`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxyWait {
    /// The listener is an implicit TLS one: the handshake follows the header.
    pub(crate) tls: bool,
}

/// A worker's PROXY and per-client counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AdmitStats {
    /// PROXY headers naming a client.
    pub proxied: u64,
    /// Complete headers by version (a v1 line starts with `PROXY`, a v2 header with CR).
    pub v1: u64,
    pub v2: u64,
    /// PROXY headers for the balancer's own connections (v1 `UNKNOWN`, v2 `LOCAL`).
    pub local: u64,
    /// Connections to a proxy listener from outside `proxy_trusted`, closed at once.
    pub untrusted: u64,
    /// PROXY headers not complete within `proxy_header_timeout_secs`.
    pub timeout: u64,
    /// Bad PROXY headers, indexed as `ProxyError::ALL`.
    pub errors: [u64; ProxyError::COUNT],
    /// Connections over `max_connections_per_client`.
    pub client_connections: u64,
    /// Connections over `connection_rate_per_client`.
    pub client_rate: u64,
}

impl AdmitStats {
    pub fn merge(&mut self, o: &AdmitStats) {
        self.proxied += o.proxied;
        self.v1 += o.v1;
        self.v2 += o.v2;
        self.local += o.local;
        self.untrusted += o.untrusted;
        self.timeout += o.timeout;
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a += b;
        }
        self.client_connections += o.client_connections;
        self.client_rate += o.client_rate;
    }

    /// The PROXY counters by name, for the stats file.
    pub fn proxy_by_name(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        [
            ("proxied", self.proxied),
            ("v1", self.v1),
            ("v2", self.v2),
            ("local", self.local),
            ("untrusted", self.untrusted),
            ("timeout", self.timeout),
        ]
        .into_iter()
        .chain(
            ProxyError::ALL
                .iter()
                .map(|e| (e.name(), self.errors[*e as usize])),
        )
    }
}

impl Conn {
    /// Takes the first octets of a proxy listener's connection: once the header is complete,
    /// the connection is the client's and starts; what followed the header is handled as the
    /// session's (or the handshake's) first input.
    pub(crate) fn receive_proxy_header(
        &mut self,
        sh: &mut Shared,
        token: Token,
        wait: ProxyWait,
        buf: &[u8],
    ) {
        sh.pool.ensure(&mut self.input);
        self.input.extend_from_slice(buf);
        match proxy::parse(&self.input, sh.proxy_header_max) {
            Ok(Parsed::Incomplete) => {}
            Ok(Parsed::Complete { origin, len }) => {
                if self.input[0] == b'P' {
                    sh.admit_stats.v1 += 1;
                } else {
                    sh.admit_stats.v2 += 1;
                }
                match origin {
                    Origin::Proxied { source, .. } => {
                        sh.admit_stats.proxied += 1;
                        self.peer = source;
                    }
                    Origin::Local => sh.admit_stats.local += 1,
                }
                self.proxy = None;
                let rest = self.input.split_off(len);
                let header = std::mem::take(&mut self.input);
                sh.pool.put(header);
                self.begin(sh, token, wait.tls);
                if !rest.is_empty() && !self.phase.ended() {
                    self.receive(sh, token, &rest);
                }
            }
            Err(e) => {
                sh.admit_stats.errors[e as usize] += 1;
                tracing::debug!(peer = %self.peer, error = e.name(), "bad PROXY header");
                self.abandon(sh, token, CloseReason::Proxy);
            }
        }
    }

    /// When the PROXY header is due, while it is awaited.
    pub(crate) fn proxy_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.proxy.map(|_| self.started + timeout)
    }

    /// The PROXY header did not come in time.
    pub(crate) fn proxy_timed_out(&mut self, sh: &mut Shared, token: Token) {
        sh.admit_stats.timeout += 1;
        self.abandon(sh, token, CloseReason::Proxy);
    }

    /// The client is known: checks the per-client limits, then starts the session (or, on an
    /// implicit TLS listener, the handshake, after which the session starts).
    pub(crate) fn begin(&mut self, sh: &mut Shared, token: Token, tls: bool) {
        if let Err(refusal) = self.admit(sh) {
            match refusal {
                Refusal::TooManyConnections => sh.admit_stats.client_connections += 1,
                Refusal::RateExceeded => sh.admit_stats.client_rate += 1,
            }
            // One line per thousand refusals: a flood must not become a log flood.
            if (sh.admit_stats.client_connections + sh.admit_stats.client_rate) % 1000 == 1 {
                tracing::warn!(client = %self.peer, ?refusal, "per-client limit");
            }
            // Postfix's texts. On an implicit TLS listener there is no plaintext to say it in.
            if !tls {
                sh.pool.ensure(&mut self.out);
                let what = match refusal {
                    Refusal::TooManyConnections => "connections",
                    Refusal::RateExceeded => "connection attempts",
                };
                let mut line = String::new();
                let _ = write!(
                    line,
                    "421 4.7.0 Error: too many {what} from {}\r\n",
                    self.peer.ip()
                );
                self.out.extend_from_slice(line.as_bytes());
            }
            return self.abandon(sh, token, CloseReason::ClientLimit);
        }
        if tls {
            if !self.start_tls(sh, Vec::new()) {
                self.abandon(sh, token, CloseReason::TlsError);
            }
            return;
        }
        sh.pool.ensure(&mut self.out);
        let client = sh.client(self.peer, false);
        self.session.handle_start(sh.now, client, &mut self.out);
        self.events(sh, token);
    }

    /// Counts the connection against its client's limits, unless the client is exempt.
    fn admit(&mut self, sh: &mut Shared) -> Result<(), Refusal> {
        let Some(table) = &sh.clients else {
            return Ok(());
        };
        if !sh.limit_relay_networks && sh.client(self.peer, false).relay {
            return Ok(());
        }
        self.admitted = Some(table.admit(self.peer.ip(), sh.now)?);
        Ok(())
    }
}
