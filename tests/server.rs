//! The real `ringmx serve` over TCP: transcripts, pipelining, the spool, limits, shutdown.

#[macro_use]
mod serverkit;
mod support;

use serverkit::{
    all_at_once, committed, in_flight, mask_queue_ids, show, spooled, write_until_refused, Client, Options,
    Server, TempDir, LIMIT,
};
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{transcripts, HOSTNAME};

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
        if let Some(path) = &t.config_file {
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
    // Pipeline without ever reading, until the server has stopped taking bytes for 1 s.
    let written = write_until_refused(|| greedy.stream.write(&batch));
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
    // large body, then resumes (seen with a probe: dozens of pauses per run). With the log,
    // the smallest segment too: the large message soon fills its segment and finishes there,
    // growing it, while the small ones still to come move on to new segments.
    std::fs::write(
        &config,
        "spool_queue_bytes = 65536\nmax_message_size = 33554432\nspool_segment_size = 65536\n",
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
    c.send(&ringmx_loadgen::dot_stuff(&body));
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
    // Files no larger than a segment and a quarter: a segment is preallocated within that,
    // and a message larger fails to fit either in its .eml or in the segment it grows.
    const SEGMENT: u64 = 65536;
    let dir = TempDir::new("fulldisk");
    let config = dir.0.join("ringmx.toml");
    std::fs::write(&config, format!("spool_segment_size = {SEGMENT}\n")).unwrap();
    let server = Server::start_with(Options {
        args: &["--config", config.to_str().unwrap()],
        file_size_limit: Some(SEGMENT + SEGMENT / 4),
        ..Options::default()
    });
    let mut c = server.connect();
    assert!(c.reply().starts_with("220 "));
    start_data(&mut c, "c");
    // About 100 KiB.
    c.send(&b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n".repeat(1400));
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
    // spool_sync is how the files format commits; the log has one fdatasync per segment.
    let server = Server::start(&["--config", config.to_str().unwrap(), "--spool-format", "files"]);
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

/// The `max_connections` the server lowered itself to at start, from its warning.
fn lowered_max_connections(server: &Server) -> usize {
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("max_connections lowered to fit the open-files limit"))
        .unwrap_or_else(|| panic!("no lowered max_connections in the log:\n{log}"));
    assert!(line.contains("configured=10000"), "{line}");
    line.split("lowered=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn out_of_descriptors_max_connections_is_lowered_and_the_rest_get_421() {
    let server = Server::start_with(Options {
        args: &["--sink"],
        open_files_limit: Some(40),
        ..Options::default()
    });
    // More connections than descriptors allow: the server lowered max_connections to fit at
    // start, so each one over it is answered at once instead of waiting in the backlog.
    let max = lowered_max_connections(&server);
    assert!((10..40).contains(&max), "{max}");
    let mut clients: Vec<Client> = (0..50).map(|_| server.connect()).collect();
    for c in &mut clients[..max] {
        assert!(c.reply().starts_with("220 "));
    }
    for c in &mut clients[max..] {
        assert_eq!(
            c.read_to_end(),
            b"421 4.3.2 Too many connections, try again later\r\n"
        );
    }
    for c in &mut clients[..max / 2] {
        assert!(c.cmd("QUIT").starts_with("221"));
        assert!(c.read_to_end().is_empty());
    }
    // Those are free again: as many new connections get their greeting.
    let mut later: Vec<Client> = (0..max / 2).map(|_| server.connect()).collect();
    for c in &mut later {
        assert!(c.reply().starts_with("220 "));
    }
    drop((clients, later));
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(stopped.stats["rejected"], 50 - max as u64);
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
    assert_eq!(stopped.stats["sessions_ended.timeout"], 1, "{:?}", stopped.stats);
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

/// A message whose end arrived intact is committed and its `250` attempted, whatever follows
/// the final dot: a half-close (the client still reads), a whole transaction in one write then
/// a half-close, or a full close (nobody reads the `250`; the message is stored all the same).
/// Both backends alike.
fn fin_right_after_the_final_dot_commits_the_message() {
    let server = Server::start(&[]);
    let mut c = server.connect();
    assert!(c.reply().starts_with("220 "));
    start_data(&mut c, "half");
    c.send(b"Subject: half\r\n\r\nbody\r\n.\r\n");
    c.half_close();
    let rest = String::from_utf8(c.read_to_end()).unwrap();
    assert!(rest.starts_with("250 2.0.0 Ok: queued as "), "{rest:?}");

    let mut d = server.connect();
    assert!(d.reply().starts_with("220 "));
    d.send(
        b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<piped@d.example>\r\nDATA\r\n\
        Subject: piped\r\n\r\nbody\r\n.\r\n",
    );
    d.half_close();
    let rest = String::from_utf8(d.read_to_end()).unwrap();
    let last = rest.trim_end().lines().last().unwrap_or("");
    assert!(last.starts_with("250 2.0.0 Ok: queued as "), "{rest:?}");

    let mut e = server.connect();
    assert!(e.reply().starts_with("220 "));
    start_data(&mut e, "gone");
    e.send(b"Subject: gone\r\n\r\nbody\r\n.\r\n");
    drop(e);

    // DATA and the content in one write, then a reset: the server reads the content, then
    // ECONNRESET, in the same turn.
    let mut f = server.connect();
    assert!(f.reply().starts_with("220 "));
    f.send(
        b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<reset@d.example>\r\nDATA\r\n\
        Subject: reset\r\n\r\nbody\r\n.\r\n",
    );
    socket2::SockRef::from(&f.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(f);
    // Nothing tells this client when the server is done with it: wait for the spool (a
    // shutdown before the server read the reset connection would rightly drop it unread).
    let deadline = Instant::now() + LIMIT;
    while committed(&server.spool) < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stopped = server.stop();
    stopped.assert_clean();
    let mut subjects: Vec<String> = spooled(&stopped.spool)
        .iter()
        .map(|m| {
            String::from_utf8_lossy(m.content())
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "Subject: gone",
            "Subject: half",
            "Subject: piped",
            "Subject: reset"
        ]
    );
}

/// The stats file counts every reply by kind, every non-SMTP session by class and every
/// session by why it ended, as the sessions reported them.
fn the_stats_file_counts_replies_classes_and_close_reasons() {
    let server = Server::start(&[]);
    let mut http = server.connect();
    assert!(http.reply().starts_with("220 "));
    http.send(b"GET / HTTP/1.1\r\n");
    assert!(http.reply().starts_with("554 5.5.0 "));
    assert!(http.read_to_end().is_empty());
    let mut typo = server.connect();
    assert!(typo.reply().starts_with("220 "));
    assert!(typo.cmd("XYZZY").starts_with("500 5.5.1 "));
    assert!(send_message(&mut typo, 1).starts_with("250 2.0.0 Ok: queued as "));
    assert!(typo.cmd("QUIT").starts_with("221"));
    assert!(typo.read_to_end().is_empty());
    let stopped = server.stop();
    stopped.assert_clean();
    let s = &stopped.stats;
    let expect = [
        ("replies.greeting", 2),
        ("replies.unrecognized", 1),
        ("replies.ehlo", 1),
        ("replies.mail_ok", 1),
        ("replies.rcpt_ok", 1),
        ("replies.start_data", 1),
        ("replies.queued", 1),
        ("replies.bye", 1),
        ("replies.non_smtp", 1),
        ("non_smtp.http", 1),
        ("non_smtp.ssh", 0),
        ("sessions_ended.quit", 1),
        ("sessions_ended.non_smtp", 1),
        ("sessions_ended.timeout", 0),
        ("errors", 1),
        ("messages", 1),
        ("accepted", 2),
    ];
    for (key, want) in expect {
        assert_eq!(s.get(key), Some(&want), "{key} in {s:?}");
    }
}

/// A client that pipelines more than the reply backlog holds, then half-closes, still gets
/// every reply: what it sent before its end of stream is answered.
fn pipelined_past_the_reply_backlog_then_half_close_gets_every_reply() {
    const NOOPS: usize = 2000;
    let server = Server::start(&["--sink"]);
    let mut c = server.connect();
    assert!(c.reply().starts_with("220 "));
    let mut batch = "NOOP\r\n".repeat(NOOPS);
    batch.push_str("QUIT\r\n");
    c.send(batch.as_bytes());
    c.half_close();
    let rest = String::from_utf8(c.read_to_end()).unwrap();
    assert_eq!(rest.matches("250 2.0.0 Ok\r\n").count(), NOOPS);
    assert!(
        rest.ends_with("221 2.0.0 Bye\r\n"),
        "{}",
        &rest[rest.len().saturating_sub(80)..]
    );
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(stopped.stats["sessions_ended.quit"], 1);
}

// Every test above that starts a server runs once per backend from the same body (as monoio's
// `test_all`), `epoll::NAME` and `uring::NAME`; those that store messages once per backend and
// spool format, `epoll::files::NAME`, `epoll::log::NAME`, `uring::files::NAME` and
// `uring::log::NAME`.

on_backends_and_formats!(
    formats: [
        transcripts_over_tcp_all_at_once,
        transcripts_over_tcp_byte_at_a_time,
        lettre_message_sits_byte_exact_in_the_spool,
        five_hundred_concurrent_sessions,
        a_large_message_streams_to_the_spool_byte_exact,
        half_sent_message_then_disconnect_leaves_no_entry,
        full_disk_is_answered_452_and_leaves_no_entry,
        sigterm_mid_transaction_completes_it,
        fin_right_after_the_final_dot_commits_the_message,
        the_stats_file_counts_replies_classes_and_close_reasons,
        a_second_server_on_the_same_spool_refuses_to_start,
        a_second_server_on_the_same_address_refuses_to_start,
        sighup_and_sigusr1_leave_the_server_serving,
        a_small_open_files_limit_lowers_max_connections_and_commits_still_fit,
    ],
    backends: [
        pipelined_batch_is_answered_in_one_write,
        client_that_never_reads_is_bounded_and_others_are_served,
        a_flooding_client_does_not_starve_another_on_its_worker,
        filesystem_sync_commits_a_pipelined_pair,
        over_max_connections_gets_421,
        out_of_descriptors_max_connections_is_lowered_and_the_rest_get_421,
        idle_session_times_out_with_421,
        pipelined_past_the_reply_backlog_then_half_close_gets_every_reply,
    ],
);

fn a_second_server_on_the_same_spool_refuses_to_start() {
    let first = Server::start(&[]);
    // A message in flight: its body sits in the spool's tmp/, or its segment in log/ holds
    // nothing committed yet; a second server's recovery would delete either.
    let mut c = first.connect();
    assert!(c.reply().starts_with("220 "));
    start_data(&mut c, "c");
    c.send(b"Subject: in flight\r\n\r\nfirst half\r\n");
    let deadline = Instant::now() + LIMIT;
    while !in_flight(&first.spool) {
        assert!(Instant::now() < deadline, "the message never reached the spool");
        std::thread::sleep(Duration::from_millis(10));
    }
    let spool = first.spool.to_str().unwrap();
    let (status, log) = serverkit::start_refused(&["--listen", "127.0.0.1:0", "--spool", spool]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "spool {spool}: in use by another ringmx (pid {})",
            first.pid()
        )),
        "{log}"
    );
    c.send(b"second half\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued as "));
    assert!(send_message(&mut first.connect_greeted(), 2).starts_with("250 2.0.0 Ok: queued as "));
    let stopped = first.stop();
    stopped.assert_clean();
    let stored = spooled(&stopped.spool);
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[0].content(),
        b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n"
    );
}

fn a_second_server_on_the_same_address_refuses_to_start() {
    let first = Server::start(&[]);
    let addr = first.addr.to_string();
    let other = TempDir::new("second");
    let spool = other.0.join("spool");
    for args in [
        &["--listen", &addr, "--spool", spool.to_str().unwrap()][..],
        &["--listen", &addr, "--sink"][..],
    ] {
        let (status, log) = serverkit::start_refused(args);
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(
            log.contains(&format!(
                "cannot listen on {addr}: already in use by another process"
            )),
            "{log}"
        );
    }
    // Every connection still reaches the first server.
    for i in 0..10 {
        assert!(send_message(&mut first.connect_greeted(), i).starts_with("250 2.0.0 Ok: queued as "));
    }
    let stopped = first.stop();
    stopped.assert_clean();
    assert_eq!(spooled(&stopped.spool).len(), 10);
    assert!(spooled(&spool).is_empty());
}

fn sighup_and_sigusr1_leave_the_server_serving() {
    let server = Server::start(&[]);
    let mut busy = server.connect();
    assert!(busy.reply().starts_with("220 "));
    start_data(&mut busy, "c");
    busy.send(b"Subject: signals\r\n\r\nfirst half\r\n");
    // SIGUSR1 first: were it not taken by sigwait, its default action would end the server as
    // it arrives, before SIGHUP's line could be logged.
    server.signal(libc::SIGUSR1);
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reloaded");
    busy.send(b"second half\r\n.\r\n");
    assert!(busy.reply().starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(busy.cmd("NOOP"), "250 2.0.0 Ok\r\n");
    assert!(send_message(&mut server.connect_greeted(), 2).starts_with("250 2.0.0 Ok: queued as "));
    // SIGHUP did not count as a first signal: this SIGTERM is a graceful stop, not the second.
    let stopped = server.stop();
    stopped.assert_clean();
    assert!(!stopped.log.contains("second signal"), "{}", stopped.log);
    let stored = spooled(&stopped.spool);
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[0].content(),
        b"Subject: signals\r\n\r\nfirst half\r\nsecond half\r\n"
    );
}

fn a_small_open_files_limit_lowers_max_connections_and_commits_still_fit() {
    // With `files` a committing connection holds its socket and its message's two files; with
    // `log` only its socket, so the same limit fits more of them.
    let mut fitted = Vec::new();
    for format in ["files", "log"] {
        let server = Server::start_with(Options {
            args: &["--max-connections", "10000", "--spool-format", format],
            open_files_limit: Some(96),
            ..Options::default()
        });
        let max = lowered_max_connections(&server);
        assert!((5..96).contains(&max), "{format}: {max}");
        fitted.push(max);
        // That many sessions, all in DATA, all ending at once: every one holds what its format
        // needs during the same commit, and every one gets its 250.
        let mut clients: Vec<Client> = (0..max).map(|_| server.connect_greeted()).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            start_data(c, &format!("r{i}"));
            c.send(format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes());
        }
        for c in &mut clients {
            c.send(b".\r\n");
        }
        for c in &mut clients {
            let reply = c.reply();
            assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{format}: {reply}");
        }
        let mut over = server.connect();
        assert_eq!(
            over.read_to_end(),
            b"421 4.3.2 Too many connections, try again later\r\n"
        );
        drop(clients);
        let stopped = server.stop();
        stopped.assert_clean();
        assert_eq!(spooled(&stopped.spool).len(), max, "{format}");
    }
    assert!(fitted[1] > 2 * fitted[0], "files {} log {}", fitted[0], fitted[1]);
}
