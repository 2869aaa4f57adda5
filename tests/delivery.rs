//! Delivery end to end: the real `ringmx serve` relaying to a scripted next hop over SMTP and LMTP, on both spool formats: byte-exact arrival, dot-stuffing, per-recipient replies, retries with backoff, a dead destination deferred without connecting, notifications, the queue tool, a restart keeping the schedule, and `kill -9` during delivery.

#[macro_use]
mod serverkit;
mod nexthop;

use nexthop::{NextHop, Script};
use serverkit::{Client, Server, TempDir};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

on_backends_and_formats!(
    formats: [
        relays_byte_exact_with_bdat_and_with_dot_stuffed_data,
        a_452_recipient_is_retried_and_a_250_one_is_not,
        a_550_recipient_gets_one_notification_and_a_null_sender_none,
        each_recipient_outcome_is_one_delivery_line,
        lmtp_replies_per_recipient_after_the_data,
        a_close_mid_data_defers_and_the_retry_delivers,
        down_at_start_then_up,
        a_dead_destination_costs_one_probe_per_timer_and_revives,
        the_queue_tool_holds_lists_flushes_releases_and_deletes,
        a_restart_keeps_the_schedule,
        kill_during_delivery_loses_nothing,
        done_marks_a_full_disk_refused_are_written_once_it_has_room,
        a_queued_message_unreadable_for_want_of_descriptors_is_delivered_after,
    ],
    backends: [
        a_reload_sends_new_deliveries_by_the_new_route,
        reloads_under_load_keep_the_next_hop_within_destination_concurrency
    ],
);

const WAIT: Duration = Duration::from_secs(30);

/// A config file with short backoffs for the tests, and `extra`.
fn config(dir: &TempDir, extra: &str) -> String {
    let path = dir.0.join("ringmx.toml");
    std::fs::write(
        &path,
        format!("min_backoff = 1\nmax_backoff = 2\nrelay_idle_secs = 1\n{extra}"),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn start(relay: &str, config: &str) -> Server {
    Server::start(&["--hostname", "mx.test", "--relay-to", relay, "--config", config])
}

/// Sends one message; returns its queue id.
fn send(server: &Server, from: &str, rcpts: &[&str], body: &str) -> String {
    let mut c = server.connect_greeted();
    send_on(&mut c, from, rcpts, body)
}

fn send_on(c: &mut Client, from: &str, rcpts: &[&str], body: &str) -> String {
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    for r in rcpts {
        assert!(c.cmd(&format!("RCPT TO:<{r}>")).starts_with("250"));
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(body.as_bytes());
    let reply = c.cmd(".");
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    reply.trim_end().rsplit(' ').next().unwrap().to_string()
}

fn queue(spool: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmx"))
        .arg("queue")
        .args(args)
        .arg("--spool")
        .arg(spool)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Waits (bounded) until `ringmx queue list` of a running server is empty.
fn wait_for_empty_queue(server: &Server) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, text) = queue(&server.spool, &["list"]);
        assert!(ok, "{text}");
        if text.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue not empty: {text}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The message as stored and relayed: the `Received:` header ringmx adds, then `body`.
fn without_trace(data: &[u8]) -> &[u8] {
    assert!(
        data.starts_with(b"Received: from client.test"),
        "{}",
        String::from_utf8_lossy(data)
    );
    // The header is folded: its last line is the first that starts a new field.
    let mut at = 0;
    loop {
        let end = at + data[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
        if at > 0 && !matches!(data[at], b' ' | b'\t') {
            return &data[at..];
        }
        at = end;
    }
}

const BODY: &str = "Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nmiddle\r\nlast\r\n";

fn relays_byte_exact_with_bdat_and_with_dot_stuffed_data() {
    for caps in [
        vec!["PIPELINING", "8BITMIME", "CHUNKING"],
        vec!["PIPELINING", "8BITMIME"],
        vec![],
    ] {
        let bdat = caps.contains(&"CHUNKING");
        let hop = NextHop::start(Script {
            caps,
            ..Script::default()
        });
        let dir = TempDir::new("relay");
        let server = start(&format!("smtp:{}", hop.addr), &config(&dir, ""));
        // The client dot-stuffs; what is stored, and what arrives, is unstuffed.
        let stuffed = BODY.replace("\r\n.", "\r\n..");
        send(&server, "a@client.test", &["b@x.test", "c@x.test"], &stuffed);
        let got = hop.wait_for(1, WAIT);
        assert_eq!(got.len(), 1, "{}", server.log());
        assert_eq!(got[0].bdat, bdat);
        assert_eq!(got[0].from, "a@client.test");
        assert_eq!(got[0].rcpts, ["b@x.test", "c@x.test"]);
        assert_eq!(String::from_utf8_lossy(without_trace(&got[0].data)), BODY);
        wait_for_empty_queue(&server);
        let stopped = server.stop();
        stopped.assert_clean();
        assert_eq!(stopped.stats["delivery.delivered"], 2);
        assert_eq!(stopped.stats["delivery.completed"], 1);
    }
}

fn a_452_recipient_is_retried_and_a_250_one_is_not() {
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = tries.clone();
    let hop = NextHop::start(Script {
        rcpt: Some(Box::new(move |addr| {
            if addr.starts_with("full") && t.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                "452 4.2.2 mailbox full".into()
            } else {
                "250 2.1.5 Ok".into()
            }
        })),
        ..Script::default()
    });
    let dir = TempDir::new("452");
    let server = start(&format!("smtp:{}", hop.addr), &config(&dir, ""));
    send(
        &server,
        "a@client.test",
        &["ok@x.test", "full@x.test"],
        "Subject: x\r\n\r\nhi\r\n",
    );
    let got = hop.wait_for(2, WAIT);
    assert_eq!(got.len(), 2, "{}", server.log());
    assert_eq!(got[0].rcpts, ["ok@x.test"]);
    assert_eq!(got[1].rcpts, ["full@x.test"]);
    wait_for_empty_queue(&server);
    let stopped = server.stop();
    assert_eq!(stopped.stats["delivery.deferred"], 1);
    assert_eq!(stopped.stats["delivery.delivered"], 2);
    assert_eq!(hop.got().len(), 2);
}

fn a_550_recipient_gets_one_notification_and_a_null_sender_none() {
    let hop = NextHop::start(Script {
        rcpt: Some(Box::new(|addr| {
            if addr.starts_with("nobody") {
                "550 5.1.1 <nobody@x.test>: no such user".into()
            } else {
                "250 2.1.5 Ok".into()
            }
        })),
        ..Script::default()
    });
    let dir = TempDir::new("550");
    let server = start(&format!("smtp:{}", hop.addr), &config(&dir, ""));
    send(
        &server,
        "sender@client.test",
        &["ok@x.test", "nobody@x.test"],
        "Subject: s1\r\n\r\nhi\r\n",
    );
    send(
        &server,
        "",
        &["nobody@x.test"],
        "Subject: from null\r\n\r\nhi\r\n",
    );
    // The first message to ok@, then the notification to its sender; none for the second.
    let got = hop.wait_for(2, WAIT);
    wait_for_empty_queue(&server);
    let got_all = hop.got();
    assert_eq!(got_all.len(), 2, "{got:?}\n{}", server.log());
    let dsn = &got_all[1];
    assert_eq!(dsn.from, "");
    assert_eq!(dsn.rcpts, ["sender@client.test"]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("multipart/report; report-type=delivery-status"),
        "{text}"
    );
    assert!(
        text.contains("Final-Recipient: rfc822; nobody@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 <nobody@x.test>: no such user"),
        "{text}"
    );
    assert!(
        text.contains("Subject: s1\r\n"),
        "the original header is attached: {text}"
    );
    let stopped = server.stop();
    assert_eq!(stopped.stats["delivery.dsn_sent"], 1);
    assert_eq!(stopped.stats["delivery.bounced"], 2);
}

/// One line per recipient outcome, with the queue id, the recipient, the next hop, the
/// attempt and the reply (for one sent, the reply to the data): a `250` is `status=sent`, a
/// `452` `status=deferred` (then `sent` on its retry), a `550` `status=bounced`.
fn each_recipient_outcome_is_one_delivery_line() {
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = tries.clone();
    let hop = NextHop::start(Script {
        rcpt: Some(Box::new(move |addr| {
            if addr.starts_with("nobody") {
                "550 5.1.1 no such user".into()
            } else if addr.starts_with("full") && t.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                "452 4.2.2 mailbox full".into()
            } else {
                "250 2.1.5 Ok".into()
            }
        })),
        ..Script::default()
    });
    let dir = TempDir::new("delivery-lines");
    let server = start(&format!("smtp:{}", hop.addr), &config(&dir, ""));
    let id = send(
        &server,
        "",
        &["ok@x.test", "full@x.test", "nobody@x.test"],
        "Subject: x\r\n\r\nhi\r\n",
    );
    hop.wait_for(2, WAIT);
    wait_for_empty_queue(&server);
    let stopped = server.stop();
    let relay = format!("relay=smtp:{} ", hop.addr);
    let line = |rcpt: &str, status: &str| {
        let to = format!("to=<{rcpt}> ");
        stopped
            .log
            .lines()
            .find(|l| {
                l.contains(&format!(" delivery id={id} "))
                    && l.contains(&to)
                    && l.contains(&format!(" status={status} "))
            })
            .unwrap_or_else(|| panic!("no {status} line for {rcpt}:\n{}", stopped.log))
    };
    for (rcpt, status, attempts, reply) in [
        ("ok@x.test", "sent", 1, "250 2.0.0 Ok: queued"),
        ("full@x.test", "deferred", 1, "452 4.2.2 mailbox full"),
        ("full@x.test", "sent", 2, "250 2.0.0 Ok: queued"),
        ("nobody@x.test", "bounced", 1, "550 5.1.1 no such user"),
    ] {
        let l = line(rcpt, status);
        for field in [
            relay.clone(),
            " delay=".into(),
            format!(" attempts={attempts} "),
            format!("reply=\"{reply}\""),
        ] {
            assert!(l.contains(&field), "no {field:?} in {l}");
        }
    }
    let no_dsn = format!("no delivery status notification: null sender id={id} failed=1");
    assert!(stopped.log.contains(&no_dsn), "{}", stopped.log);
}

fn lmtp_replies_per_recipient_after_the_data() {
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = tries.clone();
    let hop = NextHop::start(Script {
        lmtp: true,
        caps: vec!["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"],
        lmtp_final: Some(Box::new(move |addr| match addr {
            "over@x.test" if t.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 => {
                "452 4.2.2 over quota".into()
            }
            "gone@x.test" => "550 5.1.1 gone".into(),
            _ => "250 2.0.0 saved".into(),
        })),
        ..Script::default()
    });
    let dir = TempDir::new("lmtp");
    let server = start(&format!("lmtp:{}", hop.addr), &config(&dir, ""));
    send(
        &server,
        "",
        &["a@x.test", "over@x.test", "gone@x.test"],
        "Subject: l\r\n\r\nhi\r\n",
    );
    let got = hop.wait_for(2, WAIT);
    wait_for_empty_queue(&server);
    assert_eq!(got.len(), 2, "{}", server.log());
    assert_eq!(got[0].rcpts, ["a@x.test"]);
    assert_eq!(got[1].rcpts, ["over@x.test"]);
    let stopped = server.stop();
    assert_eq!(stopped.stats["delivery.delivered"], 2);
    assert_eq!(stopped.stats["delivery.bounced"], 1);
    // From <>: no notification.
    assert_eq!(stopped.stats["delivery.dsn_sent"], 0);
}

fn a_close_mid_data_defers_and_the_retry_delivers() {
    let hop = NextHop::start(Script {
        caps: vec!["PIPELINING"],
        close_mid_data: 1,
        ..Script::default()
    });
    let dir = TempDir::new("middata");
    let server = start(&format!("smtp:{}", hop.addr), &config(&dir, ""));
    let body = format!("Subject: long\r\n\r\n{}", "line of text\r\n".repeat(100));
    send(&server, "a@client.test", &["b@x.test"], &body);
    let got = hop.wait_for(1, WAIT);
    wait_for_empty_queue(&server);
    assert_eq!(got.len(), 1, "{}", server.log());
    assert_eq!(String::from_utf8_lossy(without_trace(&got[0].data)), body);
    let stopped = server.stop();
    assert_eq!(stopped.stats["delivery.deferred"], 1);
    assert!(hop.connections.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

fn down_at_start_then_up() {
    // The port is reserved and then closed, so nothing listens until the next hop starts.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = TempDir::new("down");
    let server = start(&format!("smtp:{port}"), &config(&dir, ""));
    let id = send(
        &server,
        "a@client.test",
        &["b@x.test"],
        "Subject: d\r\n\r\nhi\r\n",
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, list) = queue(&server.spool, &["list"]);
        if list.contains("deferred") {
            assert!(list.starts_with(&id), "{list}");
            assert!(list.contains("4.4.1"), "{list}");
            break;
        }
        assert!(Instant::now() < deadline, "never deferred: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let hop = NextHop::start_on(TcpListener::bind(port).unwrap(), Script::default());
    assert_eq!(hop.wait_for(1, WAIT).len(), 1, "{}", server.log());
    wait_for_empty_queue(&server);
    let stopped = server.stop();
    assert!(stopped.stats["delivery.deferred"] >= 1);
    assert_eq!(stopped.stats["delivery.delivered"], 1);
}

/// The `ringmx queue list --json` lines of a running or stopped server.
fn listed(spool: &Path) -> Vec<serde_json::Value> {
    let (ok, json) = queue(spool, &["list", "--json"]);
    assert!(ok, "{json}");
    json.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `ringmx queue stats` of a running server: the destination's counters.
fn destination_stats(spool: &Path, dest: &str) -> serde_json::Value {
    let (ok, json) = queue(spool, &["stats"]);
    assert!(ok, "{json}");
    let stats: serde_json::Value = serde_json::from_str(&json).unwrap();
    stats["destinations"][dest].clone()
}

/// Every listed message has its one recipient deferred with the refused connection's error.
fn all_deferred_by_the_refusal(list: &[serde_json::Value], n: usize) -> bool {
    list.len() == n
        && list.iter().all(|m| {
            let r = &m["recipients"][0];
            r["state"] == "deferred"
                && r["reply"]
                    .as_str()
                    .is_some_and(|t| t.contains("4.4.1 connect to"))
        })
}

fn a_dead_destination_costs_one_probe_per_timer_and_revives() {
    const N: usize = 200;
    const DEAD_SECS: u64 = 2;
    const CONCURRENCY: u64 = 2;
    // Nothing listens on the port until the next hop starts: each connection is refused.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dest = format!("smtp:{port}");
    let dir = TempDir::new("dead");
    let spool = dir.0.join("spool");
    let cfg = dir.0.join("dead.toml");
    std::fs::write(
        &cfg,
        format!(
            "min_backoff_secs = {DEAD_SECS}\nmax_backoff_secs = {DEAD_SECS}\nrelay_idle_secs = 1\n\
             destination_dead_secs = {DEAD_SECS}\ndestination_concurrency = {CONCURRENCY}\n"
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let args = [
        "--hostname",
        "mx.test",
        "--relay-to",
        &dest,
        "--config",
        cfg,
        "--spool",
        spool.to_str().unwrap(),
    ];
    let server = Server::start(&args);
    let started = Instant::now();
    let mut c = server.connect_greeted();
    for i in 0..N {
        send_on(
            &mut c,
            "a@client.test",
            &["b@x.test"],
            &format!("Subject: n\r\nX-Seq: {i}\r\n\r\nhi\r\n"),
        );
    }
    drop(c);
    let deadline = Instant::now() + WAIT;
    loop {
        if all_deferred_by_the_refusal(&listed(&spool), N) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            listed(&spool),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let d = destination_stats(&spool, &dest);
    let elapsed = started.elapsed().as_secs();
    // The first cohort (one attempt per thread of the pool), then one probe per dead timer;
    // everything else is deferred without a connection.
    let bound = CONCURRENCY + elapsed / DEAD_SECS + 1;
    let failures = d["connection_failures"].as_u64().unwrap();
    let dead = d["dead_deferrals"].as_u64().unwrap();
    assert!(
        failures >= 1 && failures <= bound,
        "{failures} connection failures in {elapsed} s: {d}"
    );
    assert!(dead + failures >= N as u64, "{d}");
    eprintln!("dead destination: {N} messages deferred in {elapsed} s with {failures} connection attempts");
    // The state files keep the attempts across a stop: the stopped server's spool says so.
    server.stop().assert_clean();
    let offline = listed(&spool);
    assert!(all_deferred_by_the_refusal(&offline, N), "{offline:?}");
    assert!(
        offline.iter().all(|m| m["attempts"].as_u64().unwrap() >= 1),
        "{offline:?}"
    );
    // Back up: at the latest after the timer, the probe is answered and everything goes, once.
    let hop = NextHop::start_on(TcpListener::bind(port).unwrap(), Script::default());
    let server = Server::start(&args);
    let got = hop.wait_for(N, WAIT);
    assert_eq!(got.len(), N, "{}", server.log());
    wait_for_empty_queue(&server);
    let stopped = server.stop();
    stopped.assert_clean();
    let mut seqs: Vec<usize> = hop
        .got()
        .iter()
        .filter_map(|g| {
            let t = String::from_utf8_lossy(&g.data).into_owned();
            t.split("X-Seq: ").nth(1)?.split("\r\n").next()?.parse().ok()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..N).collect::<Vec<_>>(), "each message exactly once");
    assert_eq!(stopped.stats["delivery.delivered"], N as u64);
    assert_eq!(
        stopped.stats[&format!("delivery.destinations.{dest}.health.alive")],
        1
    );
}

fn the_queue_tool_holds_lists_flushes_releases_and_deletes() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = TempDir::new("tool");
    // Long backoffs: only a flush or a release brings a message back.
    let cfg = dir.0.join("long.toml");
    std::fs::write(&cfg, "min_backoff_secs = 3600\nmax_backoff_secs = 3600\n").unwrap();
    let server = start(&format!("smtp:{port}"), cfg.to_str().unwrap());
    let keep = send(
        &server,
        "a@client.test",
        &["b@x.test"],
        "Subject: keep\r\n\r\nhi\r\n",
    );
    let drop = send(
        &server,
        "a@client.test",
        &["c@x.test"],
        "Subject: drop\r\n\r\nhi\r\n",
    );
    let deadline = Instant::now() + WAIT;
    while queue(&server.spool, &["list"]).1.matches("deferred").count() < 2 {
        assert!(Instant::now() < deadline, "{}", queue(&server.spool, &["list"]).1);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, json) = queue(&server.spool, &["list", "--json"]);
    assert!(ok, "{json}");
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["recipients"][0]["state"], "deferred");
    assert!(first["next_attempt"].as_u64().unwrap() > 0);
    assert!(queue(&server.spool, &["hold", &keep]).0);
    let (_, list) = queue(&server.spool, &["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&keep) && l.contains("<b@x.test> held")),
        "{list}"
    );
    assert!(queue(&server.spool, &["delete", &drop]).0);
    let (ok, text) = queue(&server.spool, &["delete", "NOSUCHID"]);
    assert!(!ok, "{text}");
    let hop = NextHop::start_on(TcpListener::bind(port).unwrap(), Script::default());
    // A flush does not touch a held message.
    assert!(queue(&server.spool, &["flush"]).0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(hop.got().is_empty());
    assert!(queue(&server.spool, &["release", &keep]).0);
    let got = hop.wait_for(1, WAIT);
    assert_eq!(got.len(), 1, "{}", server.log());
    assert_eq!(got[0].rcpts, ["b@x.test"]);
    wait_for_empty_queue(&server);
    server.stop().assert_clean();
}

fn a_restart_keeps_the_schedule() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = TempDir::new("restart");
    let spool = dir.0.join("spool");
    let cfg = dir.0.join("long.toml");
    std::fs::write(&cfg, "min_backoff_secs = 3600\nmax_backoff_secs = 3600\n").unwrap();
    let spool_arg = spool.to_str().unwrap();
    let args = [
        "--hostname",
        "mx.test",
        "--relay-to",
        &format!("smtp:{port}"),
        "--config",
        cfg.to_str().unwrap(),
        "--spool",
        spool_arg,
    ];
    let server = Server::start(&args);
    let id = send(
        &server,
        "a@client.test",
        &["b@x.test"],
        "Subject: r\r\n\r\nhi\r\n",
    );
    let deadline = Instant::now() + WAIT;
    let before = loop {
        let (_, json) = queue(&spool, &["list", "--json"]);
        if json.contains("deferred") {
            break serde_json::from_str::<serde_json::Value>(json.lines().next().unwrap()).unwrap();
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    };
    server.stop().assert_clean();
    // Stopped: the tool reads the spool itself.
    let (ok, offline) = queue(&spool, &["list", "--json"]);
    assert!(ok, "{offline}");
    let off: serde_json::Value = serde_json::from_str(offline.lines().next().unwrap()).unwrap();
    assert_eq!(off["next_attempt"], before["next_attempt"]);
    let hop = NextHop::start_on(TcpListener::bind(port).unwrap(), Script::default());
    let server = Server::start(&args);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(hop.got().is_empty(), "retried before its time");
    let (_, json) = queue(&spool, &["list", "--json"]);
    let after: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(after["id"], id.as_str());
    assert_eq!(after["next_attempt"], before["next_attempt"]);
    assert_eq!(after["attempts"], 1);
    assert!(queue(&spool, &["flush", &id]).0);
    assert_eq!(hop.wait_for(1, WAIT).len(), 1, "{}", server.log());
    wait_for_empty_queue(&server);
    server.stop().assert_clean();
}

fn kill_during_delivery_loses_nothing() {
    let dir = TempDir::new("kill");
    let spool = dir.0.join("spool");
    let cfg = config(&dir, "");
    let hop = NextHop::start(Script::default());
    let relay = format!("smtp:{}", hop.addr);
    let args = [
        "--hostname",
        "mx.test",
        "--relay-to",
        &relay,
        "--config",
        &cfg,
        "--spool",
        spool.to_str().unwrap(),
    ];
    let server = Server::start(&args);
    let total = 200;
    let mut c = server.connect_greeted();
    for i in 0..total {
        send_on(
            &mut c,
            "a@client.test",
            &["b@x.test"],
            &format!("Subject: n\r\nX-Seq: {i}\r\n\r\nhi\r\n"),
        );
        if i == total / 2 {
            // SAFETY: kill(2) on the server's pid, a child of this process.
            unsafe { libc::kill(server.pid(), libc::SIGKILL) };
            break;
        }
    }
    drop(c);
    drop(server);
    let acknowledged = total / 2 + 1;
    let server = Server::start(&args);
    let deadline = Instant::now() + WAIT;
    let seqs = loop {
        let mut seqs: Vec<usize> = hop
            .got()
            .iter()
            .filter_map(|g| {
                let t = String::from_utf8_lossy(&g.data).into_owned();
                t.split("X-Seq: ").nth(1)?.split("\r\n").next()?.parse().ok()
            })
            .collect();
        seqs.sort_unstable();
        let mut distinct = seqs.clone();
        distinct.dedup();
        if distinct.len() >= acknowledged {
            break seqs;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {acknowledged} arrived\n{}",
            distinct.len(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    wait_for_empty_queue(&server);
    let mut distinct = seqs.clone();
    distinct.dedup();
    assert_eq!(distinct, (0..acknowledged).collect::<Vec<_>>());
    eprintln!(
        "kill -9 during delivery: {} duplicates of {acknowledged}",
        seqs.len() - distinct.len()
    );
    server.stop().assert_clean();
}

/// A next hop that holds its reply to every RCPT until the flag it returns is set.
fn held_next_hop() -> (NextHop, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let gate = std::sync::Arc::new(AtomicBool::new(false));
    let open = gate.clone();
    let hop = NextHop::start(Script {
        rcpt: Some(Box::new(move |_| {
            while !open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            "250 2.1.5 Ok".to_string()
        })),
        ..Script::default()
    });
    (hop, gate)
}

/// A tmpfs of its own, unmounted when dropped: the real `ENOSPC` of a full spool.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounted at `at`, or why not (no root, or a container without `CAP_SYS_ADMIN`).
    fn mount(at: std::path::PathBuf, size: &str) -> Result<Tmpfs, String> {
        if ringmx::privileges::current_uid() != 0 {
            return Err("not root".into());
        }
        std::fs::create_dir_all(&at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "ringmx-test"])
            .arg(&at)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(at))
    }

    /// Writes a file until the file system refuses it; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                    break;
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Recipients delivered while the spool's file system is full: their done marks cannot be
/// written, and are written once it has room again, so the messages leave the queue and a
/// restart does not deliver them a second time (soak problem 4: the marks were dropped, the
/// messages stayed queued for ever). Needs to mount a tmpfs (root): where it cannot, it says
/// so and asserts nothing, as the uring tests do where the kernel lacks io_uring.
fn done_marks_a_full_disk_refused_are_written_once_it_has_room() {
    // The next hop holds its reply to every RCPT until the disk is full: each message is
    // delivered at its first attempt, so no delivery state file is there to be removed, which
    // would give the marks the room back.
    let (hop, gate) = held_next_hop();
    let dir = TempDir::new("full");
    let fs = match Tmpfs::mount(dir.0.join("fs"), "4m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipped: cannot mount the tmpfs a full disk is made of ({why})");
            return;
        }
    };
    let spool = fs.0.join("spool");
    let cfg = config(&dir, "spool_segment_size = 262144\n");
    let relay = format!("smtp:{}", hop.addr);
    let args = [
        "--hostname",
        "mx.test",
        "--relay-to",
        &relay,
        "--config",
        &cfg,
        "--spool",
        spool.to_str().unwrap(),
    ];
    let server = Server::start(&args);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            send(
                &server,
                "a@client.test",
                // Two: the files format writes a done file only while one is left to do.
                &["b@x.test", "c@x.test"],
                &format!("Subject: full\r\nX-Seq: {i}\r\n\r\nhi\r\n"),
            )
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while hop.mails.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "never delivered\n{}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let filler = fs.fill();
    gate.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(hop.wait_for(ids.len(), WAIT).len(), ids.len(), "{}", server.log());
    server.wait_for_log("cannot mark recipients done; trying again");
    std::fs::remove_file(filler).unwrap();
    server.wait_for_log("recipients marked done after failed tries");
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(stopped.stats["delivery.delivered"], 2 * ids.len() as u64);
    assert!(
        stopped.stats["delivery.mark_failures"] >= 1,
        "{:?}",
        stopped.stats
    );
    assert_eq!(stopped.stats["delivery.marks_pending"], 0);
    // Read by the tool from the stopped spool, then started again on it: nothing is left to
    // deliver a second time.
    let (ok, list) = queue(&spool, &["list"]);
    assert!(ok && list.is_empty(), "{list}");
    let server = Server::start(&args);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(hop.got().len(), ids.len(), "delivered again after the restart");
    server.stop().assert_clean();
}

/// SIGHUP with `relay_to` changed: what is delivered after the reload goes to the new next
/// hop, what was delivered before went to the old one, and nothing goes to both.
fn a_reload_sends_new_deliveries_by_the_new_route() {
    let (old, new) = (
        NextHop::start(Script::default()),
        NextHop::start(Script::default()),
    );
    let dir = TempDir::new("reroute");
    let conf = config(&dir, &format!("relay_to = \"smtp:{}\"\n", old.addr));
    let server = Server::start(&["--hostname", "mx.test", "--config", &conf]);
    send(
        &server,
        "a@client.test",
        &["b@x.test"],
        "Subject: before\r\n\r\nbody\r\n",
    );
    assert_eq!(old.wait_for(1, WAIT).len(), 1, "{}", server.log());
    wait_for_empty_queue(&server);
    config(&dir, &format!("relay_to = \"smtp:{}\"\n", new.addr));
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reloaded");
    assert!(server.log().contains("changed=relay_to"), "{}", server.log());
    send(
        &server,
        "a@client.test",
        &["b@x.test"],
        "Subject: after\r\n\r\nbody\r\n",
    );
    let got = new.wait_for(1, WAIT);
    assert_eq!(got.len(), 1, "{}", server.log());
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: after"));
    wait_for_empty_queue(&server);
    assert_eq!(
        old.wait_for(1, Duration::ZERO).len(),
        1,
        "the old next hop got only the first"
    );
    server.stop().assert_clean();
}

/// SIGHUPs while deliveries are under way do not add connections: the next hop never has more
/// than `destination_concurrency` sessions from ringmx at once (each reload used to start a
/// new pool beside the old one, whose threads went on: up to the limit more per reload, and
/// their memory), and every message arrives once.
fn reloads_under_load_keep_the_next_hop_within_destination_concurrency() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let gate = Arc::new(AtomicBool::new(false));
    let (inside, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (open, now, most) = (gate.clone(), inside.clone(), peak.clone());
    // Each session holds its RCPT reply until the gate opens, so the sessions the next hop
    // has at once are those waiting in it.
    let hop = NextHop::start(Script {
        rcpt: Some(Box::new(move |_| {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(n, Ordering::SeqCst);
            while !open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            now.fetch_sub(1, Ordering::SeqCst);
            "250 2.1.5 Ok".to_string()
        })),
        ..Script::default()
    });
    let dir = TempDir::new("reload-load");
    let body = |i: usize| {
        format!(
            "relay_to = \"smtp:{}\"\ndestination_concurrency = 2\nmax_errors = {}\n",
            hop.addr,
            10 + i
        )
    };
    let conf = config(&dir, &body(0));
    let server = Server::start(&["--hostname", "mx.test", "--config", &conf]);
    let mut c = server.connect_greeted();
    let mut sent = 0;
    let mut send_some = |c: &mut Client, n: usize| {
        for _ in 0..n {
            send_on(
                c,
                "a@client.test",
                &["b@x.test"],
                &format!("Subject: r\r\nX-Seq: {sent}\r\n\r\nhi\r\n"),
            );
            sent += 1;
        }
    };
    send_some(&mut c, 6);
    let deadline = Instant::now() + WAIT;
    while inside.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    for round in 1..=3 {
        config(&dir, &body(round));
        server.signal(libc::SIGHUP);
        let deadline = Instant::now() + WAIT;
        while server.log().matches("configuration reloaded").count() < round {
            assert!(Instant::now() < deadline, "{}", server.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        // Dispatched after the reload: with a pool per reload, these started new sessions.
        send_some(&mut c, 2);
    }
    // Time for any extra session to open and reach its RCPT.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(peak.load(Ordering::SeqCst), 2, "sessions at once at the next hop");
    gate.store(true, Ordering::SeqCst);
    let got = hop.wait_for(sent, WAIT);
    assert_eq!(got.len(), sent, "{}", server.log());
    wait_for_empty_queue(&server);
    assert_eq!(hop.got().len(), sent, "a message arrived twice");
    assert!(peak.load(Ordering::SeqCst) <= 2);
    server.stop().assert_clean();
}

/// Messages waiting beyond `delivery_active_limit` that cannot be read when their turn comes
/// (the server out of descriptors: `EMFILE`) are tried again, and delivered once descriptors
/// are back; they used to leave the schedule and wait in the spool until a restart (7,273 in
/// the soak's descriptor exhaustion, the queue gauge at 0).
fn a_queued_message_unreadable_for_want_of_descriptors_is_delivered_after() {
    use std::sync::atomic::Ordering;
    // The first RCPT waits for the gate: everything else queues behind its session.
    let (hop, gate) = held_next_hop();
    let dir = TempDir::new("emfile");
    let conf = config(
        &dir,
        &format!(
            "relay_to = \"smtp:{}\"\ndestination_concurrency = 1\ndelivery_active_limit = 16\n",
            hop.addr
        ),
    );
    let server = Server::start(&["--hostname", "mx.test", "--config", &conf]);
    let total = 20;
    let mut c = server.connect_greeted();
    for i in 0..total {
        send_on(
            &mut c,
            "a@client.test",
            &["b@x.test"],
            &format!("Subject: e\r\nX-Seq: {i}\r\n\r\nhi\r\n"),
        );
    }
    drop(c);
    let deadline = Instant::now() + WAIT;
    while hop.mails.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Every descriptor number below the limit is in use: the server can open nothing more.
    let fds = Path::new("/proc").join(server.pid().to_string()).join("fd");
    let used: std::collections::HashSet<u64> = std::fs::read_dir(&fds)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !used.contains(n)).unwrap();
    let mut saved = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) on the server, a child of this process, reading its limits into a
    // valid rlimit.
    let rc = unsafe { libc::prlimit(server.pid(), libc::RLIMIT_NOFILE, std::ptr::null(), &mut saved) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let low = libc::rlimit {
        rlim_cur: lowest_free,
        rlim_max: saved.rlim_max,
    };
    // SAFETY: as above, setting the soft limit from a valid rlimit; the hard one stays.
    let rc = unsafe { libc::prlimit(server.pid(), libc::RLIMIT_NOFILE, &low, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    gate.store(true, Ordering::SeqCst);
    server.wait_for_log("cannot read a queued message; trying again");
    // SAFETY: as above, the saved limits put back.
    let rc = unsafe { libc::prlimit(server.pid(), libc::RLIMIT_NOFILE, &saved, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let got = hop.wait_for(total, WAIT);
    assert_eq!(got.len(), total, "{}", server.log());
    wait_for_empty_queue(&server);
    assert_eq!(hop.got().len(), total, "a message arrived twice");
    server.stop().assert_clean();
}
