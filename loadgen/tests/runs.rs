//! End-to-end runs of the real binary against the in-test servers.

mod common;

use std::time::Duration;

use common::{run, summary, temp_dir, u, Behaviour, Server};

const ALL: &str = "valid=4,typo=2,overlong=2,nonsmtp=2,badseq=1,unimpl=1,badparam=1";
const BAD_CLASSES: [&str; 6] = ["typo", "overlong", "nonsmtp", "badseq", "unimpl", "badparam"];
const PHASES: [&str; 9] = [
    "connect", "banner", "ehlo", "mail", "rcpt", "data", "eod", "quit", "session",
];
const LIMIT: Duration = Duration::from_secs(60);

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parse a .hgrm file into (value, percentile, total count) rows.
fn hgrm_rows(text: &str) -> Vec<(f64, f64, u64)> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]);
    lines
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() == 4 || f.len() == 3, "row {l:?}");
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

/// The .hgrm files agree with summary.json; report.svg and latency.hlog are there.
fn check_files(dir: &std::path::Path, s: &serde_json::Value) {
    for p in PHASES {
        let text = std::fs::read_to_string(dir.join(format!("{p}.hgrm"))).unwrap();
        let rows = hgrm_rows(&text);
        let count = u(s, &format!("latency_us.{p}.count"));
        assert!(count > 0, "phase {p} recorded nothing");
        let last = rows.last().unwrap();
        assert_eq!(last.1, 1.0, "{p}: last row is the 100th percentile");
        assert_eq!(last.2, count, "{p}: total count matches summary");
        assert!(rows.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        // Values are milliseconds: the p50 row agrees with summary.json's microseconds.
        let p50 = rows.iter().find(|r| r.1 >= 0.5).unwrap().0;
        let want = u(s, &format!("latency_us.{p}.p50")) as f64 / 1000.0;
        assert!((p50 - want).abs() <= want * 0.01 + 0.002, "{p}: {p50} vs {want}");
        assert!(text.contains("#[Mean    ="));
        assert!(text.contains(&format!("Total count    = {count:>12}]")));
        assert!(text.contains("#[Buckets ="));
    }
    let svg = std::fs::read_to_string(dir.join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
    assert!(svg.contains("session") && svg.contains("<polyline"));
    let hlog = std::fs::read_to_string(dir.join("latency.hlog")).unwrap();
    assert!(hlog.contains("#[StartTime:"));
    assert!(
        hlog.contains("Tag=session,"),
        "interval log has tagged session intervals"
    );
    assert!(hlog.contains("HISTFAA"), "V2 compressed histograms");
}

#[test]
fn correct_server_every_class_zero_mismatches() {
    let server = Server::start(Behaviour::Correct);
    let dir = temp_dir("correct");
    let out = run(
        &[
            "--target",
            &server.target(),
            "--sessions",
            "400",
            "--connections",
            "8",
            "--threads",
            "2",
            "--mix",
            ALL,
            "--msg-size",
            "512:8k",
            "--rcpts",
            "1:3",
            "--quiet",
            "--timeout",
            "5s",
            "--out",
            dir.to_str().unwrap(),
        ],
        LIMIT,
    );
    ok(&out);
    let s = summary(&dir);
    assert_eq!(u(&s, "schema"), 1);
    assert_eq!(s["mode"], "closed");
    assert_eq!(u(&s, "errors.total"), 0, "summary: {s:#}");
    assert_eq!(u(&s, "errors.mismatch"), 0);
    assert_eq!(s["mismatches"].as_array().unwrap().len(), 0);
    assert_eq!(u(&s, "sessions.started"), 400);
    assert_eq!(u(&s, "sessions.ok"), 400);
    assert_eq!(u(&s, "sessions.completed"), 400);
    for class in ["valid"].iter().chain(&BAD_CLASSES) {
        let n = u(&s, &format!("classes.{class}.sessions"));
        assert!(n > 0, "class {class} never ran");
        assert_eq!(u(&s, &format!("classes.{class}.ok")), n, "class {class}");
    }
    // valid and typo each deliver one message; overlong's long-line message is refused.
    let delivered = u(&s, "classes.valid.ok") + u(&s, "classes.typo.ok");
    assert_eq!(u(&s, "messages"), delivered);
    assert_eq!(s["server"]["pipelining"], true);
    assert_eq!(s["server"]["enhancedstatuscodes"], true);
    assert_eq!(u(&s, "enhanced_missing"), 0);
    assert_eq!(u(&s, "latency_us.session.count"), 400);
    assert!(u(&s, "latency_us.session.p50") > 0);
    assert!(u(&s, "latency_us.session.p99") >= u(&s, "latency_us.session.p50"));
    assert!(s["throughput"]["messages_per_s"].as_f64().unwrap() > 0.0);
    assert!(u(&s, "bytes_sent") > 400 * 512 / 2);

    check_files(&dir, &s);
    assert_eq!(std::fs::read_dir(dir.join("mismatches")).unwrap().count(), 0);
}

#[test]
fn no_pipelining_bdat_and_several_messages() {
    let server = Server::start(Behaviour::Correct);
    let out = run(
        &[
            "--target",
            &server.target(),
            "--sessions",
            "60",
            "--connections",
            "4",
            "--threads",
            "1",
            "--mix",
            "valid=1",
            "--pipelining",
            "off",
            "--messages-per-session",
            "3",
            "--json",
            "--quiet",
        ],
        LIMIT,
    );
    ok(&out);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints the summary");
    assert_eq!(u(&s, "errors.total"), 0, "{s:#}");
    assert_eq!(u(&s, "messages"), 180);
    assert_eq!(u(&s, "latency_us.eod.count"), 180);

    let out = run(
        &[
            "--target",
            &server.target(),
            "--sessions",
            "60",
            "--connections",
            "4",
            "--threads",
            "1",
            "--mix",
            "valid=1",
            "--bdat",
            "--msg-size",
            "2k:20k",
            "--rcpts",
            "2",
            "--json",
            "--quiet",
        ],
        LIMIT,
    );
    ok(&out);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u(&s, "errors.total"), 0, "{s:#}");
    assert_eq!(u(&s, "messages"), 60);
    assert_eq!(u(&s, "latency_us.data.count"), 0, "BDAT replaces DATA");
    assert_eq!(u(&s, "latency_us.rcpt.count"), 120);
}

#[test]
fn wrong_server_shows_mismatches_in_every_bad_class() {
    let server = Server::start(Behaviour::Wrong);
    let dir = temp_dir("wrong");
    let out = run(
        &[
            "--target",
            &server.target(),
            "--sessions",
            "300",
            "--connections",
            "6",
            "--threads",
            "2",
            "--mix",
            ALL,
            "--quiet",
            "--timeout",
            "3s",
            "--out",
            dir.to_str().unwrap(),
        ],
        LIMIT,
    );
    ok(&out);
    let s = summary(&dir);
    for class in BAD_CLASSES.iter().chain(&["valid"]) {
        let n = u(&s, &format!("classes.{class}.sessions"));
        assert!(n > 0, "class {class} never ran");
        assert_eq!(
            u(&s, &format!("classes.{class}.mismatch")),
            n,
            "every {class} session fails"
        );
        assert_eq!(u(&s, &format!("classes.{class}.ok")), 0);
    }
    assert_eq!(u(&s, "sessions.ok"), 0);
    assert_eq!(u(&s, "errors.mismatch"), 300);
    assert_eq!(u(&s, "errors.timeout"), 0, "mismatches, not slowness");
    let rows = s["mismatches"].as_array().unwrap();
    let has = |class: &str, step: &str| rows.iter().any(|r| r["class"] == class && r["step"] == step);
    assert!(has("typo", "typo-helo") || has("typo", "typo-mail") || has("typo", "typo-rcpt"));
    assert!(has("unimpl", "expn"));
    assert!(has("badseq", "rcpt-before-mail"));
    assert!(has("badparam", "bad-mail"));
    // Transcripts: at most five per class and step, each naming what was expected.
    let files: Vec<_> = std::fs::read_dir(dir.join("mismatches"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty());
    for row in rows {
        let prefix = format!(
            "{}-{}-",
            row["class"].as_str().unwrap(),
            row["step"].as_str().unwrap()
        );
        let n = files
            .iter()
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(&prefix))
            .count() as u64;
        assert_eq!(n, row["count"].as_u64().unwrap().min(5), "{prefix}");
    }
    let expn = std::fs::read_to_string(dir.join("mismatches/unimpl-expn-1.txt")).unwrap();
    assert!(expn.contains("expected: 502"), "{expn}");
    assert!(expn.contains("C: EXPN postmaster"), "{expn}");
    assert!(expn.contains("S: 250 ok"), "{expn}");
}

#[test]
fn stalling_server_times_out_and_run_ends() {
    let server = Server::start(Behaviour::Stall);
    let dir = temp_dir("stall");
    let started = std::time::Instant::now();
    let out = run(
        &[
            "--target",
            &server.target(),
            "--duration",
            "1s",
            "--connections",
            "4",
            "--threads",
            "1",
            "--timeout",
            "300ms",
            "--quiet",
            "--out",
            dir.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    ok(&out);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let s = summary(&dir);
    assert!(u(&s, "errors.timeout") >= 4, "{s:#}");
    assert_eq!(u(&s, "sessions.ok"), 0);
    assert_eq!(u(&s, "errors.mismatch"), 0);
    assert_eq!(u(&s, "latency_us.banner.count"), 0);
    assert!(
        u(&s, "latency_us.connect.count") >= 4,
        "connects succeed, replies never come"
    );
}

#[test]
fn open_loop_keeps_rate_and_corrects_for_coordinated_omission() {
    let server = Server::start(Behaviour::Correct);
    let out = run(
        &[
            "--target",
            &server.target(),
            "--rate",
            "200",
            "--duration",
            "1s",
            "--threads",
            "2",
            "--mix",
            "valid=1",
            "--json",
            "--quiet",
        ],
        LIMIT,
    );
    ok(&out);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["mode"], "open");
    let started = u(&s, "sessions.started");
    assert!(
        (190..=201).contains(&started),
        "open loop started {started} sessions in 1 s at 200/s"
    );
    assert_eq!(u(&s, "errors.total"), 0);
    assert_eq!(
        u(&s, "latency_uncorrected_us.session.count"),
        u(&s, "latency_us.session.count")
    );

    // One connection, a server needing ~25 ms per session, offered 100/s: sessions queue
    // behind each other. Corrected latency must show the queueing the uncorrected hides.
    let slow = Server::start(Behaviour::SlowBanner(Duration::from_millis(25)));
    let out = run(
        &[
            "--target",
            &slow.target(),
            "--rate",
            "100",
            "--duration",
            "1s",
            "--connections",
            "1",
            "--mix",
            "valid=1",
            "--json",
            "--quiet",
        ],
        LIMIT,
    );
    ok(&out);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let corrected = u(&s, "latency_us.session.p99");
    let raw = u(&s, "latency_uncorrected_us.session.p99");
    assert!(
        raw < 200_000,
        "a single session takes about 25 ms, got p99 {raw} us"
    );
    assert!(
        corrected > 3 * raw,
        "corrected p99 {corrected} us vs uncorrected {raw} us"
    );
    assert!(
        u(&s, "sessions.backlog") > 0,
        "sessions that never got a slot are reported"
    );
}

#[test]
fn sweep_writes_capacity_table() {
    let server = Server::start(Behaviour::Correct);
    let dir = temp_dir("sweep");
    let out = run(
        &[
            "--target",
            &server.target(),
            "--sweep",
            "50:150:50",
            "--slo",
            "p99=2s",
            "--step-duration",
            "500ms",
            "--mix",
            "valid=1",
            "--threads",
            "1",
            "--out",
            dir.to_str().unwrap(),
        ],
        LIMIT,
    );
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("offered") && stdout.contains("capacity: 150.0"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sweep.json")).unwrap()).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(v["capacity"].as_f64(), Some(150.0));
    for (i, st) in steps.iter().enumerate() {
        assert_eq!(st["offered"].as_f64(), Some(50.0 * (i + 1) as f64));
        assert!(st["achieved"].as_f64().unwrap() > 0.0);
        assert_eq!(st["met_slo"], true);
    }
    assert!(std::fs::read_to_string(dir.join("sweep.svg"))
        .unwrap()
        .starts_with("<svg"));

    // An impossible SLO breaks at the first step and names no capacity.
    let out = run(
        &[
            "--target",
            &server.target(),
            "--sweep",
            "50:150:50",
            "--slo",
            "p99=1us",
            "--step-duration",
            "300ms",
            "--mix",
            "valid=1",
            "--threads",
            "1",
            "--json",
        ],
        LIMIT,
    );
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["steps"].as_array().unwrap().len(), 1);
    assert!(v["capacity"].is_null());
}

#[test]
fn refuses_non_loopback_target() {
    let out = run(
        &["--target", "192.0.2.1:25", "--sessions", "1"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing"));
}

#[test]
fn closed_port_counts_refused() {
    // Bind then drop to find a port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let out = run(
        &[
            "--target",
            &target,
            "--sessions",
            "20",
            "--connections",
            "2",
            "--threads",
            "1",
            "--json",
            "--quiet",
        ],
        LIMIT,
    );
    ok(&out);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u(&s, "errors.refused"), 20);
    assert_eq!(u(&s, "sessions.ok"), 0);
}
