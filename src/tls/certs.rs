//! Reads one configured certificate entry from disk into a checked rustls `CertifiedKey`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{Error, InconsistentKeys};

/// One certificate the operator configured: the names it serves (SNI), PEM chain (leaf first),
/// PEM key (PKCS#8, SEC1 or PKCS#1).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertEntry {
    /// Host names (`mx.example.com`) or one-label wildcards (`*.example.com`) this
    /// certificate answers for; empty only for the first entry, which then serves just the
    /// clients that send no name or one nobody else claims.
    pub names: Vec<String>,
    /// PEM file holding the chain, leaf first, then the intermediates the client needs.
    pub cert: PathBuf,
    /// PEM file holding the unencrypted private key of the leaf.
    pub key: PathBuf,
}

/// An entry read and checked: its lower-cased names and the key ready to sign handshakes.
pub(super) struct Loaded {
    pub(super) names: Vec<String>,
    pub(super) key: Arc<CertifiedKey>,
}

/// Reads and checks `entry`; `first` says it is the default entry, the only one that may
/// have no names. The error names the file and what is wrong with it.
pub(super) fn load(entry: &CertEntry, first: bool, provider: &CryptoProvider) -> Result<Loaded, String> {
    if entry.names.is_empty() && !first {
        return Err(format!(
            "{}: names is empty; only the first certificate (the default) may have no names",
            entry.cert.display()
        ));
    }
    let names = entry
        .names
        .iter()
        .map(|n| check_name(n).map_err(|why| format!("{}: names: {why}", entry.cert.display())))
        .collect::<Result<Vec<_>, _>>()?;

    let chain = read_chain(&entry.cert)?;
    let key_der = read_key(&entry.key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: unusable private key: {e}", entry.key.display()))?;
    let key = CertifiedKey::new(chain, signing_key);
    // A key for another certificate would only show up as failed handshakes; refuse it at
    // load time. Every aws-lc-rs key knows its public half, so `Unknown` means something
    // is off too.
    match key.keys_match() {
        Ok(()) => {}
        Err(Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "{}: private key does not match the certificate in {}",
                entry.key.display(),
                entry.cert.display()
            ))
        }
        Err(Error::InconsistentKeys(_)) => {
            return Err(format!(
                "{}: cannot tell whether this key matches the certificate in {}",
                entry.key.display(),
                entry.cert.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "{}: first certificate unreadable: {e}",
                entry.cert.display()
            ))
        }
    }
    Ok(Loaded {
        names,
        key: Arc::new(key),
    })
}

/// A name as the resolver stores it: lower-case (DNS names are case-insensitive and rustls
/// hands over the client's name lower-cased), either a host name or `*.` and one.
fn check_name(name: &str) -> Result<String, String> {
    let host = name.strip_prefix("*.").unwrap_or(name);
    // RFC 6066 §3: the client sends the name without a trailing dot, so a name with one
    // would never match.
    if host.ends_with('.') {
        return Err(format!("{name:?}: drop the trailing dot"));
    }
    // `DnsName` refuses `*` anywhere, IP addresses (SNI carries none) and malformed labels.
    match DnsName::try_from(host) {
        Ok(_) => Ok(name.to_ascii_lowercase()),
        Err(_) => Err(format!(
            "{name:?} is neither a host name nor a `*.` wildcard over one"
        )),
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(path, e))?;
    if chain.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found", path.display()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{}: no unencrypted private key found (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)",
            path.display()
        ),
        e => pem_error(path, e),
    })
}

fn pem_error(path: &Path, e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("{}: cannot read: {e}", path.display()),
        e => format!("{}: malformed PEM: {e}", path.display()),
    }
}
