//! Who the server lets in, on the real server and both backends: PROXY headers (v1, v2, local, split anywhere, bad, late, from an untrusted address), the client they name used in the spool, relay_networks, and the per-client connection limit.

#[macro_use]
mod serverkit;

use serverkit::{show, spooled, Client, Server, TempDir, LIMIT};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// A config file in `dir` holding `text`.
fn config(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.0.join("ringmx.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A server whose `--listen` listener expects PROXY headers, with `extra` TOML.
fn proxied(dir: &TempDir, extra: &str) -> Server {
    proxied_with(&config(dir, extra))
}

fn proxied_with(path: &std::path::Path) -> Server {
    let path = path.to_str().unwrap();
    Server::start(&["--proxy-protocol", "--config", path, "--hostname", "mx.test"])
}

fn v1(source: &str, destination: &str) -> Vec<u8> {
    let family = if source.contains(':') { "TCP6" } else { "TCP4" };
    format!("PROXY {family} {source} {destination} 40000 25\r\n").into_bytes()
}

/// A v2 PROXY TCP4 header for `source:port`, with one TLV (RFC-less, type 0xE0) to skip.
fn v2(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    let tlv = [0xE0, 0x00, 0x03, b'a', b'b', b'c'];
    h.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
    h.extend_from_slice(&source);
    h.extend_from_slice(&[192, 0, 2, 25]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h.extend_from_slice(&tlv);
    h
}

/// The v2 LOCAL header a balancer's health check sends.
fn v2_local() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    h
}

/// Sends `header` in pieces of `step` octets, then a message; returns the client after QUIT.
fn send_through(addr: SocketAddr, header: &[u8], step: usize, tag: &str) {
    let mut c = Client::connect(addr);
    for piece in header.chunks(step) {
        c.send(piece);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        c.reply().starts_with("220 mx.test ESMTP"),
        "after {} octets at a time",
        step
    );
    assert!(c.cmd("EHLO lb.example").starts_with("250-mx.test"));
    c.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n");
    for _ in 0..3 {
        c.reply();
    }
    c.send(format!("Subject: {tag}\r\n\r\nproxied\r\n.\r\n").as_bytes());
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
}

/// Reads until the server closes; what it sent.
fn closed_with(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let mut all = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn proxy_headers_name_the_client_split_anywhere() {
    let dir = TempDir::new("proxy");
    // The clients the headers name may relay: what is tested here is who they are.
    let server = proxied(
        &dir,
        "relay_networks = [\"127.0.0.0/8\", \"192.0.2.0/24\", \"198.51.100.0/24\", \"2001:db8::/32\"]\n",
    );
    let headers = [
        (v1("192.0.2.7", "192.0.2.25"), "v1"),
        (v1("2001:db8::7", "2001:db8::25"), "v1 tcp6"),
        (v2([198, 51, 100, 9], 41000), "v2"),
    ];
    for (header, tag) in &headers {
        for step in [1, 5, header.len()] {
            send_through(server.addr, header, step, &format!("{tag} by {step}"));
        }
    }
    // A health check: the balancer's own connection, its own address kept.
    send_through(server.addr, &v2_local(), 3, "local");
    send_through(server.addr, b"PROXY UNKNOWN\r\n", 4, "unknown");
    let stopped = server.stop();
    stopped.assert_clean();
    let stored = spooled(&stopped.spool);
    assert_eq!(stored.len(), 3 * 3 + 2);
    let client_of = |tag: &str| -> String {
        let m = stored
            .iter()
            .find(|m| m.content().starts_with(format!("Subject: {tag}\r\n").as_bytes()))
            .unwrap_or_else(|| panic!("no message {tag}"));
        let eml = String::from_utf8_lossy(&m.eml).into_owned();
        eml.split_once('(')
            .unwrap()
            .1
            .split_once(')')
            .unwrap()
            .0
            .to_string()
            + " "
            + &m.json
    };
    for step in [1, 5] {
        assert!(client_of(&format!("v1 by {step}")).starts_with("[192.0.2.7] "));
        assert!(client_of(&format!("v1 tcp6 by {step}")).starts_with("[IPv6:2001:db8::7] "));
        let v2 = client_of(&format!("v2 by {step}"));
        assert!(v2.starts_with("[198.51.100.9] "), "{v2}");
        assert!(v2.contains(r#""client":"198.51.100.9:41000""#), "{v2}");
    }
    assert!(client_of("local").starts_with("[127.0.0.1] "));
    assert!(client_of("unknown").starts_with("[127.0.0.1] "));
    assert_eq!(stopped.stats["proxy.proxied"], 9);
    assert_eq!(stopped.stats["proxy.local"], 2);
}

fn bad_late_and_untrusted_proxy_headers_are_hung_up_on() {
    let dir = TempDir::new("proxy-bad");
    let server = proxied(&dir, "proxy_header_timeout_secs = 1\n");
    // Plain SMTP where a header belongs, a broken v1, a truncated v2 left hanging.
    for (bytes, _why) in [
        (&b"EHLO direct.example\r\n"[..], "not a header"),
        (&b"PROXY TCP4 1.2.3.4 5.6.7.8 01 25\r\n"[..], "a leading zero"),
        (&v2([192, 0, 2, 1], 1)[..20], "cut short"),
    ] {
        let mut c = TcpStream::connect(server.addr).unwrap();
        c.write_all(bytes).unwrap();
        let said = closed_with(&mut c);
        assert!(said.is_empty(), "no greeting without a header: {}", show(&said));
    }
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(stopped.stats["proxy.not_proxy"], 1);
    assert_eq!(stopped.stats["proxy.bad_v1"], 1);
    assert_eq!(stopped.stats["proxy.timeout"], 1);
    assert_eq!(stopped.stats["sessions_ended.proxy"], 3);

    let dir = TempDir::new("proxy-untrusted");
    let server = proxied(&dir, "proxy_trusted = [\"192.0.2.0/24\"]\n");
    let mut c = TcpStream::connect(server.addr).unwrap();
    c.write_all(&v1("192.0.2.7", "192.0.2.25")).unwrap();
    assert!(closed_with(&mut c).is_empty());
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(stopped.stats["proxy.untrusted"], 1);
    assert_eq!(stopped.stats["accepted"], 0);
}

/// The client a PROXY header names is the one policy judges: outside relay_networks it may
/// not relay, and it has its own per-client count.
fn the_proxied_client_is_the_one_judged() {
    let dir = TempDir::new("proxy-policy");
    let server = proxied(&dir, "max_connections_per_client = 2\n");
    let open = |source: &str| {
        let mut c = Client::connect(server.addr);
        c.send(&v1(source, "192.0.2.25"));
        c
    };
    let mut first = open("192.0.2.7");
    assert!(first.reply().starts_with("220 "));
    assert!(first.cmd("EHLO outside.example").starts_with("250-"));
    assert_eq!(first.cmd("MAIL FROM:<a@outside.example>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        first.cmd("RCPT TO:<b@elsewhere.example>"),
        "554 5.7.1 <b@elsewhere.example>: Relay access denied\r\n"
    );
    let mut second = open("192.0.2.7");
    assert!(second.reply().starts_with("220 "));
    let mut third = open("192.0.2.7");
    assert_eq!(
        third.reply(),
        "421 4.7.0 Error: too many connections from 192.0.2.7\r\n"
    );
    let mut other = open("192.0.2.8");
    assert!(
        other.reply().starts_with("220 "),
        "another client is not held to its count"
    );
    assert_eq!(second.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    drop(second);
    // The slot comes back once the server has seen the close.
    let mut again = None;
    for _ in 0..100 {
        let mut c = open("192.0.2.7");
        if c.reply().starts_with("220 ") {
            again = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(again.is_some(), "a closed connection gives its slot back");
    drop((first, third, other, again));
    let stopped = server.stop();
    stopped.assert_clean();
    assert!(stopped.stats["client_limits.connections"] >= 1);
    assert_eq!(stopped.stats["replies.relay_denied"], 1);
}

/// RCPT against the accepted domains and the recipients table, for a client outside
/// relay_networks (named by a PROXY header) and for one inside; then SIGHUP reloads the
/// table for new sessions while an open one keeps its own, and a broken file is refused.
fn recipients_are_checked_at_rcpt_and_reloaded() {
    let dir = TempDir::new("recipients");
    let table = dir.0.join("recipients");
    let install = |text: &str| {
        let tmp = dir.0.join("recipients.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &table).unwrap();
    };
    install("# the users\nalice@example.org\n@example.net\n");
    let path = config(
        &dir,
        &format!(
            "domains = [\"example.org\", \"Example.NET\"]\nrecipients = {:?}\n\
",
            table
        ),
    );
    let server = proxied_with(&path);
    // Through the balancer: one client outside relay_networks, one inside (127.0.0.0/8).
    let from = |source: &str| {
        let mut c = Client::connect(server.addr);
        c.send(&v1(source, "192.0.2.25"));
        assert!(c.reply().starts_with("220 "));
        assert!(c.cmd("EHLO client.example").starts_with("250-"));
        assert_eq!(c.cmd("MAIL FROM:<a@client.example>"), "250 2.1.0 Ok\r\n");
        c
    };
    let outsider = || from("192.0.2.7");
    let mut c = outsider();
    for (rcpt, want) in [
        ("alice@EXAMPLE.org", "250 2.1.5 Ok"),
        (
            "Alice@example.org",
            "550 5.1.1 <Alice@example.org>: Recipient address rejected: User unknown",
        ),
        ("anyone@example.net", "250 2.1.5 Ok"),
        ("PostMaster@example.org", "250 2.1.5 Ok"),
        ("postmaster", "250 2.1.5 Ok"),
        (
            "alice@example.com",
            "554 5.7.1 <alice@example.com>: Relay access denied",
        ),
    ] {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{rcpt}>")),
            format!("{want}\r\n"),
            "{rcpt}"
        );
    }
    // A relay_networks client may send anywhere, but not to an unknown user here.
    let mut inside = from("127.0.0.5");
    assert_eq!(inside.cmd("RCPT TO:<x@elsewhere.example>"), "250 2.1.5 Ok\r\n");
    assert!(inside.cmd("RCPT TO:<bob@example.org>").starts_with("550 5.1.1 "));

    let mut before = outsider();
    install("bob@example.org\n");
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reloaded");
    let mut after = outsider();
    assert_eq!(after.cmd("RCPT TO:<bob@example.org>"), "250 2.1.5 Ok\r\n");
    assert!(after.cmd("RCPT TO:<alice@example.org>").starts_with("550 5.1.1 "));
    assert_eq!(
        before.cmd("RCPT TO:<alice@example.org>"),
        "250 2.1.5 Ok\r\n",
        "an open session keeps its table"
    );
    install("bob@example.org\nnot an address\n");
    server.signal(libc::SIGHUP);
    server.wait_for_log("reload refused");
    assert!(
        server.log().contains(":2: "),
        "the bad line is named: {}",
        server.log()
    );
    let mut last = outsider();
    assert_eq!(
        last.cmd("RCPT TO:<bob@example.org>"),
        "250 2.1.5 Ok\r\n",
        "the old table stays"
    );
    drop((c, inside, before, after, last));
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(stopped.stats["replies.relay_denied"], 1);
    assert_eq!(stopped.stats["replies.unknown_user"], 3);
}

/// A table of 1,000,000 addresses loads at start and answers hits and misses.
fn a_million_recipients() {
    let dir = TempDir::new("million");
    let table = dir.0.join("recipients");
    let mut text = String::with_capacity(24 << 20);
    for i in 0..1_000_000 {
        text.push_str(&format!("user{i:07}@example.org\n"));
    }
    std::fs::write(&table, text).unwrap();
    let path = config(
        &dir,
        &format!("domains = [\"example.org\"]\nrecipients = {table:?}\n"),
    );
    let server = Server::start(&["--config", path.to_str().unwrap()]);
    assert!(server.log().contains("addresses=1000000"), "{}", server.log());
    let mut c = server.connect_greeted();
    assert!(c.cmd("EHLO x").starts_with("250-"));
    assert_eq!(c.cmd("MAIL FROM:<a@x.example>"), "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<user0999999@example.org>"), "250 2.1.5 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<user0000000@example.org>"), "250 2.1.5 Ok\r\n");
    assert!(c
        .cmd("RCPT TO:<user1000000@example.org>")
        .starts_with("550 5.1.1 "));
    drop(c);
    server.stop().assert_clean();
}

on_backends_and_formats!(
    formats: [proxy_headers_name_the_client_split_anywhere],
    backends: [
        bad_late_and_untrusted_proxy_headers_are_hung_up_on,
        the_proxied_client_is_the_one_judged,
        recipients_are_checked_at_rcpt_and_reloaded,
    ],
);

#[test]
fn a_million_recipients_load() {
    a_million_recipients();
}
