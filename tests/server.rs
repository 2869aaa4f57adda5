//! The real `ringmx serve` over TCP: transcripts, pipelining, the spool, limits, shutdown.

mod serverkit;

use serverkit::{all_at_once, mask_queue_ids, show, spooled, Client, Options, Server, TempDir, LIMIT};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const HOSTNAME: &str = "mx.test";

struct Transcript {
    name: String,
    input: Vec<u8>,
    expected: Vec<u8>,
    config: Option<PathBuf>,
    messages: Option<Vec<u8>>,
}

/// Every `NAME.in`/`NAME.ref` pair in `tests/transcripts` (see its README), plus one written
/// here so the test asserts something even before that directory exists on a branch.
fn transcripts() -> Vec<Transcript> {
    let mut all = vec![Transcript {
        name: "server_smoke".into(),
        input: b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n\
                 Subject: x\r\n\r\n..dot\r\n.\r\nNOOP\r\nQUIT\r\n"
            .to_vec(),
        expected: b"220 mx.test ESMTP ringmx\r\n250-mx.test\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n\
                    250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n\
                    250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n\
                    250 2.0.0 Ok: queued as TESTID\r\n250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"
            .to_vec(),
        config: None,
        messages: Some(b"Subject: x\r\n\r\n.dot\r\n".to_vec()),
    }];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return all;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".in").map(str::to_string))
        .collect();
    names.sort();
    for name in names {
        let path = |ext: &str| dir.join(format!("{name}.{ext}"));
        let Ok(expected) = std::fs::read(path("ref")) else {
            continue;
        };
        all.push(Transcript {
            input: std::fs::read(path("in")).unwrap(),
            expected,
            config: path("toml").exists().then(|| path("toml")),
            messages: std::fs::read(path("msg")).ok(),
            name,
        });
    }
    all
}

/// Drops the greeting lines if they differ only because of the server's hostname.
fn without_greeting(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(p) if bytes.starts_with(b"220 ") => &bytes[p + 1..],
        _ => bytes,
    }
}

fn run_transcripts(byte_at_a_time: bool) {
    let mut failures = Vec::new();
    let all = transcripts();
    for t in &all {
        let mut args = vec!["--hostname", HOSTNAME];
        let config;
        if let Some(path) = &t.config {
            config = path.to_str().unwrap().to_string();
            args.extend(["--config", config.as_str()]);
        }
        let server = Server::start(&args);
        let mut client = server.connect();
        if byte_at_a_time {
            for b in &t.input {
                // The server may close first (QUIT, a non-SMTP line): the rest is not needed.
                if client.stream.write_all(std::slice::from_ref(b)).is_err() {
                    break;
                }
            }
        } else {
            let _ = client.stream.write_all(&t.input);
        }
        client.half_close();
        let output = mask_queue_ids(&client.read_to_end());
        let stopped = server.stop();
        stopped.assert_clean();
        let spool = &stopped.spool;
        let (got, want) = if output.starts_with(b"220 mx.test ") {
            (&output[..], &t.expected[..])
        } else {
            (without_greeting(&output), without_greeting(&t.expected))
        };
        if got != want {
            failures.push(format!(
                "{}:\n--- expected\n{}--- got\n{}",
                t.name,
                show(want),
                show(got)
            ));
            continue;
        }
        if let Some(messages) = &t.messages {
            let stored: Vec<Vec<u8>> = spooled(spool).iter().map(|s| s.content().to_vec()).collect();
            let joined = stored.join(&b"==\r\n"[..]);
            if &joined != messages {
                failures.push(format!(
                    "{} spool:\n--- expected\n{}--- got\n{}",
                    t.name,
                    show(messages),
                    show(&joined)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} transcripts differ over TCP:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

fn transcripts_over_tcp_all_at_once() {
    run_transcripts(false);
}

fn transcripts_over_tcp_byte_at_a_time() {
    run_transcripts(true);
}

fn pipelined_batch_is_answered_in_one_write() {
    let server = Server::start(&["--sink"]);
    let mut c = server.connect();
    assert!(c.reply().starts_with("220 "));
    c.send(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nRSET\r\nNOOP\r\n");
    assert!(c.reply().starts_with("250-"));
    for _ in 0..4 {
        assert!(c.reply().starts_with("250 "));
    }
    assert!(c.cmd("QUIT").starts_with("221 "));
    assert!(c.read_to_end().is_empty());
    let stopped = server.stop();
    stopped.assert_clean();
    // Greeting, the whole batch, the reply to QUIT.
    assert_eq!(stopped.stats["io.writes"], 3, "{:?}", stopped.stats);
    assert_eq!(stopped.stats["commands"], 6);
}

fn lettre_message_sits_byte_exact_in_the_spool() {
    use lettre::message::header::ContentType;
    use lettre::{Message, SmtpTransport, Transport};
    let server = Server::start(&["--hostname", HOSTNAME]);
    let email = Message::builder()
        .from("Alice <alice@sender.example>".parse().unwrap())
        .to("bob@rcpt.example".parse().unwrap())
        .subject("spool test")
        .header(ContentType::TEXT_PLAIN)
        .body(String::from(
            "Line one.\r\n.A line that starts with a dot.\r\n..two dots\r\n.\r\nend\r\n",
        ))
        .unwrap();
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(server.addr.port())
        .timeout(Some(LIMIT))
        .build();
    let response = mailer.send(&email).expect("lettre sends");
    assert_eq!(response.code().to_string(), "250");
    let stopped = server.stop();
    stopped.assert_clean();
    let stored = spooled(&stopped.spool);
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    // lettre ends the data with "\r\n.\r\n" whether or not the message ends with a line end
    // (connection.rs), so the message as received carries one more CRLF than `formatted()`.
    let sent = [&email.formatted()[..], b"\r\n"].concat();
    assert_eq!(m.content(), &sent[..], "{}", show(&m.eml));
    let header = String::from_utf8_lossy(&m.eml[..m.eml.len() - m.content().len()]).into_owned();
    assert!(header.starts_with("Received: from "), "{header}");
    assert!(header.contains("([127.0.0.1])"), "{header}");
    assert!(
        header.contains(&format!("by {HOSTNAME} (ringmx) with ESMTP id {}", m.id)),
        "{header}"
    );
    assert!(header.contains("for <bob@rcpt.example>;"), "{header}");
    assert!(
        m.json.contains("\"mail_from\":\"alice@sender.example\""),
        "{}",
        m.json
    );
    assert!(
        m.json.contains("\"recipients\":[\"bob@rcpt.example\"]"),
        "{}",
        m.json
    );
    assert!(m.json.contains(&format!("\"size\":{}", sent.len())), "{}", m.json);
}

/// EHLO, MAIL and RCPT TO:<LOCAL@d.example>, then DATA, each accepted: the client may send the body.
fn start_data(c: &mut Client, local: &str) {
    assert!(c.cmd("EHLO c.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@b.example>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{local}@d.example>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
}

fn send_message(c: &mut Client, n: usize) -> String {
    start_data(c, &format!("r{n}"));
    c.send(format!("Subject: {n}\r\n\r\nbody {n}\r\n.\r\n").as_bytes());
    c.reply()
}

fn five_hundred_concurrent_sessions() {
    const SESSIONS: usize = 500;
    let server = Server::start(&["--workers", "2"]);
    // All 500 are open at once before any sends mail.
    all_at_once(server.addr, SESSIONS, 10, |t, clients| {
        for (i, c) in clients.iter_mut().enumerate() {
            let reply = send_message(c, t * 1000 + i);
            assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
            assert!(c.cmd("QUIT").starts_with("221"));
        }
    });
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(stopped.stats["accepted"], SESSIONS as u64);
    assert_eq!(stopped.stats["messages"], SESSIONS as u64);
    assert_eq!(spooled(&stopped.spool).len(), SESSIONS);
}

fn client_that_never_reads_is_bounded_and_others_are_served() {
    let server = Server::start(&["--sink"]);
    let mut greedy = server.connect();
    assert!(greedy.reply().starts_with("220 "));
    let rss_before = server.rss_kib();
    greedy.stream.set_nonblocking(true).unwrap();
    let batch = b"NOOP\r\n".repeat(10_000);
    let mut written = 0usize;
    let mut stalled_since = None;
    let start = Instant::now();
    // Pipeline without ever reading, until the server has stopped taking bytes for 1 s.
    while written < 256 << 20 && start.elapsed() < LIMIT {
        match greedy.stream.write(&batch) {
            Ok(n) => {
                written += n;
                stalled_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(
        written < 64 << 20,
        "the server kept reading: {written} bytes taken"
    );
    let rss_after = server.rss_kib();
    eprintln!("never-reading client: {written} bytes taken; server RSS {rss_before} -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "server memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    let mut polite = server.connect();
    assert!(polite.reply().starts_with("220 "));
    assert!(send_message(&mut polite, 1).starts_with("250 2.0.0 Ok: queued as "));
    assert!(polite.cmd("QUIT").starts_with("221"));
    drop(greedy);
    server.stop().assert_clean();
}

fn a_flooding_client_does_not_starve_another_on_its_worker() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let server = Server::start(&["--sink"]);
    let mut flood = server.connect();
    assert!(flood.reply().starts_with("220 "));
    assert!(flood.cmd("EHLO c.example").starts_with("250"));
    assert!(flood.cmd("MAIL FROM:<a@b.example>").starts_with("250"));
    assert!(flood.cmd("RCPT TO:<c@d.example>").starts_with("250"));
    assert!(flood.cmd("DATA").starts_with("354"));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (stop2, sent2) = (stop.clone(), sent.clone());
    let mut stream = flood.stream.try_clone().unwrap();
    // An endless message body, as fast as the server takes it: its socket never runs dry.
    let flooder = std::thread::spawn(move || {
        let lines = b"flood flood flood flood flood flood flood flood flood flood\r\n".repeat(1000);
        while !stop2.load(Ordering::Relaxed) {
            if stream.write_all(&lines).is_err() {
                break;
            }
            sent2.fetch_add(lines.len() as u64, Ordering::Relaxed);
        }
    });
    while sent.load(Ordering::Relaxed) < 4 << 20 {
        std::thread::sleep(Duration::from_millis(10));
    }
    // One worker: the polite session shares the event loop with the flood.
    let mut polite = server.connect();
    assert!(polite.reply().starts_with("220 "));
    for _ in 0..50 {
        assert_eq!(polite.cmd("NOOP"), "250 2.0.0 Ok\r\n");
    }
    assert!(polite.cmd("QUIT").starts_with("221"));
    // The flooder ends only when told to or when the server drops it: it was still flooding.
    assert!(
        !flooder.is_finished(),
        "the flood ended before the polite session"
    );
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    drop(flood);
    server.stop().assert_clean();
}

fn a_large_message_streams_to_the_spool_byte_exact() {
    let dir = TempDir::new("large");
    let config = dir.0.join("ringmx.toml");
    // The smallest spool queue, and another session committing small messages meanwhile: while
    // the spool writer waits for a flush, the queue fills and the worker pauses reading the
    // large body, then resumes (seen with a probe: dozens of pauses per run).
    std::fs::write(
        &config,
        "spool_queue_bytes = 65536\nmax_message_size = 33554432\n",
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let addr = server.addr;
    let small = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        assert!(c.reply().starts_with("220 "));
        for i in 0..100 {
            assert!(send_message(&mut c, i).starts_with("250 2.0.0 Ok: queued as "));
        }
    });
    let mut c = server.connect();
    assert!(c.reply().starts_with("220 "));
    start_data(&mut c, "c");
    let mut body = b"Subject: large\r\n\r\n".to_vec();
    for i in 0..200_000u32 {
        body.extend_from_slice(format!("{i:08} 0123456789abcdefghijklmnopqrstuvwxyz\r\n").as_bytes());
        if i % 1000 == 0 {
            body.extend_from_slice(b".a line that needs its dot stuffed\r\n");
        }
    }
    let mut wire = Vec::with_capacity(body.len() + 1000);
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b".\r\n");
    c.send(&wire);
    let reply = c.reply();
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let id = reply.trim_end().rsplit(' ').next().unwrap().to_string();
    small.join().expect("small-message session");
    let stopped = server.stop();
    stopped.assert_clean();
    let stored = spooled(&stopped.spool);
    assert_eq!(stored.len(), 101);
    let large = stored.iter().find(|m| m.id == id).expect("the large message");
    assert_eq!(large.content().len(), body.len());
    assert!(large.content() == &body[..], "content differs");
    assert!(
        large.json.contains(&format!("\"size\":{}", body.len())),
        "{}",
        large.json
    );
}

fn half_sent_message_then_disconnect_leaves_no_entry() {
    let server = Server::start(&[]);
    let mut c = server.connect();
    assert!(c.reply().starts_with("220 "));
    start_data(&mut c, "c");
    c.send(&b"Subject: cut\r\n\r\n".repeat(2000));
    drop(c);
    // Same worker, so its jobs reach the spool after the abort of the first.
    let mut d = server.connect();
    assert!(d.reply().starts_with("220 "));
    assert!(send_message(&mut d, 2).starts_with("250 2.0.0 Ok: queued as "));
    let stored = spooled(&server.spool);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].content(), b"Subject: 2\r\n\r\nbody 2\r\n");
    server.stop().assert_clean();
}

fn full_disk_is_answered_452_and_leaves_no_entry() {
    let server = Server::start_with(Options {
        args: &[],
        file_size_limit: Some(8192),
        ..Options::default()
    });
    let mut c = server.connect();
    assert!(c.reply().starts_with("220 "));
    start_data(&mut c, "c");
    c.send(&b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n".repeat(300));
    c.send(b".\r\n");
    let reply = c.reply();
    assert_eq!(reply, "452 4.3.1 Insufficient system storage\r\n");
    // The server is still fine for messages that fit.
    assert!(send_message(&mut c, 1).starts_with("250 2.0.0 Ok: queued as "));
    let stored = spooled(&server.spool);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].content(), b"Subject: 1\r\n\r\nbody 1\r\n");
    server.stop().assert_clean();
}

fn filesystem_sync_commits_a_pipelined_pair() {
    let dir = TempDir::new("syncfs");
    let config = dir.0.join("ringmx.toml");
    std::fs::write(&config, "spool_sync = \"filesystem\"\n").unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    assert!(server.log().contains("sync: Filesystem"), "{}", server.log());
    let mut c = server.connect();
    assert!(c.reply().starts_with("220 "));
    assert!(send_message(&mut c, 1).starts_with("250 2.0.0 Ok: queued as "));
    assert!(send_message(&mut c, 2).starts_with("250 2.0.0 Ok: queued as "));
    let stopped = server.stop();
    stopped.assert_clean();
    let stored = spooled(&stopped.spool);
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].content(), b"Subject: 2\r\n\r\nbody 2\r\n");
}

fn sigterm_mid_transaction_completes_it() {
    let server = Server::start(&[]);
    let mut busy = server.connect();
    let mut idle = server.connect();
    assert!(busy.reply().starts_with("220 "));
    assert!(idle.reply().starts_with("220 "));
    assert!(busy.cmd("EHLO c.example").starts_with("250"));
    assert!(busy.cmd("MAIL FROM:<a@b.example>").starts_with("250"));
    assert!(busy.cmd("RCPT TO:<c@d.example>").starts_with("250"));
    assert!(busy.cmd("DATA").starts_with("354"));
    busy.send(b"Subject: late\r\n\r\nfirst half\r\n");
    server.terminate();
    assert_eq!(idle.reply(), "421 4.3.2 Service shutting down\r\n");
    assert!(idle.read_to_end().is_empty());
    busy.send(b"second half\r\n.\r\n");
    assert!(busy.reply().starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(busy.reply(), "421 4.3.2 Service shutting down\r\n");
    assert!(busy.read_to_end().is_empty());
    let stopped = server.stop();
    stopped.assert_clean();
    let stored = spooled(&stopped.spool);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].content(),
        b"Subject: late\r\n\r\nfirst half\r\nsecond half\r\n"
    );
}

fn over_max_connections_gets_421() {
    let server = Server::start(&["--sink", "--max-connections", "2"]);
    let mut a = server.connect();
    let mut b = server.connect();
    assert!(a.reply().starts_with("220 "));
    assert!(b.reply().starts_with("220 "));
    let mut c = server.connect();
    assert_eq!(
        c.read_to_end(),
        b"421 4.3.2 Too many connections, try again later\r\n"
    );
    assert!(a.cmd("QUIT").starts_with("221"));
    assert!(a.read_to_end().is_empty());
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(stopped.stats["rejected"], 1);
}

fn idle_session_times_out_with_421() {
    let dir = TempDir::new("timeout");
    let config = dir.0.join("ringmx.toml");
    std::fs::write(&config, "command_timeout_secs = 1\n").unwrap();
    let server = Server::start(&["--sink", "--config", config.to_str().unwrap()]);
    let mut c = server.connect();
    assert!(c.reply().starts_with("220 "));
    let start = Instant::now();
    let reply = c.reply();
    assert!(reply.starts_with("421 4.4.2 "), "{reply}");
    assert!(c.read_to_end().is_empty());
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let stopped = server.stop();
    stopped.assert_clean();
    assert!(stopped.log.contains("reason=\"timeout\""), "{}", stopped.log);
}

fn ringmx(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringmx"))
        .args(args)
        .output()
        .expect("run ringmx")
}

#[test]
fn bad_values_are_refused_at_start() {
    let out = ringmx(&[
        "serve",
        "--sink",
        "--listen",
        "127.0.0.1:0",
        "--max-recipients",
        "5",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`max_recipients` = 5 is outside its allowed range 100..=100000"),
        "{err}"
    );
    let out = ringmx(&[
        "serve",
        "--sink",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "kqueue",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid value 'kqueue'"),
        "{out:?}"
    );
    let dir = TempDir::new("badconfig");
    let config = dir.0.join("bad.toml");
    std::fs::write(&config, "max_conections = 5\n").unwrap();
    let out = ringmx(&["serve", "--sink", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_conections"),
        "{out:?}"
    );
}

#[test]
fn help_documents_every_flag() {
    let out = ringmx(&["serve", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--workers",
        "--backend",
        "--spool",
        "--sink",
        "--hostname",
        "--max-connections",
        "--max-message-size",
        "--max-recipients",
        "--stats-file",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

/// Every test above that starts a server runs once per backend from the same body (as monoio's
/// `test_all`): `epoll::NAME` and `uring::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() { crate::serverkit::on_backend("epoll", super::$name) } )*
        }
        mod uring {
            $( #[test] fn $name() { crate::serverkit::on_backend("uring", super::$name) } )*
        }
    };
}

on_both_backends!(
    transcripts_over_tcp_all_at_once,
    transcripts_over_tcp_byte_at_a_time,
    pipelined_batch_is_answered_in_one_write,
    lettre_message_sits_byte_exact_in_the_spool,
    five_hundred_concurrent_sessions,
    client_that_never_reads_is_bounded_and_others_are_served,
    a_flooding_client_does_not_starve_another_on_its_worker,
    a_large_message_streams_to_the_spool_byte_exact,
    half_sent_message_then_disconnect_leaves_no_entry,
    full_disk_is_answered_452_and_leaves_no_entry,
    filesystem_sync_commits_a_pipelined_pair,
    sigterm_mid_transaction_completes_it,
    over_max_connections_gets_421,
    idle_session_times_out_with_421,
);
