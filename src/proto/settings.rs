//! The protocol's configuration and the replies that depend only on it, rendered once and shared by every session of the server.

use super::reply::write_u64;
use crate::config::ProtoConfig;
use crate::policy::recipients::Recipients;
use std::sync::Arc;

/// The configuration plus the greeting and the HELO/EHLO replies, rendered once.
#[derive(Debug)]
pub struct Settings {
    pub config: ProtoConfig,
    pub(crate) greeting: Vec<u8>,
    /// The greeting's first line when the rest is delayed (`greet_delay_ms`).
    pub(crate) greeting_teaser: Vec<u8>,
    pub(crate) helo: Vec<u8>,
    /// The EHLO reply before TLS: it offers STARTTLS when a certificate is configured.
    pub(crate) ehlo: Vec<u8>,
    /// The EHLO reply inside TLS, which no longer offers STARTTLS (RFC 3207 §4.2).
    pub(crate) ehlo_tls: Vec<u8>,
    /// The accepted domains and their recipients, for RCPT.
    pub(crate) recipients: Arc<Recipients>,
}

impl Settings {
    /// Renders the replies, for a server that accepts mail for no domain (only
    /// `relay_networks` clients may send).
    pub fn new(config: ProtoConfig) -> Arc<Settings> {
        let none = Recipients::from_text(&[], "").expect("an empty table loads");
        Settings::with_recipients(config, Arc::new(none))
    }

    /// Renders the replies, with the accepted domains and recipients. The hostname is written
    /// into them as it is: the configuration checked it is a domain or an address literal
    /// (RFC 5321 §4.1.2) before it got here.
    pub fn with_recipients(config: ProtoConfig, recipients: Arc<Recipients>) -> Arc<Settings> {
        let host = config.hostname.as_bytes();
        let greeting = [b"220 ", host, b" ESMTP ringmx\r\n"].concat();
        let greeting_teaser = [b"220-", host, b" ESMTP ringmx\r\n"].concat();
        let helo = [b"250 ", host, b"\r\n"].concat();
        let render = |starttls: bool| {
            let mut ehlo = [b"250-", host, b"\r\n250-PIPELINING\r\n250-SIZE "].concat();
            write_u64(&mut ehlo, config.limits.max_message_size);
            if starttls {
                ehlo.extend_from_slice(b"\r\n250-STARTTLS");
            }
            ehlo.extend_from_slice(
                b"\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n",
            );
            ehlo
        };
        let (ehlo, ehlo_tls) = (render(config.starttls), render(false));
        Arc::new(Settings {
            greeting,
            greeting_teaser,
            helo,
            ehlo,
            ehlo_tls,
            config,
            recipients,
        })
    }
}
