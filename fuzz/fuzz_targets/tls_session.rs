//! Fuzzes the session behind the worker's TLS layer: whatever follows STARTTLS in its packet is never answered, and bytes in any records and packets after the handshake get exactly the bare session's replies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmx::config::ProtoConfig;
use ringmx::proto::{Client, Commit, Event, Session, Settings};
use ringmx::tls::{CertEntry, TlsContext};
use ringmx::worker::{Tls, TlsStats};
use rustls::client::Resumption;
use rustls::crypto::aws_lc_rs::default_provider;
use rustls::crypto::aws_lc_rs::kx_group::X25519;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use std::io::{ErrorKind, Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The fuzzing client, on a plain listener and on an implicit TLS one.
const PLAIN: Client = Client {
    relay: true,
    tls: false,
};
const IMPLICIT: Client = Client {
    relay: true,
    tls: true,
};

const READY: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
const STARTTLS: &[u8] = b"EHLO x\r\nSTARTTLS\r\n";
/// The most the server may hand the socket at once: a batch of replies (the session stops
/// reading one reply past `max_reply_backlog`) plus a handshake flight and record overhead.
const WIRE_SLACK: usize = 4096;

struct Fixture {
    settings: Arc<Settings>,
    server: Arc<ServerConfig>,
    /// A client that trusts the server's certificate, for TLS 1.3 and for TLS 1.2.
    clients: [Arc<ClientConfig>; 2],
}

/// The certificate and the configurations, made once: a handshake is costly enough per run.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut config = ProtoConfig::default();
        config.starttls = true;
        config.limits.max_message_size = 2048;
        // The smallest backlog allowed, so pipelined replies fill it and the worker's
        // stop-and-pump path runs under TLS too.
        config.limits.max_reply_backlog = 1024;
        let cert = rcgen::generate_simple_self_signed(vec!["mx.test".to_string()]).unwrap();
        // The server's configuration is the operator's, read from PEM files.
        let dir = std::env::temp_dir().join(format!("ringmx-fuzz-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let entry = CertEntry {
            names: vec!["mx.test".to_string()],
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&entry.cert, cert.cert.pem()).unwrap();
        std::fs::write(&entry.key, cert.signing_key.serialize_pem()).unwrap();
        let server = TlsContext::new(&[entry], 0).unwrap().server_config();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client = |version| {
            // X25519 alone: the hybrid post-quantum share would double the key exchange's cost.
            let provider = CryptoProvider {
                kx_groups: vec![X25519],
                ..default_provider()
            };
            let mut c = ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            // A run that resumes the previous run's session would handshake differently.
            c.resumption = Resumption::disabled();
            Arc::new(c)
        };
        Fixture {
            settings: Settings::new(config),
            server,
            clients: [client(&TLS13), client(&TLS12)],
        }
    })
}

/// A TLS layer as the worker starts one: `wire` holds what must leave before the handshake.
fn start_tls(now: Instant, wire: Vec<u8>) -> Box<Tls> {
    let deadline = now + Duration::from_secs(30);
    Tls::new(Arc::clone(&fixture().server), deadline, wire).unwrap()
}

/// One connection's server side, glued to the session as `worker::conn` does
/// (`receive`, `feed`, `events`, and the pump after each completed send), with a store that
/// commits at once and a socket that takes whatever is sent.
struct Server {
    session: Session,
    tls: Option<Box<Tls>>,
    stats: TlsStats,
    input: Vec<u8>,
    out: Vec<u8>,
    /// The session closed: the worker reads nothing more.
    ended: bool,
    now: Instant,
}

impl Server {
    fn new(implicit: bool, now: Instant) -> Server {
        let fx = fixture();
        let mut out = Vec::new();
        let (session, tls) = if implicit {
            (
                Session::pending(fx.settings.clone(), now),
                Some(start_tls(now, Vec::new())),
            )
        } else {
            (Session::new(fx.settings.clone(), PLAIN, now, &mut out), None)
        };
        Server {
            session,
            tls,
            stats: TlsStats::default(),
            input: Vec::new(),
            out,
            ended: false,
            now,
        }
    }

    fn receive(&mut self, buf: &[u8]) {
        if self.ended {
            return;
        }
        if let Some(tls) = &mut self.tls {
            // The client is a correct rustls client: any failure is the server's.
            let established = tls.receive(buf, &mut self.input).unwrap();
            if established {
                // As the worker does: an implicit session starts, one after STARTTLS starts over.
                tls.established(&mut self.stats);
                self.session.handle_start(self.now, IMPLICIT, &mut self.out);
                self.session.handle_tls_established(self.now, &mut self.out);
                self.events();
            }
        } else {
            self.input.extend_from_slice(buf);
        }
        self.pump();
    }

    fn pump(&mut self) {
        let input = std::mem::take(&mut self.input);
        let n = self.feed(&input);
        self.input = input;
        self.input.drain(..n);
    }

    fn feed(&mut self, bytes: &[u8]) -> usize {
        let plaintext = self.tls.is_none();
        let backlog = fixture().settings.config.limits.max_reply_backlog;
        let mut off = 0;
        loop {
            if self.tls.as_ref().is_some_and(|t| t.wire.len() >= backlog) {
                return off;
            }
            let n = self
                .session
                .handle_input(self.now, &bytes[off..], &mut self.out)
                .consumed;
            if self.session.stats().should_fold() {
                self.session.take_stats();
            }
            off += n;
            let evented = self.events();
            if plaintext && self.tls.is_some() {
                // The rest of the packet after STARTTLS is dropped, and counted as the worker does.
                self.stats.injected_octets += (bytes.len() - off) as u64;
                return bytes.len();
            }
            if off == bytes.len() || (n == 0 && !evented) {
                return off;
            }
        }
    }

    fn events(&mut self) -> bool {
        let mut any = false;
        while let Some(event) = self.session.poll_event() {
            any = true;
            match event {
                Event::MessageEnd => self
                    .session
                    .handle_commit(self.now, Commit::Queued("F"), &mut self.out),
                Event::MessageStart | Event::MessageAbort => {}
                Event::StartTls => {
                    // The replies up to the `220` leave in plaintext, ahead of the handshake.
                    self.tls = Some(start_tls(self.now, std::mem::take(&mut self.out)));
                }
                Event::Close(_) => self.ended = true,
            }
        }
        any
    }

    /// The end of the worker's turn: seal and send, and, as each send completes at once here,
    /// pump what the reply backlog held back, until nothing more leaves.
    fn settle(&mut self) -> Vec<u8> {
        let backlog = fixture().settings.config.limits.max_reply_backlog;
        let mut sent = Vec::new();
        loop {
            let wire = match &mut self.tls {
                Some(tls) => {
                    // As `Conn::seal`: the last replies, then close_notify behind them.
                    tls.seal(&mut self.out);
                    if self.ended {
                        tls.close();
                        tls.seal(&mut self.out);
                    }
                    &mut tls.wire
                }
                None => &mut self.out,
            };
            assert!(
                wire.len() <= backlog + WIRE_SLACK,
                "{} octets to send",
                wire.len()
            );
            if wire.is_empty() {
                // Only a `.<CR>` in DATA waits for the octet after it.
                assert!(self.input.len() <= 1, "{} octets left unread", self.input.len());
                return sent;
            }
            sent.append(wire);
            self.pump();
        }
    }
}

/// The client and its connection to the server, one worker turn per packet.
struct Link {
    server: Server,
    client: ClientConnection,
    packet: usize,
    /// Whether the client runs TLS (it switches once the last plaintext is the `220`).
    secure: bool,
    /// Everything the client read: plaintext replies, then decrypted ones.
    got: Vec<u8>,
}

impl Link {
    /// Sends `bytes` in packets of `packet` octets.
    fn send(&mut self, bytes: &[u8]) {
        for packet in bytes.chunks(self.packet) {
            self.deliver(packet);
        }
    }

    /// One packet: one worker turn, whose answer the client reads.
    fn deliver(&mut self, packet: &[u8]) {
        self.server.receive(packet);
        self.read();
    }

    fn read(&mut self) {
        let mut wire = &self.server.settle()[..];
        if !self.secure {
            self.got.extend_from_slice(wire);
            return;
        }
        while !wire.is_empty() {
            self.client.read_tls(&mut wire).unwrap();
            self.client.process_new_packets().expect("the server's records");
            if let Err(e) = self.client.reader().read_to_end(&mut self.got) {
                assert_eq!(e.kind(), ErrorKind::WouldBlock);
            }
        }
    }

    /// Whether the server awaits the handshake, as the client sees it: its last plaintext is
    /// the `220` to STARTTLS.
    fn ready(&self) -> bool {
        let ready = self.got.ends_with(READY);
        assert_eq!(
            ready,
            self.server.tls.is_some(),
            "the 220 and the switch to TLS disagree"
        );
        ready
    }

    /// The records the client has ready.
    fn flight(&mut self) -> Vec<u8> {
        let mut records = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut records).unwrap();
        }
        records
    }

    /// Runs the handshake up to the client's last flight, which leaves with the first data
    /// (TLS 1.3 lets the client's Finished and its first command share a packet).
    fn handshake(&mut self) {
        self.secure = true;
        while self.client.is_handshaking() {
            let flight = self.flight();
            assert!(!flight.is_empty(), "the handshake stalled");
            self.send(&flight);
        }
    }

    /// Writes `bytes` through TLS in `write` octet writes (a record or more each), then sends
    /// all the records in packets that cut across them.
    fn write(&mut self, bytes: &[u8], write: usize) {
        for chunk in bytes.chunks(write) {
            self.client.writer().write_all(chunk).unwrap();
        }
        let records = self.flight();
        self.send(&records);
    }
}

/// How the client reaches TLS.
enum Mode<'a> {
    /// An implicit TLS listener: the handshake, then the bytes.
    Implicit,
    /// EHLO, then STARTTLS with `tail` in its packet, the handshake, then the bytes.
    Injected { tail: &'a [u8] },
    /// The bytes in plaintext writes, through TLS from the write after the one the server
    /// answered with its `220`.
    Plain,
}

/// What the client reads, and the server's counters.
fn run(mode: &Mode, client: usize, write: usize, packet: usize, bytes: &[u8]) -> (Vec<u8>, TlsStats) {
    let fx = fixture();
    let name = ServerName::try_from("mx.test").unwrap();
    let mut client = ClientConnection::new(Arc::clone(&fx.clients[client]), name).unwrap();
    // Everything is written before anything is sent.
    client.set_buffer_limit(None);
    let mut link = Link {
        server: Server::new(matches!(mode, Mode::Implicit), Instant::now()),
        client,
        packet,
        secure: false,
        got: Vec::new(),
    };
    // The greeting, or nothing until the handshake on an implicit TLS listener.
    link.read();
    let mut rest = bytes;
    match mode {
        Mode::Implicit => link.handshake(),
        Mode::Injected { tail } => {
            link.deliver(&[STARTTLS, tail].concat());
            assert!(link.ready(), "no STARTTLS");
            link.handshake();
        }
        Mode::Plain => {
            let mut sent = 0;
            for chunk in bytes.chunks(write) {
                link.deliver(chunk);
                sent += chunk.len();
                if link.ready() {
                    link.handshake();
                    break;
                }
            }
            rest = &bytes[sent..];
        }
    }
    // Sent even when `rest` is empty: it carries the client's Finished.
    if link.secure {
        link.write(rest, write);
    }
    (link.got, link.server.stats)
}

/// What the bare session answers to `packets`, dropping whatever follows a STARTTLS line in
/// its packet and taking the handshake as done at once.
fn reference<'a>(implicit: bool, packets: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let fx = fixture();
    let now = Instant::now();
    let (mut got, mut out) = (Vec::new(), Vec::new());
    let mut session = if implicit {
        Session::new(fx.settings.clone(), IMPLICIT, now, &mut out)
    } else {
        Session::new(fx.settings.clone(), PLAIN, now, &mut out)
    };
    let mut pending = Vec::new();
    for packet in packets {
        pending.extend_from_slice(packet);
        loop {
            let n = session.handle_input(now, &pending, &mut out).consumed;
            if session.stats().should_fold() {
                session.take_stats();
            }
            pending.drain(..n);
            let mut evented = false;
            while let Some(event) = session.poll_event() {
                evented = true;
                match event {
                    Event::MessageEnd => session.handle_commit(now, Commit::Queued("F"), &mut out),
                    Event::StartTls => {
                        pending.clear();
                        session.handle_tls_established(now, &mut out);
                    }
                    _ => {}
                }
            }
            // Drained at every stop, so the reply backlog never holds the session back.
            got.append(&mut out);
            if pending.is_empty() || (n == 0 && !evented) {
                break;
            }
        }
    }
    got
}

/// A split size from a knob: 1 to 128 octets, or with the high bit 32 to 4096 (libFuzzer's
/// default input size), so both octet-by-octet and whole-batch splits are near.
fn step(knob: u8) -> usize {
    let n = usize::from(knob & 0x7f) + 1;
    if knob & 0x80 != 0 {
        n * 32
    } else {
        n
    }
}

fuzz_target!(|data: &[u8]| {
    // Four knobs: the mode and TLS version, the client's write size, the packet size, and
    // where STARTTLS goes; the rest is the client's bytes.
    let Some((&[mode, write, packet, at], bytes)) = data.split_first_chunk::<4>() else {
        return;
    };
    let (client, write, packet) = (usize::from(mode >> 7), step(write), step(packet));
    let (got, expected) = match (mode & 0x7f) % 3 {
        0 => {
            let (got, _) = run(&Mode::Implicit, client, write, packet, bytes);
            (got, reference(true, [bytes].into_iter()))
        }
        1 => {
            let (tail, bytes) = bytes.split_at(usize::from(at).min(bytes.len()));
            let (got, stats) = run(&Mode::Injected { tail }, client, write, packet, bytes);
            assert_eq!(
                stats.injected_octets,
                tail.len() as u64,
                "the injected tail was not dropped whole"
            );
            // The reference never sees the tail: none of it may be answered.
            (got, reference(false, [STARTTLS, bytes].into_iter()))
        }
        _ => {
            let at = bytes.len() * usize::from(at) / 255;
            let bytes = [&bytes[..at], b"STARTTLS\r\n", &bytes[at..]].concat();
            let (got, _) = run(&Mode::Plain, client, write, packet, &bytes);
            (got, reference(false, bytes.chunks(write)))
        }
    };
    assert!(
        got == expected,
        "TLS changed the answer:\n{}\n--- the bare session:\n{}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected)
    );
    for line in got.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.ends_with(b"\r") && line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit));
    }
});
