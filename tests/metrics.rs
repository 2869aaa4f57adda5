//! The real `ringmx serve` with `--metrics-listen`: the counters a scrape shows equal what a bounded client mix did, a scrape during load parses, a dead destination and the queue's gauges show while the queue runner is busy, and hostile HTTP clients get their status or the timeout while a real scrape and SMTP keep working.

#[macro_use]
mod serverkit;
mod nexthop;

use nexthop::{NextHop, Script};
use serverkit::{Client, Server};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

on_backends_and_formats!(
    formats: [
        counters_match_the_clients_mix,
        delivery_counters_follow_the_next_hop,
        a_dead_destination_shows_and_the_queue_gauge_follows_the_drain,
    ],
    backends: [hostile_clients_stay_bounded],
);

/// The metrics endpoint's address, from its start line (logged before `ringmx started`).
fn metrics_addr(server: &Server) -> SocketAddr {
    let log = server.log();
    let rest = log
        .split("metrics listening addr=")
        .nth(1)
        .unwrap_or_else(|| panic!("no metrics start line: {log}"));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// One HTTP/1.1 exchange: the raw request, then everything until the server closes.
/// Returns the status code, the head and the body.
fn http(addr: SocketAddr, request: &[u8], timeout: Duration) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, timeout).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s.write_all(request).unwrap();
    response(&mut s)
}

fn response(s: &mut TcpStream) -> (u16, String, String) {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8(all).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    (status, head.to_string(), body.to_string())
}

fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let (status, head, body) = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("the page parses as the text format")
}

/// The value of the sample `name` whose labels include every pair of `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|m| m.metric == name && labels.iter().all(|(k, v)| m.labels.get(k) == Some(*v)))
        .map(|m| match &m.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is {other:?}"),
        })
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    found[0]
}

/// The sessions of the mix, each run to its end.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// One message accepted.
    Valid,
    /// `HLEO`: 500 5.5.1, then the session goes on and quits.
    Typo,
    /// `RCPT` before `MAIL`: 503 5.5.1.
    BadSequence,
    /// An HTTP request: 554 5.5.0 and the close.
    Http,
    /// An SSH banner: 554 5.5.0 and the close.
    Ssh,
}

const MIX: [Kind; 5] = [Kind::Valid, Kind::Typo, Kind::BadSequence, Kind::Http, Kind::Ssh];

fn session(addr: SocketAddr, kind: Kind) {
    let mut c = Client::connect(addr);
    assert!(c.reply().starts_with("220 "));
    match kind {
        Kind::Valid => {
            assert!(c.cmd("EHLO c.example").starts_with("250"));
            assert!(c.cmd("MAIL FROM:<a@b.example>").starts_with("250"));
            assert!(c.cmd("RCPT TO:<c@d.example>").starts_with("250"));
            assert!(c.cmd("DATA").starts_with("354"));
            assert!(c.cmd("Subject: x\r\n\r\nbody\r\n.").starts_with("250 2.0.0"));
            assert!(c.cmd("QUIT").starts_with("221"));
        }
        Kind::Typo => {
            assert!(c.cmd("HLEO c.example").starts_with("500 5.5.1"));
            assert!(c.cmd("EHLO c.example").starts_with("250"));
            assert!(c.cmd("QUIT").starts_with("221"));
        }
        Kind::BadSequence => {
            assert!(c.cmd("EHLO c.example").starts_with("250"));
            assert!(c.cmd("RCPT TO:<c@d.example>").starts_with("503 5.5.1"));
            assert!(c.cmd("QUIT").starts_with("221"));
        }
        Kind::Http | Kind::Ssh => {
            let line = if matches!(kind, Kind::Http) {
                "GET / HTTP/1.1"
            } else {
                "SSH-2.0-OpenSSH_9.6"
            };
            assert!(c.cmd(line).starts_with("554 5.5.0"));
            c.read_to_end();
        }
    }
}

/// Runs `rounds` of the mix on `threads` threads; returns how many sessions of each kind ran.
fn load(addr: SocketAddr, threads: usize, rounds: usize) -> [u64; 5] {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    for kind in MIX {
                        session(addr, kind);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a client session failed");
    }
    [(threads * rounds) as u64; 5]
}

/// Waits (bounded) until the server has logged the end of `n` sessions: a session's close
/// is counted when the worker sees its socket closed, a moment after the client's last reply.
fn wait_for_sessions_ended(server: &Server, n: usize) {
    let deadline = Instant::now() + serverkit::LIMIT;
    while server.log().matches("session ended").count() < n {
        assert!(
            Instant::now() < deadline,
            "not {n} sessions ended: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The spool format named on the start line (`log` or `files`).
fn spool_format(server: &Server) -> &'static str {
    let log = server.log();
    let started = log.lines().find(|l| l.contains("ringmx started")).unwrap();
    if started.contains(" (files") {
        "files"
    } else {
        "log"
    }
}

fn counters_match_the_clients_mix() {
    let server = Server::start(&["--workers", "2", "--metrics-listen", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    // A scrape while the load runs: answered, parses, and shows no more than the load did.
    let addr = server.addr;
    let during = std::thread::spawn(move || load(addr, 4, 10));
    std::thread::sleep(Duration::from_millis(100));
    let mid = scrape(metrics);
    let counts = during.join().unwrap();
    let [valid, typo, badseq, web, ssh] = counts.map(|n| n as f64);
    assert!(value(&mid, "ringmx_messages_accepted_total", &[]) <= valid);
    let sessions = valid + typo + badseq + web + ssh;
    wait_for_sessions_ended(&server, sessions as usize);

    let s = scrape(metrics);
    assert_eq!(value(&s, "ringmx_messages_accepted_total", &[]), valid);
    assert_eq!(
        value(
            &s,
            "ringmx_replies_total",
            &[("code", "500"), ("enhanced", "5.5.1")]
        ),
        typo
    );
    assert_eq!(
        value(
            &s,
            "ringmx_replies_total",
            &[("code", "503"), ("enhanced", "5.5.1")]
        ),
        badseq
    );
    assert_eq!(
        value(
            &s,
            "ringmx_replies_total",
            &[("code", "554"), ("enhanced", "5.5.0")]
        ),
        web + ssh
    );
    assert_eq!(
        value(&s, "ringmx_replies_total", &[("code", "354"), ("enhanced", "")]),
        valid
    );
    assert_eq!(
        value(&s, "ringmx_non_smtp_sessions_total", &[("class", "http")]),
        web
    );
    assert_eq!(
        value(&s, "ringmx_non_smtp_sessions_total", &[("class", "ssh")]),
        ssh
    );
    let sessions = valid + typo + badseq + web + ssh;
    assert_eq!(
        value(&s, "ringmx_connections_total", &[("result", "accepted")]),
        sessions
    );
    assert_eq!(
        value(&s, "ringmx_sessions_closed_total", &[("reason", "quit")]),
        valid + typo + badseq
    );
    assert_eq!(
        value(&s, "ringmx_sessions_closed_total", &[("reason", "non_smtp")]),
        web + ssh
    );
    assert_eq!(value(&s, "ringmx_command_errors_total", &[]), typo + badseq);
    assert_eq!(value(&s, "ringmx_sessions_active", &[]), 0.0);
    assert!(value(&s, "ringmx_received_octets_total", &[]) > 0.0);
    assert_eq!(value(&s, "ringmx_spool_commit_failures_total", &[]), 0.0);
    let commits = s
        .samples
        .iter()
        .find(|m| m.metric == "ringmx_spool_commit_seconds")
        .expect("the commit latency histogram");
    let prometheus_parse::Value::Histogram(buckets) = &commits.value else {
        panic!("{:?}", commits.value)
    };
    let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
    assert_eq!(inf.count, valid, "every accepted message was measured once");
    assert_eq!(
        value(
            &s,
            "ringmx_build_info",
            &[("spool_format", spool_format(&server))]
        ),
        1.0
    );
    // No delivery configured: no queue or delivery families.
    assert!(!s.samples.iter().any(|m| m.metric.starts_with("ringmx_queue_")));
    assert!(value(&s, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(value(&s, "process_open_fds", &[]) > 0.0);
    // The other pages of the endpoint.
    let t = Duration::from_secs(10);
    assert_eq!(http(metrics, b"GET / HTTP/1.1\r\n\r\n", t).0, 200);
    assert_eq!(http(metrics, b"GET /nothing HTTP/1.1\r\n\r\n", t).0, 404);
    assert_eq!(http(metrics, b"\x16\x03\x01 garbage\r\n\r\n", t).0, 400);
    server.stop().assert_clean();
}

/// Threads of the server process now.
fn threads(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

fn hostile_clients_stay_bounded() {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    // One SMTP session first: every thread of the server is up once it has been served.
    let mut c = server.connect_greeted();
    assert!(c.cmd("QUIT").starts_with("221"));
    let before = threads(&server);
    let started = Instant::now();
    let connect = || {
        let s = TcpStream::connect(metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    // Enough silent connections and a slowloris head to hold every handler...
    let mut idle: Vec<TcpStream> = (0..ringmx::metrics::http::HANDLERS - 1)
        .map(|_| connect())
        .collect();
    let mut slow = connect();
    let slowloris = std::thread::spawn(move || {
        let _ = slow.write_all(b"GET /metr");
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(500));
            if slow.write_all(b"i").is_err() {
                break;
            }
        }
        response(&mut slow).0
    });
    std::thread::sleep(Duration::from_millis(200));
    // ...then more waiting behind them, in this order: a huge garbage head, a POST, a
    // scrape, more silence. The first three are answered as soon as handlers are free.
    let mut huge = connect();
    let garbage = std::thread::spawn({
        let mut huge = huge.try_clone().unwrap();
        move || {
            let _ = huge.write_all(&vec![b'A'; 1 << 20]);
        }
    });
    let post = std::thread::spawn(move || {
        http(
            metrics,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            Duration::from_secs(20),
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    let scraper = std::thread::spawn(move || {
        let at = Instant::now();
        let s = scrape(metrics);
        (at.elapsed(), value(&s, "ringmx_sessions_active", &[]))
    });
    std::thread::sleep(Duration::from_millis(100));
    idle.extend((0..ringmx::metrics::http::HANDLERS).map(|_| connect()));
    // Meanwhile SMTP is served as ever (and this session stays open for the scrape to see).
    let mut c = server.connect_greeted();
    assert!(c.cmd("EHLO c.example").starts_with("250"));
    assert_eq!(threads(&server), before, "no thread per connection");

    let (waited, active) = scraper.join().unwrap();
    let deadline = ringmx::metrics::http::HEAD_DEADLINE;
    // Behind the first handlers' deadline, not behind the silent connections after it.
    assert!(waited < deadline * 2, "a scrape waited {waited:?}");
    assert_eq!(active, 1.0, "the SMTP client still connected");
    let (status, head, _) = post.join().unwrap();
    assert_eq!(status, 405, "{head}");
    assert!(head.contains("Allow: GET"), "{head}");
    garbage.join().unwrap();
    assert_eq!(response(&mut huge).0, 431);
    assert_eq!(slowloris.join().unwrap(), 408);
    for mut s in idle {
        assert_eq!(response(&mut s).0, 408);
    }
    assert!(started.elapsed() < deadline * 4, "{:?}", started.elapsed());
    assert_eq!(threads(&server), before);
    assert!(c.cmd("QUIT").starts_with("221"));
    server.stop().assert_clean();
}

/// An address that cannot be bound fails the start, saying which one and why.
#[test]
fn a_taken_metrics_address_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = serverkit::TempDir::new("metrics-bind");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringmx"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--metrics-listen",
            &addr,
        ])
        .arg("--spool")
        .arg(dir.0.join("spool"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + serverkit::LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started on a taken metrics address");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains(&format!("cannot listen for metrics on {addr}")),
        "{err}"
    );
}

fn delivery_counters_follow_the_next_hop() {
    let hop = NextHop::start(Script::default());
    let relay = format!("smtp:{}", hop.addr);
    let server = Server::start(&["--relay-to", &relay, "--metrics-listen", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    const MESSAGES: usize = 3;
    for _ in 0..MESSAGES {
        let mut c = server.connect_greeted();
        assert!(c.cmd("EHLO c.example").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<a@b.example>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<c@d.example>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<e@d.example>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        assert!(c.cmd("Subject: x\r\n\r\nbody\r\n.").starts_with("250 2.0.0"));
        assert!(c.cmd("QUIT").starts_with("221"));
    }
    assert_eq!(hop.wait_for(MESSAGES, serverkit::LIMIT).len(), MESSAGES);
    // The next hop has them; the runner marks them done when their outcomes arrive.
    let deadline = Instant::now() + serverkit::LIMIT;
    let s = loop {
        let s = scrape(metrics);
        if value(&s, "ringmx_queue_messages", &[]) == 0.0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the queue did not empty: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let delivered: Vec<_> = s
        .samples
        .iter()
        .filter(|m| {
            m.metric == "ringmx_delivery_recipients_total" && m.labels.get("result") == Some("delivered")
        })
        .collect();
    assert_eq!(delivered.len(), 1, "one destination");
    let dest = delivered[0].labels.get("destination").unwrap().to_string();
    let recipients = (2 * MESSAGES) as f64;
    let d = [("destination", dest.as_str())];
    assert_eq!(
        value(
            &s,
            "ringmx_delivery_recipients_total",
            &[d[0], ("result", "delivered")]
        ),
        recipients
    );
    assert_eq!(
        value(
            &s,
            "ringmx_delivery_recipients_total",
            &[d[0], ("result", "failed")]
        ),
        0.0
    );
    assert!(value(&s, "ringmx_delivery_connections_total", &d) >= 1.0);
    assert_eq!(value(&s, "ringmx_delivery_connection_failures_total", &d), 0.0);
    assert_eq!(value(&s, "ringmx_queue_oldest_age_seconds", &[]), 0.0);
    let latency = s
        .samples
        .iter()
        .find(|m| m.metric == "ringmx_delivery_seconds")
        .expect("the delivery latency histogram");
    let prometheus_parse::Value::Histogram(buckets) = &latency.value else {
        panic!("{:?}", latency.value)
    };
    assert_eq!(latency.labels.get("destination"), Some(dest.as_str()));
    let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
    assert_eq!(inf.count, recipients, "one measurement per delivered recipient");
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count), "cumulative");
    server.stop().assert_clean();
}

/// Polls scrapes (bounded) until `done` holds for one; returns it.
fn scrape_until(
    server: &Server,
    metrics: SocketAddr,
    what: &str,
    done: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> prometheus_parse::Scrape {
    let deadline = Instant::now() + serverkit::LIMIT;
    loop {
        let asked = Instant::now();
        let s = scrape(metrics);
        // The queue's gauges are read from the runner's atomics: a scrape never waits on a
        // busy runner longer than its bounded wait for the other counters.
        assert!(
            asked.elapsed() < ringmx::metrics::DELIVERY_WAIT + ringmx::metrics::SNAPSHOT_WAIT,
            "a scrape took {:?}",
            asked.elapsed()
        );
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn a_dead_destination_shows_and_the_queue_gauge_follows_the_drain() {
    const N: usize = 200;
    // Nothing listens on the port until the next hop starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = serverkit::TempDir::new("metrics-dead");
    let cfg = dir.0.join("ringmx.toml");
    std::fs::write(
        &cfg,
        "min_backoff_secs = 1\nmax_backoff_secs = 1\ndestination_concurrency = 2\n",
    )
    .unwrap();
    let relay = format!("smtp:{port}");
    let server = Server::start(&[
        "--relay-to",
        &relay,
        "--config",
        cfg.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let metrics = metrics_addr(&server);
    let started = Instant::now();
    let mut c = server.connect_greeted();
    assert!(c.cmd("EHLO c.example").starts_with("250"));
    for _ in 0..N {
        assert!(c.cmd("MAIL FROM:<a@b.example>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<c@d.example>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        assert!(c.cmd("Subject: x\r\n\r\nbody\r\n.").starts_with("250 2.0.0"));
    }
    assert!(c.cmd("QUIT").starts_with("221"));
    let d = [("destination", relay.as_str())];
    let dead = [d[0], ("state", "dead")];
    let s = scrape_until(&server, metrics, "all queued, the destination dead", |s| {
        value(s, "ringmx_queue_messages", &[]) == N as f64
            && s.samples.iter().any(|m| {
                m.metric == "ringmx_delivery_destination_state"
                    && m.labels.get("state") == Some("dead")
                    && m.labels.get("destination") == Some(relay.as_str())
            })
            && value(s, "ringmx_delivery_destination_state", &dead) == 1.0
    });
    assert!(value(&s, "ringmx_delivery_dead_deferrals_total", &d) >= 1.0);
    // The first cohort (the pool's 2 threads), then one probe per second (the dead timer).
    let bound = 2 + started.elapsed().as_secs() + 1;
    let failures = value(&s, "ringmx_delivery_connection_failures_total", &d);
    assert!(
        failures >= 1.0 && failures <= bound as f64,
        "{failures} connection failures for {N} messages, at most {bound} expected"
    );
    let hop = NextHop::start_on(std::net::TcpListener::bind(port).unwrap(), Script::default());
    let alive = [d[0], ("state", "alive")];
    let s = scrape_until(
        &server,
        metrics,
        "the queue drained, the destination alive",
        |s| {
            value(s, "ringmx_queue_messages", &[]) == 0.0
                && value(s, "ringmx_delivery_destination_state", &alive) == 1.0
        },
    );
    assert_eq!(hop.got().len(), N);
    assert_eq!(value(&s, "ringmx_queue_oldest_age_seconds", &[]), 0.0);
    assert_eq!(value(&s, "ringmx_delivery_destination_state", &dead), 0.0);
    server.stop().assert_clean();
}
