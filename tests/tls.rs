//! TLS on the real server, every test on both backends: STARTTLS and implicit TLS, the injection defence, the STARTTLS replies, tls_required, broken and stalled handshakes, SNI, certificate reload, and a TLS client that never reads.

#[macro_use]
mod serverkit;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serverkit::{read_reply, show, spooled, write_until_refused, Client, Server, TempDir, LIMIT};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A test CA made at run time (no key is committed) and the certificates it signs.
struct Pki {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    roots: Arc<RootCertStore>,
}

/// A leaf certificate on disk and the DER a client should be shown.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ringmx test CA");
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        Pki {
            dir: TempDir::new("pki"),
            issuer: Issuer::new(params, key),
            roots: Arc::new(roots),
        }
    }

    /// An ECDSA P-256 certificate for `names`, written as `stem.crt` and `stem.key`.
    fn leaf(&self, stem: &str, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let (cert_path, key_path) = (
            self.path(&format!("{stem}.crt")),
            self.path(&format!("{stem}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    /// A client that trusts this CA alone, with TLS 1.2 and 1.3.
    fn client(&self) -> Arc<ClientConfig> {
        Arc::new(
            ClientConfig::builder()
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth(),
        )
    }

    /// A config file for the server: `extra` TOML lines, written once per call.
    fn config(&self, name: &str, extra: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, extra).unwrap();
        path
    }
}

/// The arguments that give the server `leaf` as its certificate.
fn cert_args(leaf: &Leaf) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        leaf.cert.display().to_string(),
        "--tls-key".into(),
        leaf.key.display().to_string(),
        "--listen-tls".into(),
        "127.0.0.1:0".into(),
        "--hostname".into(),
        "mx.test".into(),
    ]
}

fn start(args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// An SMTP client inside TLS, reading replies with the load generator's parser as
/// `serverkit::Client` does.
struct TlsClient {
    tls: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    /// Runs the handshake over `stream` for `name`; panics if it fails.
    fn over(stream: TcpStream, config: Arc<ClientConfig>, name: &str) -> TlsClient {
        let conn = ClientConnection::new(config, ServerName::try_from(name.to_string()).unwrap()).unwrap();
        let mut tls = StreamOwned::new(conn, stream);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
        }
        TlsClient { tls, buf: Vec::new() }
    }

    /// STARTTLS on a greeted plain connection, then the handshake.
    fn starttls(mut plain: Client, config: Arc<ClientConfig>, name: &str) -> TlsClient {
        assert_eq!(plain.cmd("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
        TlsClient::over(plain.into_stream(), config, name)
    }

    /// Implicit TLS: the handshake first, then the greeting inside it.
    fn implicit(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> TlsClient {
        let mut c = TlsClient::over(Client::connect(addr).into_stream(), config, name);
        let greeting = c.reply();
        assert!(greeting.starts_with("220 mx.test ESMTP"), "{greeting}");
        c
    }

    fn peer_certificate(&self) -> CertificateDer<'static> {
        self.tls.conn.peer_certificates().expect("a certificate")[0].clone()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).expect("send over TLS");
        self.tls.flush().unwrap();
    }

    fn reply(&mut self) -> String {
        read_reply(&mut self.buf, &mut self.tls)
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Sends one message in its own transaction; returns the reply to its end of data.
    fn message(&mut self, body: &str) -> String {
        self.send(b"MAIL FROM:<a@tls.example>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n");
        assert_eq!(self.reply(), "250 2.1.0 Ok\r\n");
        assert_eq!(self.reply(), "250 2.1.5 Ok\r\n");
        assert!(self.reply().starts_with("354 "));
        self.send(format!("{body}.\r\n").as_bytes());
        self.reply()
    }
}

/// The EHLO reply, checked for whether it offers STARTTLS.
fn ehlo(reply: &str, offers_starttls: bool) {
    assert!(reply.starts_with("250-mx.test\r\n"), "{reply}");
    assert_eq!(reply.contains("250-STARTTLS\r\n"), offers_starttls, "{reply}");
}

/// Waits (bounded) for the server to close: what it sent meanwhile, and how long it took.
fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (all, start.elapsed()),
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (all, start.elapsed()),
            Err(e) => panic!("read: {e} after {} octets", all.len()),
        }
    }
}

fn starttls_then_a_transaction_is_stored_byte_exact() {
    let pki = Pki::new();
    let leaf = pki.leaf("mx", &["mx.test"]);
    let server = start(&cert_args(&leaf));
    let mut plain = server.connect_greeted();
    ehlo(&plain.cmd("EHLO client.example"), true);
    let mut c = TlsClient::starttls(plain, pki.client(), "mx.test");
    assert_eq!(c.peer_certificate(), leaf.der);
    // RFC 3207 §4.2: the server forgets the EHLO it got before TLS.
    assert_eq!(
        c.cmd("MAIL FROM:<a@tls.example>"),
        "503 5.5.1 Error: send HELO/EHLO first\r\n"
    );
    ehlo(&c.cmd("EHLO client.example"), false);
    let body = "Subject: over TLS\r\n\r\nline one\r\n..leading dot\r\n";
    assert!(c.message(body).starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    let stopped = server.stop();
    stopped.assert_clean();
    let stored = spooled(&stopped.spool);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].content(),
        b"Subject: over TLS\r\n\r\nline one\r\n.leading dot\r\n"
    );
    let eml = String::from_utf8_lossy(&stored[0].eml);
    assert!(eml.contains("\r\n\t(using TLSv1.3 with cipher TLS13_"), "{eml}");
    assert!(eml.contains(" with ESMTPS id "), "{eml}");
    assert!(
        stored[0]
            .json
            .contains(r#""tls":{"version":"TLSv1.3","cipher":"TLS13_"#),
        "{}",
        stored[0].json
    );
    assert!(
        stored[0].json.contains(r#""sni":"mx.test"}"#),
        "{}",
        stored[0].json
    );
    assert_eq!(stopped.stats["tls.handshakes_tls13"], 1);
    assert_eq!(stopped.stats["sessions_ended.quit"], 1);
}

/// The session line an operator greps for, after STARTTLS: the client, the HELO name given
/// inside TLS, the TLS version and cipher, both accepted messages' queue ids (the spool's),
/// senders, recipient counts and sizes, the refused recipient's code, and why it ended.
fn the_session_line_carries_what_an_operator_greps_for() {
    let pki = Pki::new();
    let leaf = pki.leaf("mx", &["mx.test"]);
    let table = pki.config("recipients", "b@mx.test\nc@mx.test\n");
    let config = pki.config(
        "ringmx.toml",
        &format!("domains = [\"mx.test\"]\nrecipients = {table:?}\n"),
    );
    let mut args = cert_args(&leaf);
    args.extend(["--config".into(), config.display().to_string()]);
    let server = start(&args);
    let mut plain = server.connect_greeted();
    let client = plain.stream.local_addr().unwrap();
    ehlo(&plain.cmd("EHLO before-tls.example"), true);
    let mut c = TlsClient::starttls(plain, pki.client(), "mx.test");
    ehlo(&c.cmd("EHLO client.example"), false);
    let first = c.message("Subject: one\r\n\r\nbody\r\n");
    c.send(b"MAIL FROM:<>\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<nobody@mx.test>\r\n");
    c.send(b"RCPT TO:<c@mx.test>\r\nDATA\r\n");
    assert_eq!(c.reply(), "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply(), "250 2.1.5 Ok\r\n");
    assert_eq!(
        c.reply(),
        "550 5.1.1 <nobody@mx.test>: Recipient address rejected: User unknown\r\n"
    );
    assert_eq!(c.reply(), "250 2.1.5 Ok\r\n");
    assert!(c.reply().starts_with("354 "));
    c.send(b"Subject: two\r\n\r\n12345\r\n.\r\n");
    let second = c.reply();
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    let id = |reply: &str| {
        let id = reply.strip_prefix("250 2.0.0 Ok: queued as ").expect(reply);
        id.trim_end().to_string()
    };
    let (first, second) = (id(&first), id(&second));
    let stopped = server.stop();
    stopped.assert_clean();
    let mut stored: Vec<String> = spooled(&stopped.spool).into_iter().map(|m| m.id).collect();
    let mut ids = vec![first.clone(), second.clone()];
    stored.sort();
    ids.sort();
    assert_eq!(stored, ids);
    let line = stopped
        .log
        .lines()
        .find(|l| l.contains("session ended") && l.contains(&format!("client={client} ")))
        .unwrap_or_else(|| panic!("no session line for {client}:\n{}", stopped.log));
    // The content as sent, dot and terminator aside: 22 and 23 octets.
    for field in [
        "helo=client.example ".to_string(),
        "tls=TLSv1.3 ".into(),
        "cipher=TLS13_".into(),
        format!("ids={first},{second} "),
        "from=<a@tls.example>,<> ".into(),
        "nrcpt=1,2 ".into(),
        "size=22,23 ".into(),
        "rejected=550:1 ".into(),
        "messages=2 ".into(),
        "reason=quit".into(),
        "duration_ms=".into(),
    ] {
        assert!(line.contains(&field), "no {field:?} in {line}");
    }
}

fn implicit_tls_greets_inside_tls() {
    let pki = Pki::new();
    let leaf = pki.leaf("mx", &["mx.test"]);
    let server = start(&cert_args(&leaf));
    let mut c = TlsClient::implicit(server.tls_addr.unwrap(), pki.client(), "mx.test");
    ehlo(&c.cmd("EHLO client.example"), false);
    assert_eq!(c.cmd("STARTTLS"), "554 5.5.1 Error: TLS already active\r\n");
    assert!(c
        .message("Subject: implicit\r\n\r\nbody\r\n")
        .starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    let stopped = server.stop();
    stopped.assert_clean();
    let stored = spooled(&stopped.spool);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].content(), b"Subject: implicit\r\n\r\nbody\r\n");
    assert!(String::from_utf8_lossy(&stored[0].eml).contains(" with ESMTPS id "));
    assert_eq!(stopped.stats["replies.greeting"], 1);
}

/// CVE-2011-0411: commands pipelined behind STARTTLS in the same packet are plaintext an
/// attacker in the middle could have added; they must never run inside TLS.
fn input_after_starttls_is_discarded_not_executed() {
    let pki = Pki::new();
    let leaf = pki.leaf("mx", &["mx.test"]);
    let server = start(&cert_args(&leaf));
    let mut plain = server.connect_greeted();
    ehlo(&plain.cmd("EHLO client.example"), true);
    let injected = "EHLO evil.example\r\nMAIL FROM:<evil@example.org>\r\n";
    plain.send(format!("STARTTLS\r\n{injected}").as_bytes());
    assert_eq!(plain.reply(), "220 2.0.0 Ready to start TLS\r\n");
    let mut c = TlsClient::over(plain.into_stream(), pki.client(), "mx.test");
    // Had the injected EHLO run, this would be 250; had MAIL, a nested MAIL.
    assert_eq!(
        c.cmd("MAIL FROM:<a@tls.example>"),
        "503 5.5.1 Error: send HELO/EHLO first\r\n"
    );
    ehlo(&c.cmd("EHLO client.example"), false);
    assert_eq!(c.cmd("MAIL FROM:<a@tls.example>"), "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(stopped.stats["tls.starttls_injections"], 1);
    assert_eq!(
        stopped.stats["tls.starttls_injected_octets"],
        injected.len() as u64
    );
    assert_eq!(stopped.stats["replies.mail_ok"], 1, "the injected MAIL never ran");
}

fn starttls_replies_follow_rfc_3207() {
    let pki = Pki::new();
    let leaf = pki.leaf("mx", &["mx.test"]);
    let server = start(&cert_args(&leaf));
    let mut plain = server.connect_greeted();
    assert_eq!(plain.cmd("STARTTLS now"), "501 5.5.4 Syntax: STARTTLS\r\n");
    ehlo(&plain.cmd("EHLO client.example"), true);
    assert_eq!(plain.cmd("MAIL FROM:<a@tls.example>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        plain.cmd("STARTTLS"),
        "503 5.5.1 Error: MAIL transaction in progress\r\n"
    );
    assert_eq!(plain.cmd("RSET"), "250 2.0.0 Ok\r\n");
    let mut c = TlsClient::starttls(plain, pki.client(), "mx.test");
    assert_eq!(c.cmd("STARTTLS"), "554 5.5.1 Error: TLS already active\r\n");
    ehlo(&c.cmd("EHLO client.example"), false);
    assert_eq!(c.cmd("STARTTLS"), "554 5.5.1 Error: TLS already active\r\n");
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    server.stop().assert_clean();
}

fn tls_required_refuses_transactions_before_tls() {
    let pki = Pki::new();
    let leaf = pki.leaf("mx", &["mx.test"]);
    let config = pki.config("required.toml", "tls_required = true\n");
    let mut args = cert_args(&leaf);
    args.extend(["--config".into(), config.display().to_string()]);
    let server = start(&args);
    let mut plain = server.connect_greeted();
    const MUST: &str = "530 5.7.0 Must issue a STARTTLS command first\r\n";
    ehlo(&plain.cmd("EHLO client.example"), true);
    assert_eq!(plain.cmd("MAIL FROM:<a@tls.example>"), MUST);
    assert_eq!(plain.cmd("RCPT TO:<b@mx.test>"), MUST);
    assert_eq!(plain.cmd("DATA"), MUST);
    // RFC 3030 §4.2: a refused chunk is still read and dropped before the reply.
    plain.send(b"BDAT 6 LAST\r\nNOOP\r\n");
    assert_eq!(plain.reply(), MUST);
    assert_eq!(plain.cmd("NOOP"), "250 2.0.0 Ok\r\n");
    let mut c = TlsClient::starttls(plain, pki.client(), "mx.test");
    ehlo(&c.cmd("EHLO client.example"), false);
    assert!(c
        .message("Subject: required\r\n\r\nok\r\n")
        .starts_with("250 2.0.0 Ok: queued as "));
    let mut implicit = TlsClient::implicit(server.tls_addr.unwrap(), pki.client(), "mx.test");
    ehlo(&implicit.cmd("EHLO client.example"), false);
    assert!(implicit
        .message("Subject: implicit\r\n\r\nok\r\n")
        .starts_with("250 2.0.0 Ok: queued as "));
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(spooled(&stopped.spool).len(), 2);
    assert_eq!(stopped.stats["replies.tls_required"], 4);
}

/// Not TLS after STARTTLS, and on the implicit port: closed, counted as a bad record.
fn a_bad_client_hello_closes_the_connection() {
    let pki = Pki::new();
    let leaf = pki.leaf("mx", &["mx.test"]);
    let server = start(&cert_args(&leaf));
    let mut plain = server.connect_greeted();
    assert_eq!(plain.cmd("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
    let mut stream = plain.into_stream();
    stream.write_all(b"EHLO not.tls.example\r\n").unwrap();
    let (alert, _) = read_until_closed(&mut stream);
    // A TLS alert record (content type 21), not an SMTP reply.
    assert_eq!(alert.first(), Some(&21), "{}", show(&alert));
    let mut implicit = TcpStream::connect(server.tls_addr.unwrap()).unwrap();
    implicit.set_read_timeout(Some(LIMIT)).unwrap();
    implicit.write_all(b"\x16\x03\x01\x00\x05hello").unwrap();
    read_until_closed(&mut implicit);
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(stopped.stats["tls.bad_record"], 2);
    assert_eq!(stopped.stats["sessions_ended.tls_error"], 2);
}

/// A client silent after STARTTLS, or after connecting to the implicit port, is cut off at
/// the handshake timeout, not the command timeout.
fn a_stalled_handshake_times_out() {
    let pki = Pki::new();
    let leaf = pki.leaf("mx", &["mx.test"]);
    let config = pki.config("timeout.toml", "tls_handshake_timeout_secs = 1\n");
    let mut args = cert_args(&leaf);
    args.extend(["--config".into(), config.display().to_string()]);
    let server = start(&args);
    let mut plain = server.connect_greeted();
    assert_eq!(plain.cmd("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
    let mut stream = plain.into_stream();
    let mut implicit = TcpStream::connect(server.tls_addr.unwrap()).unwrap();
    implicit.set_read_timeout(Some(LIMIT)).unwrap();
    for s in [&mut stream, &mut implicit] {
        let (sent, took) = read_until_closed(s);
        assert!(sent.is_empty(), "{}", show(&sent));
        assert!(took < Duration::from_secs(10), "closed after {took:?}");
    }
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(stopped.stats["tls.handshake_timeout"], 2);
    assert_eq!(stopped.stats["sessions_ended.tls_handshake_timeout"], 2);
    // The implicit session never greeted: its greeting would have gone inside TLS.
    assert_eq!(stopped.stats["replies.greeting"], 1);
}

fn sni_picks_the_certificate() {
    let pki = Pki::new();
    let default = pki.leaf("mx", &["mx.test"]);
    let other = pki.leaf("other", &["other.test", "*.other.test"]);
    let config = pki.config(
        "sni.toml",
        &format!(
            "tls_certificates = [{{ names = [\"other.test\", \"*.other.test\"], cert = {:?}, key = {:?} }}]\n",
            other.cert, other.key
        ),
    );
    let mut args = cert_args(&default);
    args.extend(["--config".into(), config.display().to_string()]);
    let server = start(&args);
    for (name, want) in [
        ("mx.test", &default),
        ("other.test", &other),
        ("a.other.test", &other),
    ] {
        let c = TlsClient::starttls(server.connect_greeted(), pki.client(), name);
        assert_eq!(&c.peer_certificate(), &want.der, "SNI {name}");
        let i = TlsClient::implicit(server.tls_addr.unwrap(), pki.client(), name);
        assert_eq!(&i.peer_certificate(), &want.der, "SNI {name}, implicit");
    }
    let mut c = TlsClient::starttls(server.connect_greeted(), pki.client(), "other.test");
    ehlo(&c.cmd("EHLO client.example"), false);
    assert!(c.message("Subject: sni\r\n\r\nx\r\n").starts_with("250 "));
    let stopped = server.stop();
    stopped.assert_clean();
    let stored = spooled(&stopped.spool);
    assert!(
        stored[0].json.contains(r#""sni":"other.test"}"#),
        "{}",
        stored[0].json
    );
}

/// SIGHUP: new handshakes get the new certificate, a session in TLS carries on, and a file
/// that does not load leaves the certificate in force.
fn sighup_reloads_certificates() {
    let pki = Pki::new();
    let first = pki.leaf("first", &["mx.test"]);
    let second = pki.leaf("second", &["mx.test"]);
    let (cert, key) = (pki.path("live.crt"), pki.path("live.key"));
    let install = |leaf: &Leaf| {
        copy_atomically(&leaf.cert, &cert);
        copy_atomically(&leaf.key, &key);
    };
    install(&first);
    let live = Leaf {
        cert: cert.clone(),
        key: key.clone(),
        der: first.der.clone(),
    };
    let server = start(&cert_args(&live));
    let mut open = TlsClient::starttls(server.connect_greeted(), pki.client(), "mx.test");
    assert_eq!(open.peer_certificate(), first.der);
    ehlo(&open.cmd("EHLO client.example"), false);
    open.send(b"MAIL FROM:<a@tls.example>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n");
    for _ in 0..3 {
        open.reply();
    }
    open.send(b"Subject: across a reload\r\n\r\nfirst half\r\n");
    install(&second);
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reloaded");
    let fresh = TlsClient::starttls(server.connect_greeted(), pki.client(), "mx.test");
    assert_eq!(fresh.peer_certificate(), second.der);
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("reload refused");
    let after = TlsClient::implicit(server.tls_addr.unwrap(), pki.client(), "mx.test");
    assert_eq!(
        after.peer_certificate(),
        second.der,
        "a broken file keeps the certificate"
    );
    open.send(b"second half\r\n.\r\n");
    assert!(open.reply().starts_with("250 2.0.0 Ok: queued as "));
    let stopped = server.stop();
    stopped.assert_clean();
    let stored = spooled(&stopped.spool);
    assert_eq!(
        stored[0].content(),
        b"Subject: across a reload\r\n\r\nfirst half\r\nsecond half\r\n"
    );
}

/// Replaces `to` with a copy of `from` in one rename, as an operator's deploy would.
fn copy_atomically(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// Pipelining into TLS without reading: the server stops reading once its replies back up,
/// so neither its memory nor what it takes grows without bound, and others are served.
fn a_tls_client_that_never_reads_is_bounded() {
    let pki = Pki::new();
    let leaf = pki.leaf("mx", &["mx.test"]);
    let mut args = cert_args(&leaf);
    args.push("--sink".into());
    let server = start(&args);
    let greedy = TlsClient::starttls(server.connect_greeted(), pki.client(), "mx.test");
    let rss_before = server.rss_kib();
    let (mut conn, mut sock) = (greedy.tls.conn, greedy.tls.sock);
    sock.set_nonblocking(true).unwrap();
    let batch = b"NOOP\r\n".repeat(10_000);
    let written = write_until_refused(|| {
        if !conn.wants_write() {
            conn.writer().write_all(&batch).unwrap();
        }
        conn.write_tls(&mut sock)
    });
    assert!(
        written < 64 << 20,
        "the server kept reading: {written} octets taken"
    );
    let rss_after = server.rss_kib();
    eprintln!("never-reading TLS client: {written} octets taken; server RSS {rss_before} -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "server memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    let mut polite = TlsClient::implicit(server.tls_addr.unwrap(), pki.client(), "mx.test");
    ehlo(&polite.cmd("EHLO client.example"), false);
    assert!(polite.message("Subject: polite\r\n\r\nx\r\n").starts_with("250 "));
    drop((conn, sock));
    server.stop().assert_clean();
}

on_backends_and_formats!(
    formats: [
        starttls_then_a_transaction_is_stored_byte_exact,
        the_session_line_carries_what_an_operator_greps_for,
        implicit_tls_greets_inside_tls,
        tls_required_refuses_transactions_before_tls,
        sni_picks_the_certificate,
        sighup_reloads_certificates,
    ],
    backends: [
        input_after_starttls_is_discarded_not_executed,
        starttls_replies_follow_rfc_3207,
        a_bad_client_hello_closes_the_connection,
        a_stalled_handshake_times_out,
        a_tls_client_that_never_reads_is_bounded,
    ],
);
