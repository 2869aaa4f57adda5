//! The traffic classes against the real ringmx server: every class's correct answers counted, none taken for a mismatch, and the checks biting where the server's configuration makes an answer wrong.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::ringmx::Ringmx;
use common::tls::Pki;
use common::{run, summary, temp_dir, u};

const LIMIT: Duration = Duration::from_secs(60);
/// The load generator's valid recipients are user0..user149 (RCPT_POOL in loadgen/README.md).
const RCPT_POOL: usize = 150;

/// The recipients table listing every valid recipient of the load generator.
fn recipients() -> String {
    (0..RCPT_POOL).map(|i| format!("user{i}@example.com\n")).collect()
}

/// A server that refuses what a public MX refuses: behind PROXY (the clients, from the
/// documentation networks, are outside relay_networks), a greeting delay (pregreet), a
/// small SIZE (bigmsg), short idle and data-rate limits (slowloris), STARTTLS.
fn strict(pki: &Pki) -> Ringmx {
    let config = "domains = [\"example.com\"]\nrecipients = \"{dir}/recipients\"\n\
         tls_cert = \"{dir}/cert.pem\"\ntls_key = \"{dir}/key.pem\"\n\
         greet_delay_ms = 200\nmax_message_size = 20000\n\
         command_timeout_secs = 1\nmin_data_rate_grace_secs = 1\n";
    Ringmx::start(
        "strict",
        true,
        config,
        &[
            ("recipients", &recipients()),
            ("cert.pem", &pki.ca_pem),
            ("key.pem", &pki.key_pem),
        ],
    )
}

/// A run of `sessions` sessions of `mix` against `server` with `extra` flags; summary.json.
fn load(server: &Ringmx, dir: &Path, mix: &str, sessions: u32, extra: &[&str]) -> serde_json::Value {
    let (target, out, n) = (
        server.target(),
        dir.to_str().unwrap().to_string(),
        sessions.to_string(),
    );
    let mut args = vec![
        "--target",
        &target,
        "--mix",
        mix,
        "--sessions",
        &n,
        "--connections",
        "8",
        "--threads",
        "1",
        "--timeout",
        "5s",
        "--quiet",
        "--out",
        &out,
    ];
    args.extend_from_slice(extra);
    let o = run(&args, LIMIT);
    assert!(
        o.status.success(),
        "loadgen failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        server.log()
    );
    summary(dir)
}

/// Every class that ran has all its sessions ok, and its variants add up to its sessions.
fn all_ok(s: &serde_json::Value, classes: &[&str]) {
    assert_eq!(u(s, "errors.total"), 0, "{s:#}");
    for class in classes {
        let n = u(s, &format!("classes.{class}.sessions"));
        assert!(n > 0, "{class} never ran");
        assert_eq!(u(s, &format!("classes.{class}.ok")), n, "{class}");
        let variants = s["classes"][class]["variants"].as_object().unwrap();
        assert_eq!(
            variants.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
            n,
            "{class}"
        );
    }
}

#[test]
fn every_class_gets_the_answers_a_strict_server_gives() {
    let pki = Pki::new();
    let server = strict(&pki);
    let dir = temp_dir("ringmx-classes");
    let ca = pki.ca_file(&dir, "ca.pem");
    let classes = [
        "valid",
        "pregreet",
        "smuggle",
        "relay",
        "unknown_user",
        "bigmsg",
        "overshoot",
        "tls",
    ];
    let mix = "valid=1,pregreet=1,smuggle=1,relay=1,unknown_user=1,bigmsg=1,overshoot=1,tls=2";
    let s = load(
        &server,
        &dir,
        mix,
        200,
        &[
            "--proxy",
            "v2",
            "--tls-ca",
            ca.to_str().unwrap(),
            "--tls-resume-share",
            "50",
            "--msg-size",
            "1k:8k",
            "--msg-size-dist",
            "lognormal",
        ],
    );
    all_ok(&s, &classes);
    let n = |class: &str| u(&s, &format!("classes.{class}.sessions"));
    // greet_delay_ms: every early EHLO is refused.
    assert_eq!(u(&s, "classes.pregreet.pregreet_rejected"), n("pregreet"));
    assert_eq!(u(&s, "classes.pregreet.pregreet_accepted"), 0);
    // bare_lf = "normalize" (the default): one message each, the second MAIL never answered.
    assert_eq!(u(&s, "classes.smuggle.smuggle_accepted"), n("smuggle"));
    // max_recipients = 100: every surplus recipient is refused.
    assert_eq!(u(&s, "classes.overshoot.overshoot_452"), n("overshoot"));
    assert_eq!(u(&s, "classes.overshoot.overshoot_accepted"), 0);
    let bigmsg = &s["classes"]["bigmsg"]["variants"];
    assert!(bigmsg["size-param"].as_u64().unwrap() > 0 && bigmsg["body"].as_u64().unwrap() > 0);
    // Only the tls class uses TLS; a share of it resumes, from the second handshake on.
    assert!(s["tls"]["mode"].is_null());
    assert_eq!(u(&s, "tls.handshakes"), n("tls"));
    assert_eq!(u(&s, "classes.tls.tls_handshakes"), n("tls"));
    let resumed = u(&s, "tls.resumed");
    assert_eq!(u(&s, "classes.tls.tls_resumed"), resumed);
    assert!(
        resumed > 0 && resumed <= u(&s, "classes.tls.variants.resume"),
        "{s:#}"
    );
    // Acknowledged messages: valid, smuggle, overshoot and tls sessions one each, every one
    // in acked.txt with the reply that names it.
    let messages = n("valid") + n("smuggle") + n("overshoot") + n("tls");
    assert_eq!(u(&s, "messages"), messages);
    let acked = std::fs::read_to_string(dir.join("acked.txt")).unwrap();
    let lines: Vec<&str> = acked.lines().collect();
    assert_eq!(lines.len() as u64, messages);
    assert!(lines.iter().all(|l| l.starts_with("250 2.0.0 ")), "{lines:?}");
    let distinct: HashSet<&&str> = lines.iter().collect();
    assert_eq!(distinct.len(), lines.len(), "each names its own message");
    assert_eq!(u(&s, "latency_us.held.count"), 0);
    assert_eq!(std::fs::read_dir(dir.join("mismatches")).unwrap().count(), 0);
}

#[test]
fn slowloris_is_held_until_the_server_closes() {
    let pki = Pki::new();
    let server = strict(&pki);
    let dir = temp_dir("ringmx-slowloris");
    let s = load(
        &server,
        &dir,
        "slowloris=1",
        8,
        &["--proxy", "v1", "--slowloris-interval", "100ms", "--seed", "3"],
    );
    all_ok(&s, &["slowloris"]);
    let v = &s["classes"]["slowloris"]["variants"];
    assert!(
        v["command"].as_u64().unwrap() > 0 && v["data"].as_u64().unwrap() > 0,
        "{v}"
    );
    // ringmx says why before it closes (421 4.4.2).
    assert_eq!(u(&s, "classes.slowloris.slowloris_421"), 8);
    assert_eq!(u(&s, "classes.slowloris.slowloris_closed"), 0);
    // Held in its own phase, at least the 1 s limits; never a session latency.
    assert_eq!(u(&s, "latency_us.held.count"), 8);
    assert!(u(&s, "latency_us.held.min") >= 1_000_000, "{s:#}");
    assert_eq!(u(&s, "latency_us.session.count"), 0);
    let hgrm = std::fs::read_to_string(dir.join("held.hgrm")).unwrap();
    assert!(hgrm.contains("Total count    =            8]"), "{hgrm}");

    // Held past --slowloris-max is the server's failure, at the slowloris step.
    let dir = temp_dir("ringmx-slowloris-max");
    let s = load(
        &server,
        &dir,
        "slowloris=1",
        4,
        &[
            "--proxy",
            "v2",
            "--slowloris-interval",
            "100ms",
            "--slowloris-max",
            "300ms",
        ],
    );
    assert_eq!(u(&s, "classes.slowloris.mismatch"), 4, "{s:#}");
    let rows = s["mismatches"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["step"] == "slowloris"), "{rows:?}");
    let t = std::fs::read_to_string(dir.join("mismatches/slowloris-slowloris-1.txt")).unwrap();
    assert!(t.contains("not closed within --slowloris-max"), "{t}");
}

#[test]
fn a_permissive_server_gets_the_other_answers_and_relay_from_inside_is_caught() {
    // No greeting delay, 150 recipients, bare LF refused, no PROXY: the client, on
    // loopback, is inside relay_networks.
    let config = "domains = [\"example.com\"]\nrecipients = \"{dir}/recipients\"\n\
                  max_recipients = 150\nbare_lf = \"reject\"\n";
    let server = Ringmx::start("permissive", false, config, &[("recipients", &recipients())]);
    let dir = temp_dir("ringmx-permissive");
    let s = load(
        &server,
        &dir,
        "pregreet=1,overshoot=1,smuggle=1,unknown_user=1",
        60,
        &[],
    );
    all_ok(&s, &["pregreet", "overshoot", "smuggle", "unknown_user"]);
    let n = |class: &str| u(&s, &format!("classes.{class}.sessions"));
    assert_eq!(u(&s, "classes.pregreet.pregreet_accepted"), n("pregreet"));
    assert_eq!(u(&s, "classes.overshoot.overshoot_accepted"), n("overshoot"));
    assert_eq!(u(&s, "classes.overshoot.overshoot_452"), 0);
    assert_eq!(u(&s, "classes.smuggle.smuggle_rejected"), n("smuggle"));
    assert_eq!(
        u(&s, "messages"),
        n("overshoot"),
        "refused smuggles are no messages"
    );

    // From inside relay_networks a foreign domain is accepted: the relay class says so.
    let dir = temp_dir("ringmx-relay-inside");
    let s = load(&server, &dir, "relay=1", 10, &[]);
    assert_eq!(u(&s, "classes.relay.mismatch"), 10, "{s:#}");
    let rows = s["mismatches"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0]["class"].as_str(), rows[0]["step"].as_str()),
        (Some("relay"), Some("relay"))
    );
    let t = std::fs::read_to_string(dir.join("mismatches/relay-relay-1.txt")).unwrap();
    assert!(t.contains("expected: 554 5.7.1") && t.contains("S: 250"), "{t}");
}

#[test]
fn rates_leave_out_the_drain_spent_on_connections_the_server_still_holds() {
    // The default command timeout (RFC 5321 §4.5.3.2: 5 minutes) holds a slowloris
    // connection past the run: the drain waits one --timeout for it, then aborts it.
    let config = "domains = [\"example.com\"]\nrecipients = \"{dir}/recipients\"\n";
    let server = Ringmx::start("held", false, config, &[("recipients", &recipients())]);
    let dir = temp_dir("ringmx-held-rate");
    let (target, out) = (server.target(), dir.to_str().unwrap().to_string());
    let args = [
        "--target",
        &target,
        "--mix",
        "valid=3,slowloris=1",
        "--rate",
        "40",
        "--duration",
        "2s",
        "--timeout",
        "4s",
        "--slowloris-interval",
        "100ms",
        "--threads",
        "1",
        "--seed",
        "5",
        "--quiet",
        "--out",
        &out,
    ];
    let o = run(&args, LIMIT);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&dir);
    assert_eq!(u(&s, "errors.total"), 0, "{s:#}");
    let held = u(&s, "classes.slowloris.sessions");
    assert!(held > 0 && u(&s, "sessions.aborted") == held, "{s:#}");
    // The run ends with its last valid session, not 4 s later with the aborts.
    let elapsed = s["elapsed_s"].as_f64().unwrap();
    assert!((2.0..3.0).contains(&elapsed), "elapsed_s {elapsed}");
    let rate = s["throughput"]["sessions_per_s"].as_f64().unwrap();
    let completed = u(&s, "sessions.completed") as f64;
    assert!(
        (rate - completed / elapsed).abs() < 1e-6 && rate > 20.0,
        "{rate} sessions/s"
    );
}
