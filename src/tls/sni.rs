//! Picks each handshake's certificate from the client's server name (RFC 6066 §3) and
//! the signature schemes it accepts.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{SignatureAlgorithm, SignatureScheme};

use super::certs::Loaded;

/// Every name's candidates, in configuration order: one name may have an RSA and an ECDSA
/// certificate side by side, so that old clients get RSA and the rest the cheaper ECDSA.
#[derive(Debug)]
pub(super) struct Resolver {
    /// Host names, lower-case.
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// `*.example.com` stored as `example.com`: the name with its first label cut off.
    wildcard: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// For a client that sends no name (SNI is optional) or one we do not serve.
    default: Vec<Arc<CertifiedKey>>,
}

impl Resolver {
    /// `loaded` is not empty; its first entry is the default.
    pub(super) fn new(loaded: Vec<Loaded>) -> Resolver {
        let mut exact: HashMap<String, Vec<Arc<CertifiedKey>>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<Arc<CertifiedKey>>> = HashMap::new();
        for entry in &loaded {
            for name in &entry.names {
                let slot = match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()),
                    None => exact.entry(name.clone()),
                };
                slot.or_default().push(Arc::clone(&entry.key));
            }
        }
        let mut resolver = Resolver {
            exact,
            wildcard,
            default: Vec::new(),
        };
        // A client without a usable name is served as if it had asked for the first
        // entry's first name, so the default too can offer RSA beside ECDSA.
        let first = &loaded[0];
        resolver.default = match first.names.first() {
            Some(name) => resolver.candidates(Some(name)).to_vec(),
            None => vec![Arc::clone(&first.key)],
        };
        resolver
    }

    fn candidates(&self, name: Option<&str>) -> &[Arc<CertifiedKey>] {
        let Some(name) = name else {
            return &self.default;
        };
        if let Some(keys) = self.exact.get(name) {
            return keys;
        }
        // A wildcard covers exactly one label (RFC 6125 §6.4.3): `*.example.com` matches
        // `mx.example.com`, not `example.com` nor `a.mx.example.com`.
        let parent = name.split_once('.').map(|(_, parent)| parent);
        match parent.and_then(|p| self.wildcard.get(p)) {
            Some(keys) => keys,
            None => &self.default,
        }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls lower-cases the name, and for TLS 1.2 has already narrowed the schemes to
        // those the offered cipher suites can use.
        let keys = self.candidates(hello.server_name());
        Some(Arc::clone(pick(keys, hello.signature_schemes())))
    }
}

/// The key to sign with: one the client can verify, ECDSA (or EdDSA) before RSA since it
/// costs the server far less per handshake; if none fits, the first, and the handshake
/// fails with an alert the client can report.
fn pick<'a>(keys: &'a [Arc<CertifiedKey>], offered: &[SignatureScheme]) -> &'a Arc<CertifiedKey> {
    let fits = |k: &&Arc<CertifiedKey>| k.key.choose_scheme(offered).is_some();
    keys.iter()
        .filter(fits)
        .find(|k| k.key.algorithm() != SignatureAlgorithm::RSA)
        .or_else(|| keys.iter().find(fits))
        .unwrap_or(&keys[0])
}
