//! Real in-memory handshakes against certificates made at test time (no key is committed).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::client::{Resumption, Tls12Resumption};
use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::version::{TLS12, TLS13};
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, HandshakeKind, RootCertStore, ServerConfig,
    ServerConnection, SupportedCipherSuite, SupportedProtocolVersion,
};

use super::{describe, CertEntry, TlsContext};

/// A directory of its own under the system temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ringmx-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA that signs every leaf; the clients trust it alone.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

/// A leaf written to disk: its entry for `TlsContext` and the DER a client should see.
struct Leaf {
    entry: CertEntry,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ringmx test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
        }
    }

    /// A leaf for the names `sans`, its key `key_pem` (PKCS#8), written as `stem.crt` and
    /// `stem.key`; the entry serves `names`.
    fn leaf(&self, dir: &Dir, stem: &str, names: &[&str], sans: &[&str], key_pem: &str) -> Leaf {
        let key = KeyPair::from_pem(key_pem).unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        Leaf {
            entry: CertEntry {
                names: names.iter().map(|s| s.to_string()).collect(),
                cert: dir.write(&format!("{stem}.crt"), &cert.pem()),
                key: dir.write(&format!("{stem}.key"), key_pem),
            },
            der: cert.der().clone(),
        }
    }

    /// An ECDSA P-256 leaf whose certificate holds exactly the names it serves.
    fn ecdsa(&self, dir: &Dir, stem: &str, names: &[&str]) -> Leaf {
        self.leaf(dir, stem, names, names, &ecdsa_key())
    }

    fn client(&self, versions: &[&'static SupportedProtocolVersion]) -> ClientConfig {
        self.client_with(versions, default_provider())
    }

    /// A client limited to `suites` (TLS 1.2 ties the server's key type to the suite).
    fn client_tls12(&self, suites: &[SupportedCipherSuite]) -> ClientConfig {
        let provider = CryptoProvider {
            cipher_suites: suites.to_vec(),
            ..default_provider()
        };
        self.client_with(&[&TLS12], provider)
    }

    fn client_with(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        provider: CryptoProvider,
    ) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

fn ecdsa_key() -> String {
    KeyPair::generate().unwrap().serialize_pem()
}

/// Runs openssl with `args`, `input` on stdin; None (and why, on stderr) if it cannot.
fn openssl(args: &[&str], input: &str) -> Option<String> {
    use std::io::Write;
    let child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("skipped: openssl not runnable: {e}");
            return None;
        }
    };
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        eprintln!("skipped: openssl {args:?} failed");
        return None;
    }
    Some(String::from_utf8(out.stdout).unwrap())
}

/// An RSA-2048 key in PKCS#8 PEM. rcgen over ring cannot generate RSA keys (only load
/// them), so openssl makes it; None if openssl is missing.
fn rsa_key() -> Option<String> {
    openssl(
        &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "",
    )
}

/// The same key in its algorithm's own format: SEC1 for EC, PKCS#1 for RSA.
fn traditional(pkcs8: &str) -> Option<String> {
    openssl(&["pkey", "-traditional"], pkcs8)
}

/// Moves every pending TLS byte from `from` to `to`; how many moved.
fn transfer<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>) -> usize {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rest = &buf[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets().expect("TLS error");
    }
    buf.len()
}

/// A full exchange until both sides are done and quiet (so the client has its tickets).
/// `sni` is the name the client checks the certificate against, and sends unless the
/// client config disables SNI.
fn connect(
    server: Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    sni: &str,
) -> (ServerConnection, ClientConnection) {
    let mut s = ServerConnection::new(server).unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut c = ClientConnection::new(Arc::clone(client), name).unwrap();
    for _ in 0..10 {
        let moved = transfer(&mut *c, &mut *s) + transfer(&mut *s, &mut *c);
        if moved == 0 && !c.is_handshaking() && !s.is_handshaking() {
            return (s, c);
        }
    }
    panic!("handshake did not finish");
}

/// The leaf certificate the client received.
fn served(c: &ClientConnection) -> CertificateDer<'static> {
    c.peer_certificates().unwrap()[0].clone().into_owned()
}

fn entries(leaves: &[&Leaf]) -> Vec<CertEntry> {
    leaves.iter().map(|l| l.entry.clone()).collect()
}

#[test]
fn sni_picks_the_named_certificate() {
    let (dir, ca) = (Dir::new(), Ca::new());
    // The default serves no name of its own; its certificate holds the names the test
    // sends that no entry claims, so the client accepts it.
    let unknown = ["fallback.test", "example.net", "a.b.example.net"];
    let default = ca.leaf(&dir, "default", &[], &unknown, &ecdsa_key());
    let mx = ca.ecdsa(&dir, "mx", &["MX.example.com", "mx.example.org"]);
    let wild = ca.ecdsa(&dir, "wild", &["*.example.net"]);
    let tls = TlsContext::new(&entries(&[&default, &mx, &wild]), 64).unwrap();
    let client = Arc::new(ca.client(&[&TLS13, &TLS12]));

    for (sni, want) in [
        ("mx.example.com", &mx),
        ("MX.EXAMPLE.ORG", &mx),
        ("mail.example.net", &wild),
        ("fallback.test", &default),
        // A wildcard covers one label: neither the parent nor two labels below it.
        ("example.net", &default),
        ("a.b.example.net", &default),
    ] {
        let (s, c) = connect(tls.server_config(), &client, sni);
        assert_eq!(s.server_name(), Some(sni.to_ascii_lowercase().as_str()));
        assert!(served(&c) == want.der, "{sni}: wrong certificate");
    }

    let mut no_sni = ca.client(&[&TLS13]);
    no_sni.enable_sni = false;
    let (s, c) = connect(tls.server_config(), &Arc::new(no_sni), "fallback.test");
    assert_eq!(s.server_name(), None);
    assert!(served(&c) == default.der);
}

#[test]
fn rsa_and_ecdsa_side_by_side() {
    let Some(rsa) = rsa_key() else { return };
    let (dir, ca) = (Dir::new(), Ca::new());
    let names = ["mx.example.com"];
    // RSA first: ECDSA still wins where the client takes both.
    let rsa = ca.leaf(&dir, "rsa", &names, &names, &rsa);
    let ec = ca.ecdsa(&dir, "ec", &names);
    let tls = TlsContext::new(&entries(&[&rsa, &ec]), 64).unwrap();

    for versions in [&[&TLS13][..], &[&TLS12]] {
        let client = Arc::new(ca.client(versions));
        let (_, c) = connect(tls.server_config(), &client, "mx.example.com");
        assert!(served(&c) == ec.der, "{versions:?}: ECDSA preferred");
    }
    let rsa_only = ca.client_tls12(&[cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]);
    let (_, c) = connect(tls.server_config(), &Arc::new(rsa_only), "mx.example.com");
    assert!(served(&c) == rsa.der, "an RSA-only client gets RSA");

    // The default (no SNI) is the first entry's first name, with both keys to pick from.
    let mut no_sni = ca.client_tls12(&[cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]);
    no_sni.enable_sni = false;
    let (_, c) = connect(tls.server_config(), &Arc::new(no_sni), "mx.example.com");
    assert!(served(&c) == rsa.der);
    let mut no_sni = ca.client(&[&TLS13]);
    no_sni.enable_sni = false;
    let (_, c) = connect(tls.server_config(), &Arc::new(no_sni), "mx.example.com");
    assert!(served(&c) == ec.der);
}

#[test]
fn keys_load_as_pkcs8_sec1_and_pkcs1() {
    let Some(rsa) = rsa_key() else { return };
    let (dir, ca) = (Dir::new(), Ca::new());
    for (stem, pkcs8, marker) in [
        ("ec", ecdsa_key(), "-----BEGIN EC PRIVATE KEY-----"),
        ("rsa", rsa, "-----BEGIN RSA PRIVATE KEY-----"),
    ] {
        let Some(own) = traditional(&pkcs8) else {
            return;
        };
        assert!(own.starts_with(marker));
        let mut leaf = ca.leaf(&dir, stem, &["mx.example.com"], &["mx.example.com"], &pkcs8);
        let tls = TlsContext::new(&[leaf.entry.clone()], 64).unwrap();
        let client = Arc::new(ca.client(&[&TLS13]));
        assert!(served(&connect(tls.server_config(), &client, "mx.example.com").1) == leaf.der);
        leaf.entry.key = dir.write(&format!("{stem}-own.key"), &own);
        let tls = TlsContext::new(&[leaf.entry.clone()], 64).unwrap();
        assert!(served(&connect(tls.server_config(), &client, "mx.example.com").1) == leaf.der);
    }
}

#[test]
fn reload_switches_new_handshakes_and_keeps_resumption() {
    let (dir, ca) = (Dir::new(), Ca::new());
    let old = ca.ecdsa(&dir, "mx", &["mx.example.com"]);
    let mut tls = TlsContext::new(&entries(&[&old]), 64).unwrap();
    let client = Arc::new(ca.client(&[&TLS13]));
    let (_, c) = connect(tls.server_config(), &client, "mx.example.com");
    assert!(served(&c) == old.der);

    // The renewed certificate replaces the files in place, as certbot does.
    let new = ca.ecdsa(&dir, "mx", &["mx.example.com"]);
    assert!(new.der != old.der);
    tls.reload(&entries(&[&new])).unwrap();

    let fresh = Arc::new(ca.client(&[&TLS13]));
    let (_, c) = connect(tls.server_config(), &fresh, "mx.example.com");
    assert!(served(&c) == new.der);
    // The ticket issued before the reload still resumes.
    let (_, c) = connect(tls.server_config(), &client, "mx.example.com");
    assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
}

#[test]
fn failed_reload_keeps_the_old_certificate() {
    let (dir, ca) = (Dir::new(), Ca::new());
    let leaf = ca.ecdsa(&dir, "mx", &["mx.example.com"]);
    let mut tls = TlsContext::new(&entries(&[&leaf]), 64).unwrap();

    std::fs::write(&leaf.entry.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let err = tls.reload(&entries(&[&leaf])).unwrap_err();
    assert!(err.contains(&leaf.entry.cert.display().to_string()), "{err}");
    assert!(err.contains("malformed PEM"), "{err}");

    let client = Arc::new(ca.client(&[&TLS13]));
    let (_, c) = connect(tls.server_config(), &client, "mx.example.com");
    assert!(served(&c) == leaf.der);
}

#[test]
fn a_key_for_another_certificate_is_refused() {
    let (dir, ca) = (Dir::new(), Ca::new());
    let a = ca.ecdsa(&dir, "a", &["a.example.com"]);
    let b = ca.ecdsa(&dir, "b", &["b.example.com"]);
    let crossed = CertEntry {
        key: b.entry.key.clone(),
        ..a.entry.clone()
    };
    let err = TlsContext::new(&[crossed], 64).unwrap_err();
    assert!(err.contains(&b.entry.key.display().to_string()), "{err}");
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn bad_entries_name_the_problem() {
    let (dir, ca) = (Dir::new(), Ca::new());
    let leaf = ca.ecdsa(&dir, "mx", &["mx.example.com"]);
    let with = |f: &dyn Fn(&mut CertEntry)| {
        let mut e = leaf.entry.clone();
        f(&mut e);
        TlsContext::new(&[e], 64).unwrap_err()
    };
    let contains = |err: String, what: &str| assert!(err.contains(what), "{err:?} lacks {what:?}");

    assert!(TlsContext::new(&[], 64).is_err());
    contains(
        TlsContext::new(
            &[
                leaf.entry.clone(),
                CertEntry {
                    names: vec![],
                    ..leaf.entry.clone()
                },
            ],
            64,
        )
        .unwrap_err(),
        "only the first",
    );
    for bad in [
        "bad name",
        "*.*.example.com",
        "mx*.example.com",
        "*",
        "192.0.2.1",
        "mx.example.com.",
    ] {
        contains(with(&|e| e.names = vec![bad.to_owned()]), &format!("{bad:?}"));
    }
    let missing = dir.0.join("missing.crt");
    contains(with(&|e| e.cert = missing.clone()), "missing.crt: cannot read");
    let key_only = leaf.entry.key.clone();
    contains(with(&|e| e.cert = key_only.clone()), "no CERTIFICATE");
    let cert_only = leaf.entry.cert.clone();
    contains(with(&|e| e.key = cert_only.clone()), "no unencrypted private key");
}

#[test]
fn resumption_by_ticket_and_by_session_id() {
    let (dir, ca) = (Dir::new(), Ca::new());
    let leaf = ca.ecdsa(&dir, "mx", &["mx.example.com"]);
    let tls = TlsContext::new(&entries(&[&leaf]), 64).unwrap();
    let no_cache = TlsContext::new(&entries(&[&leaf]), 0).unwrap();

    let resumes = |tls: &TlsContext, client: ClientConfig| {
        let client = Arc::new(client);
        let (_, c) = connect(tls.server_config(), &client, "mx.example.com");
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
        let (_, c) = connect(tls.server_config(), &client, "mx.example.com");
        c.handshake_kind() == Some(HandshakeKind::Resumed)
    };
    // Tickets (RFC 8446 §4.6.1, RFC 5077) need no server memory.
    assert!(resumes(&tls, ca.client(&[&TLS13])));
    assert!(resumes(&no_cache, ca.client(&[&TLS13])));
    assert!(resumes(&no_cache, ca.client(&[&TLS12])));
    // A TLS 1.2 client without ticket support resumes from the server's cache.
    let session_id_only = || {
        let mut c = ca.client(&[&TLS12]);
        c.resumption = Resumption::default().tls12_resumption(Tls12Resumption::SessionIdOnly);
        c
    };
    assert!(resumes(&tls, session_id_only()));
    assert!(!resumes(&no_cache, session_id_only()));
}

#[test]
fn describe_names_version_and_suite() {
    let (dir, ca) = (Dir::new(), Ca::new());
    let leaf = ca.ecdsa(&dir, "mx", &["mx.example.com"]);
    let tls = TlsContext::new(&entries(&[&leaf]), 64).unwrap();
    assert_eq!(
        describe(&ServerConnection::new(tls.server_config()).unwrap()),
        None
    );

    let client = Arc::new(ca.client(&[&TLS13]));
    let (s, _) = connect(tls.server_config(), &client, "mx.example.com");
    let (version, suite) = describe(&s).unwrap();
    assert_eq!(version, "TLSv1.3");
    assert!(suite.starts_with("TLS13_"), "{suite}");

    let client = ca.client_tls12(&[cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]);
    let (s, _) = connect(tls.server_config(), &Arc::new(client), "mx.example.com");
    assert_eq!(
        describe(&s),
        Some(("TLSv1.2", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"))
    );
}
