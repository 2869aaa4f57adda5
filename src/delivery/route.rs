//! Where a recipient's mail goes: a destination (`smtp:HOST:PORT`, `lmtp:HOST:PORT`, `lmtp:unix:PATH`) parsed and checked, and the route table that picks one by the recipient's domain.

use crate::config::is_domain_or_literal;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The protocol spoken to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// ESMTP (RFC 5321): one reply for the data of a transaction.
    Smtp,
    /// LMTP (RFC 2033): `LHLO`, and one reply per accepted recipient after the data.
    Lmtp,
}

/// How a destination is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A host name or address and a port. The host is what a certificate is checked against.
    Tcp { host: String, port: u16 },
    /// A Unix socket (LMTP to a local mail store).
    Unix(PathBuf),
}

/// One destination: every recipient routed here shares its connections and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dest {
    pub protocol: Protocol,
    pub address: Address,
}

impl FromStr for Dest {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Dest, &'static str> {
        const WHAT: &str = "smtp:HOST:PORT, lmtp:HOST:PORT or lmtp:unix:PATH";
        let (protocol, rest) = match s.split_once(':') {
            Some(("smtp", rest)) => (Protocol::Smtp, rest),
            Some(("lmtp", rest)) => (Protocol::Lmtp, rest),
            _ => return Err(WHAT),
        };
        if let Some(path) = rest.strip_prefix("unix:") {
            if protocol != Protocol::Lmtp || !path.starts_with('/') {
                return Err(WHAT);
            }
            return Ok(Dest {
                protocol,
                address: Address::Unix(PathBuf::from(path)),
            });
        }
        let (host, port) = rest.rsplit_once(':').ok_or(WHAT)?;
        let port: u16 = port.parse().map_err(|_| WHAT)?;
        // `[::1]` for an IPv6 address, as in a URL; a bare IPv4 address or a domain.
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6.to_string(),
            Some(_) => return Err(WHAT),
            None if host.parse::<std::net::Ipv4Addr>().is_ok() || is_domain_or_literal(host) => {
                host.to_string()
            }
            None => return Err(WHAT),
        };
        if port == 0 || host.starts_with('[') {
            return Err(WHAT);
        }
        Ok(Dest {
            protocol,
            address: Address::Tcp { host, port },
        })
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Smtp => "smtp",
            Protocol::Lmtp => "lmtp",
        };
        match &self.address {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "{proto}:[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{proto}:{host}:{port}"),
            Address::Unix(path) => write!(f, "{proto}:unix:{}", path.display()),
        }
    }
}

/// The route table: per domain, then the default.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    default: Option<Dest>,
    /// Lowercase domains; a key starting with `.` matches every subdomain (as in Postfix's
    /// transport maps).
    domains: HashMap<String, Dest>,
}

impl Routes {
    /// The table of `relay_to` and `[routes]`, already validated by the configuration.
    pub fn new(default: Option<&str>, routes: &[(String, String)]) -> Result<Routes, String> {
        let parse = |s: &str| s.parse::<Dest>().map_err(|why| format!("{s:?} is not {why}"));
        let default = default.map(parse).transpose()?;
        let mut domains = HashMap::new();
        for (domain, dest) in routes {
            domains.insert(domain.to_ascii_lowercase(), parse(dest)?);
        }
        Ok(Routes { default, domains })
    }

    /// Whether anything is routed at all (without, the spool only stores).
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.domains.is_empty()
    }

    /// Distinct destinations: each may have `destination_concurrency` connections at once.
    pub fn destinations(&self) -> usize {
        self.all().len()
    }

    /// Every destination routed to.
    pub fn all(&self) -> std::collections::HashSet<&Dest> {
        self.default.iter().chain(self.domains.values()).collect()
    }

    /// The destination of `recipient` (`local@domain`): its domain, then each parent as
    /// `.parent`, then the default.
    pub fn route(&self, recipient: &[u8]) -> Option<&Dest> {
        let domain = recipient
            .iter()
            .rposition(|&b| b == b'@')
            .map(|at| &recipient[at + 1..])
            .and_then(|d| std::str::from_utf8(d).ok())
            .map(str::to_ascii_lowercase);
        if let Some(domain) = domain {
            if let Some(d) = self.domains.get(&domain) {
                return Some(d);
            }
            let mut rest = domain.as_str();
            while let Some(dot) = rest.find('.') {
                if let Some(d) = self.domains.get(&rest[dot..]) {
                    return Some(d);
                }
                rest = &rest[dot + 1..];
            }
        }
        self.default.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_print_back() {
        for s in [
            "smtp:127.0.0.1:25",
            "lmtp:mail.example:24",
            "smtp:[::1]:2525",
            "lmtp:unix:/run/dovecot/lmtp",
        ] {
            assert_eq!(s.parse::<Dest>().unwrap().to_string(), s);
        }
        for bad in [
            "",
            "smtp:host",
            "smtp:host:0",
            "smtp:host:99999",
            "http:host:80",
            "smtp:unix:/x",
            "lmtp:unix:relative",
            "smtp:::1:25",
            "smtp:a b:25",
            "smtp:[nonsense]:25",
            "smtp:evil\r\n:25",
        ] {
            assert!(bad.parse::<Dest>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn routes_pick_the_domain_then_parents_then_the_default() {
        let routes = Routes::new(
            Some("smtp:10.0.0.1:25"),
            &[
                ("Example.com".into(), "lmtp:10.0.0.5:24".into()),
                (".sub.example".into(), "smtp:10.0.0.6:25".into()),
            ],
        )
        .unwrap();
        let dest = |r: &str| routes.route(r.as_bytes()).unwrap().to_string();
        assert_eq!(dest("a@EXAMPLE.com"), "lmtp:10.0.0.5:24");
        assert_eq!(dest("a@x.y.sub.example"), "smtp:10.0.0.6:25");
        assert_eq!(dest("a@sub.example"), "smtp:10.0.0.1:25");
        assert_eq!(dest("postmaster"), "smtp:10.0.0.1:25");
        assert_eq!(routes.destinations(), 3);
        assert!(Routes::new(None, &[]).unwrap().route(b"a@b").is_none());
        let shared = Routes::new(
            Some("smtp:10.0.0.1:25"),
            &[("a.example".into(), "smtp:10.0.0.1:25".into())],
        );
        assert_eq!(shared.unwrap().destinations(), 1);
    }
}
