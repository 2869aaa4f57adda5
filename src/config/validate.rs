//! Checking a configuration before use: every value against its range, the keys that need one another, and every value that reaches the wire against its kind; the errors name the key.

use super::{LimitSpec, ProtoConfig, ServerConfig, ServerLimits, MAX_WORKERS};
use std::fmt;

impl ServerConfig {
    /// Checks every value: the limits against their ranges, the server keys, and every value
    /// that reaches the wire; the message names the key and the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.proto.validate()?;
        self.limits.validate()?;
        self.delivery.limits.validate()?;
        if self.delivery.limits.min_backoff_secs > self.delivery.limits.max_backoff_secs {
            return Err(ConfigError::Requires {
                key: "min_backoff_secs",
                needs: "a value no greater than `max_backoff_secs`",
            });
        }
        if self.delivery.limits.destination_dead_secs > self.delivery.limits.min_backoff_secs {
            return Err(ConfigError::Requires {
                key: "destination_dead_secs",
                needs: "a value no greater than `min_backoff_secs` (0 takes it)",
            });
        }
        if let Some(dest) = &self.delivery.relay_to {
            if let Err(why) = dest.parse::<crate::delivery::Dest>() {
                return Err(ConfigError::Invalid {
                    key: "relay_to",
                    value: dest.clone(),
                    why,
                });
            }
        }
        for (domain, dest) in &self.delivery.routes {
            let domain_ok = is_domain_or_literal(domain.strip_prefix('.').unwrap_or(domain));
            if !domain_ok || dest.parse::<crate::delivery::Dest>().is_err() {
                return Err(ConfigError::Invalid {
                    key: "routes",
                    value: format!("{domain} = {dest}"),
                    why: "a domain (or .domain) and smtp:HOST:PORT, lmtp:HOST:PORT or lmtp:unix:PATH",
                });
            }
        }
        if let Some(user) = &self.user {
            if !is_user_name(user) {
                return Err(ConfigError::Invalid {
                    key: "user",
                    value: user.clone(),
                    why: "a user name (letters, digits, `_`, `-`, at most 32, not starting with a digit or `-`)",
                });
            }
        }
        if tracing_subscriber::EnvFilter::builder()
            .parse(&self.log_level)
            .is_err()
        {
            return Err(ConfigError::Invalid {
                key: "log_level",
                value: self.log_level.clone(),
                why: "a log filter (`info`, `warn,ringmx::delivery=debug`)",
            });
        }
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::Range(RangeError {
                key: "workers",
                value: self.workers as u64,
                min: 0,
                max: MAX_WORKERS as u64,
            }));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            let (key, needs) = if self.tls_cert.is_some() {
                ("tls_cert", "`tls_key`")
            } else {
                ("tls_key", "`tls_cert`")
            };
            return Err(ConfigError::Requires { key, needs });
        }
        let proxied = self.listen.iter().chain(&self.listen_tls).any(|l| l.proxy);
        if proxied && self.proxy_trusted.is_empty() {
            return Err(ConfigError::Requires {
                key: "listen",
                needs: "`proxy_trusted` for a PROXY listener",
            });
        }
        let tls = !self.cert_entries().is_empty();
        if !tls && !self.listen_tls.is_empty() {
            return Err(ConfigError::Requires {
                key: "listen_tls",
                needs: "a certificate (`tls_cert` or `tls_certificates`)",
            });
        }
        if !tls && self.proto.tls_required {
            return Err(ConfigError::Requires {
                key: "tls_required",
                needs: "a certificate (`tls_cert` or `tls_certificates`)",
            });
        }
        if self.limits.input_buffer < self.proto.limits.max_command_line {
            return Err(ConfigError::Range(RangeError {
                key: "input_buffer",
                value: self.limits.input_buffer as u64,
                min: self.proto.limits.max_command_line as u64,
                max: ServerLimits::TABLE
                    .iter()
                    .find(|s| s.name == "input_buffer")
                    .map_or(u64::MAX, |s| s.max),
            }));
        }
        Ok(())
    }
}

/// A value outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeError {
    pub key: &'static str,
    pub value: u64,
    pub min: u64,
    pub max: u64,
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "config key `{}` = {} is outside its allowed range {}..={}",
            self.key, self.value, self.min, self.max
        )
    }
}

impl std::error::Error for RangeError {}

pub(super) fn check_ranges(values: Vec<(&'static str, u64)>, table: &[LimitSpec]) -> Result<(), RangeError> {
    for ((key, value), spec) in values.into_iter().zip(table) {
        if value < spec.min || value > spec.max {
            return Err(RangeError {
                key,
                value,
                min: spec.min,
                max: spec.max,
            });
        }
    }
    Ok(())
}

/// A configuration value the server refuses to start with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A number outside its range.
    Range(RangeError),
    /// A value that is not of its kind (`why` says what it must be).
    Invalid {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    /// A key that only works together with another.
    Requires { key: &'static str, needs: &'static str },
}

impl ConfigError {
    /// The key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            ConfigError::Range(e) => e.key,
            ConfigError::Invalid { key, .. } | ConfigError::Requires { key, .. } => key,
        }
    }
}

impl From<RangeError> for ConfigError {
    fn from(e: RangeError) -> Self {
        ConfigError::Range(e)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Range(e) => e.fmt(f),
            ConfigError::Invalid { key, value, why } => {
                write!(f, "config key `{key}` = {value:?} is not {why}")
            }
            ConfigError::Requires { key, needs } => {
                write!(f, "config key `{key}` requires {needs}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl ProtoConfig {
    /// Checks the limits and every value the session writes into replies or headers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        if !is_domain_or_literal(&self.hostname) {
            return Err(ConfigError::Invalid {
                key: "hostname",
                value: self.hostname.clone(),
                why: "a domain or an address literal (RFC 5321 §4.1.2)",
            });
        }
        Ok(())
    }
}

/// A portable user name (POSIX's portable filename characters, as `useradd` takes them):
/// it goes to `getpwnam`, never to a shell, but a typo should fail as a typo.
fn is_user_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && !b[0].is_ascii_digit()
        && b[0] != b'-'
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
}

/// RFC 5321 §4.1.2: `Domain = sub-domain *("." sub-domain)`, `sub-domain = Let-dig [Ldh-str]`,
/// at most 255 octets (§4.5.3.1.2) with labels of at most 63 (RFC 1035 §2.3.4); or an address
/// literal, `[IPv4]` or `[IPv6:…]` (§4.1.3). The hostname is written into the greeting, the
/// EHLO reply and every `Received:` header, so nothing else may pass: a CR or LF in it would
/// split a reply.
pub fn is_domain_or_literal(name: &str) -> bool {
    if let Some(literal) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return match literal.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => literal.parse::<std::net::Ipv4Addr>().is_ok(),
        };
    }
    !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}
