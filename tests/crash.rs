//! The real `ringmx serve` killed with SIGKILL (right after a `250`, and under load at a random moment) or left with a torn segment tail, then restarted on the same spool: every acknowledged message comes back byte-exact, nothing that was not sent whole, and `spool check` is clean.

mod serverkit;

use ringmx::spool::log::scan;
use ringmx_loadgen::reply::{parse_reply, Parse};
use serverkit::{show, spooled, Server, Spooled, TempDir};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a client waits for the server before it counts as hung (a killed server closes
/// its connections at once).
const CLIENT_LIMIT: Duration = Duration::from_secs(20);

/// A spool that outlives the servers started on it, with segments of the smallest size the
/// configuration allows, so a few hundred kB of mail fills several and kills land in every
/// part of a segment's life.
struct Spool {
    _dir: TempDir,
    path: PathBuf,
    config: PathBuf,
}

impl Spool {
    fn new(name: &str) -> Spool {
        let dir = TempDir::new(name);
        let path = dir.0.join("spool");
        let config = dir.0.join("ringmx.toml");
        std::fs::write(&config, "spool_segment_size = 65536\n").unwrap();
        Spool {
            _dir: dir,
            path,
            config,
        }
    }

    /// Starts a server on this spool (it recovers what the last one left).
    fn serve(&self, workers: &str) -> Server {
        let spool = self.path.to_str().unwrap();
        let config = self.config.to_str().unwrap();
        Server::start(&["--spool", spool, "--config", config, "--workers", workers])
    }

    /// Every committed message, through `ringmx spool export`, by id.
    fn export(&self) -> BTreeMap<String, Spooled> {
        let out = TempDir::new("export");
        let done = Command::new(env!("CARGO_BIN_EXE_ringmx"))
            .args(["spool", "export", "--spool"])
            .arg(&self.path)
            .arg("--to")
            .arg(&out.0)
            .output()
            .unwrap();
        assert!(
            done.status.success(),
            "spool export: {}\n{}",
            done.status,
            String::from_utf8_lossy(&done.stderr)
        );
        spooled(&out.0).into_iter().map(|s| (s.id.clone(), s)).collect()
    }

    /// `ringmx spool check`: whether it exits 0, and its report.
    fn check(&self) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_ringmx"))
            .args(["spool", "check", "--spool"])
            .arg(&self.path)
            .output()
            .unwrap();
        let report =
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), report)
    }

    fn segments(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(self.path.join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        out.sort();
        out
    }
}

/// SIGKILL, then waits until the process is gone (so its spool lock is released).
fn kill(server: Server) -> String {
    server.signal(libc::SIGKILL);
    let log = server.log();
    // Dropping reaps it.
    drop(server);
    log
}

/// xorshift64*: the test's randomness, reproducible from the seed it prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// From `RINGMX_CRASH_SEED` if set (to replay a failure), else from the clock.
fn seed() -> u64 {
    let seed = std::env::var("RINGMX_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("RINGMX_CRASH_SEED={seed}");
    seed | 1
}

/// A message as received (after dot-unstuffing): a subject naming it, then lines of text none
/// of which starts with a dot, so it is also what goes on the wire before the final dot.
fn message(name: &str, rng: &mut Rng) -> Vec<u8> {
    // Most of a size a segment holds many of, some larger than a segment.
    let size = match rng.below(20) {
        0 => (64 << 10) + rng.below(200 << 10),
        1..=5 => (16 << 10) + rng.below(48 << 10),
        _ => 100 + rng.below(16 << 10),
    } as usize;
    let mut m = format!("Subject: {name}\r\nFrom: <sender@client.example>\r\n\r\n").into_bytes();
    while m.len() < size {
        let len = 1 + rng.below(100) as usize;
        m.extend((0..len).map(|_| b"abcdefghijklmnopqrstuvwxyz0123456789 "[rng.below(37) as usize]));
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// The name a message carries in its subject.
fn name_of(content: &[u8]) -> String {
    let line = content.split(|&b| b == b'\r').next().unwrap();
    String::from_utf8_lossy(line.strip_prefix(b"Subject: ").unwrap_or(line)).into_owned()
}

/// A loopback SMTP client that reports a connection the server dropped as an error instead
/// of failing the test: under a kill, that is what is expected.
struct Sender {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Sender {
    fn connect(addr: SocketAddr) -> io::Result<Sender> {
        let stream = TcpStream::connect_timeout(&addr, CLIENT_LIMIT)?;
        stream.set_read_timeout(Some(CLIENT_LIMIT))?;
        stream.set_write_timeout(Some(CLIENT_LIMIT))?;
        stream.set_nodelay(true)?;
        let mut s = Sender {
            stream,
            buf: Vec::new(),
        };
        s.expect(220)?;
        s.command("EHLO client.example", 250)?;
        Ok(s)
    }

    /// Reads one reply; any code but `code` fails the test (a live server has no reason to
    /// refuse), a connection that ends is an error.
    fn expect(&mut self, code: u16) -> io::Result<String> {
        loop {
            match parse_reply(&self.buf) {
                Parse::Complete(reply) => {
                    let text: Vec<u8> = self.buf.drain(..reply.len).collect();
                    let text = String::from_utf8_lossy(&text).into_owned();
                    assert_eq!(reply.code, code, "unexpected reply: {text}");
                    return Ok(text);
                }
                Parse::Invalid(why) => panic!("not an SMTP reply ({why}): {}", show(&self.buf)),
                Parse::Incomplete => {}
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn command(&mut self, line: &str, code: u16) -> io::Result<String> {
        self.stream.write_all(format!("{line}\r\n").as_bytes())?;
        self.expect(code)
    }

    fn begin(&mut self) -> io::Result<()> {
        self.command("MAIL FROM:<sender@client.example>", 250)?;
        self.command("RCPT TO:<rcpt@mx.test>", 250)?;
        self.command("DATA", 354)?;
        Ok(())
    }

    /// Sends the final dot and reads the queue id from the `250`.
    fn end(&mut self) -> io::Result<String> {
        self.stream.write_all(b".\r\n")?;
        self.queued()
    }

    /// The queue id from the `250` after the final dot.
    fn queued(&mut self) -> io::Result<String> {
        let reply = self.expect(250)?;
        Ok(reply.trim_end().rsplit(' ').next().unwrap().to_string())
    }
}

/// What one client thread of the load got through before the kill.
#[derive(Default)]
struct Sent {
    /// Acknowledged: queue id and content.
    acked: Vec<(String, Vec<u8>)>,
    /// Its final dot was sent and no reply came: the server may or may not have it.
    in_flight: Option<Vec<u8>>,
}

/// Sends messages over one connection until the server goes away.
/// Sends messages until the connection fails, counting each acknowledgement in `acks`.
fn load(addr: SocketAddr, round: usize, thread: usize, seed: u64, acks: &AtomicUsize) -> Sent {
    let mut rng = Rng(seed);
    let mut sent = Sent::default();
    let Ok(mut c) = Sender::connect(addr) else {
        return sent;
    };
    let mut n = 0;
    loop {
        let m = message(&format!("crash {round}-{thread}-{n}"), &mut rng);
        n += 1;
        if c.begin().is_err() || c.stream.write_all(&m).is_err() || c.stream.write_all(b".\r\n").is_err() {
            return sent;
        }
        // The final dot is out: the server may commit the message whether or not its reply
        // makes it back.
        sent.in_flight = Some(m);
        match c.queued() {
            Ok(id) => {
                sent.acked.push((id, sent.in_flight.take().unwrap()));
                acks.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => return sent,
        }
    }
}

#[test]
fn a_message_acknowledged_right_before_a_kill_survives_it_byte_exact() {
    let spool = Spool::new("crash-250");
    let server = spool.serve("1");
    let mut c = Sender::connect(server.addr).unwrap();
    let mut rng = Rng(7);
    let m = message("acknowledged then killed", &mut rng);
    c.begin().unwrap();
    c.stream.write_all(&m).unwrap();
    let id = c.end().unwrap();
    kill(server);

    let server = spool.serve("1");
    let found = spool.export();
    assert_eq!(found.keys().collect::<Vec<_>>(), [&id], "{}", server.log());
    assert!(
        found[&id].content() == m,
        "{id} changed:\n{}",
        show(&found[&id].eml)
    );
    let (clean, report) = spool.check();
    assert!(clean, "{report}");
    server.stop().assert_clean();
}

#[test]
fn kills_under_load_lose_no_acknowledged_message_and_keep_no_partial_one() {
    const ROUNDS: usize = 3;
    const THREADS: usize = 3;
    let mut rng = Rng(seed());
    let spool = Spool::new("crash-load");
    // Every message a client sent whole, by name: what the spool may hold of it.
    let mut whole: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // Acknowledged messages by id, and the messages the spool has shown since a restart
    // (which must stay), by id.
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut kept: BTreeMap<String, String> = BTreeMap::new();
    let mut server = spool.serve("2");
    for round in 0..ROUNDS {
        let addr = server.addr;
        let acks = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..THREADS)
            .map(|t| {
                let seed = rng.next();
                let acks = acks.clone();
                thread::spawn(move || load(addr, round, t, seed, &acks))
            })
            .collect();
        // The load is under way (a first message acknowledged: on a loaded machine that can
        // take longer than the shortest delay), then the kill comes at an arbitrary moment of
        // it: that moment is what is tested.
        let started = std::time::Instant::now();
        while acks.load(Ordering::SeqCst) == 0 {
            assert!(
                started.elapsed() < CLIENT_LIMIT,
                "round {round}: no message acknowledged\n{}",
                server.log()
            );
            thread::sleep(Duration::from_millis(5));
        }
        let delay = Duration::from_millis(200 + rng.below(1300));
        thread::sleep(delay);
        let log = kill(server);
        let mut in_flight = Vec::new();
        for c in clients {
            let sent = c.join().expect("client thread");
            for (id, m) in sent.acked {
                let name = name_of(&m);
                acked.insert(id, name.clone());
                whole.insert(name, m);
            }
            if let Some(m) = sent.in_flight {
                in_flight.push(name_of(&m));
                whole.insert(name_of(&m), m);
            }
        }
        let context = format!("round {round}, killed after {delay:?}");
        assert!(
            acked.values().any(|n| n.starts_with(&format!("crash {round}-"))),
            "{context}: no message acknowledged before the kill:\n{log}"
        );

        server = spool.serve("2");
        let found = spool.export();
        for (id, name) in &acked {
            let Some(s) = found.get(id) else {
                panic!(
                    "{context}: {id} ({name}) was acknowledged and is lost\n{}",
                    server.log()
                );
            };
            assert_eq!(
                name_of(s.content()),
                *name,
                "{context}: {id} holds another message"
            );
        }
        for (id, name) in &kept {
            assert!(
                found.contains_key(id),
                "{context}: {id} ({name}) was recovered before and is lost now"
            );
        }
        let mut names: Vec<String> = found.values().map(|s| name_of(s.content())).collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            found.len(),
            "{context}: a message is in the spool twice"
        );
        for (id, s) in &found {
            let name = name_of(s.content());
            assert!(
                acked.get(id) == Some(&name) || kept.get(id) == Some(&name) || in_flight.contains(&name),
                "{context}: {id} ({name}) was neither acknowledged nor in flight"
            );
            let Some(m) = whole.get(&name) else {
                panic!(
                    "{context}: {id} is no message a client sent whole: {}",
                    show(&s.eml)
                );
            };
            assert!(
                s.content() == &m[..],
                "{context}: {id} ({name}) is not what was sent"
            );
            kept.insert(id.clone(), name);
        }
        let (clean, report) = spool.check();
        assert!(clean, "{context}: spool check after the restart:\n{report}");
        eprintln!(
            "{context}: {} acknowledged, {} in flight, {} in the spool",
            acked.len(),
            in_flight.len(),
            found.len()
        );
    }
    server.stop().assert_clean();
    assert_eq!(spool.export().len(), kept.len());
    let (clean, report) = spool.check();
    assert!(clean, "after a clean stop:\n{report}");
}

#[test]
fn a_torn_segment_tail_is_cut_at_start_and_every_committed_message_stays() {
    let spool = Spool::new("crash-torn");
    let server = spool.serve("1");
    let mut c = Sender::connect(server.addr).unwrap();
    let mut rng = Rng(11);
    let mut sent = BTreeMap::new();
    for n in 0..5 {
        let m = message(&format!("torn {n}"), &mut rng);
        c.begin().unwrap();
        c.stream.write_all(&m).unwrap();
        sent.insert(c.end().unwrap(), m);
    }
    drop(c);
    server.stop().assert_clean();

    // What a write cut short leaves after the last record: a header that frames a record
    // and part of its payload, over the zeros of the preallocation.
    let last = spool.segments().pop().expect("a segment");
    let used = scan::scan(&last, false, |_, _| {}).unwrap().end;
    let mut torn = Vec::new();
    torn.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    torn.extend_from_slice(&4000u32.to_le_bytes());
    torn.extend_from_slice(&[3, 0, 0, 0]);
    torn.extend_from_slice(&77u64.to_le_bytes());
    torn.extend((0..1000u32).map(|i| (i * 7) as u8));
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &torn, used).unwrap();
    drop(file);
    let (clean, report) = spool.check();
    assert!(!clean, "spool check missed the torn tail:\n{report}");

    let server = spool.serve("1");
    server.wait_for_log("torn or corrupt tail; truncated there");
    assert_eq!(std::fs::metadata(&last).unwrap().len(), used);
    let found = spool.export();
    assert_eq!(found.keys().collect::<Vec<_>>(), sent.keys().collect::<Vec<_>>());
    for (id, m) in &sent {
        assert!(found[id].content() == &m[..], "{id} changed");
    }
    let (clean, report) = spool.check();
    assert!(clean, "{report}");
    server.stop().assert_clean();
}
