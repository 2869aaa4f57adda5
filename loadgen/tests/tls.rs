//! Runs over TLS against the in-test servers: STARTTLS, implicit TLS, resumption, certificate checks, the injection probe.

mod common;

use std::path::Path;
use std::time::Duration;

use common::tls::{Mode, Pki};
use common::{run, summary, temp_dir, u, Server};

const LIMIT: Duration = Duration::from_secs(60);

/// A bounded run over TLS with `extra` flags; returns summary.json.
fn tls_run(server: &Server, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let target = server.target();
    let out = dir.to_str().unwrap().to_string();
    let mut args = vec![
        "--target",
        &target,
        "--sessions",
        "40",
        "--connections",
        "4",
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
        "loadgen failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    summary(dir)
}

#[test]
fn starttls_and_implicit_with_the_right_ca_have_no_errors() {
    let pki = Pki::new();
    for (mode, server_mode, mix) in [
        ("starttls", Mode::Starttls, "valid=3,typo=1,starttls=1"),
        ("implicit", Mode::Implicit, "valid=3,typo=1"),
    ] {
        // Messages up to 100k span several TLS records and partial socket writes.
        let server = Server::start_tls(pki.server(server_mode));
        let dir = temp_dir(&format!("tls-{mode}"));
        let ca = pki.ca_file(&dir, "ca.pem");
        let s = tls_run(
            &server,
            &dir,
            &[
                "--tls",
                mode,
                "--tls-ca",
                ca.to_str().unwrap(),
                "--mix",
                mix,
                "--msg-size",
                "1k:100k",
            ],
        );
        assert_eq!(u(&s, "errors.total"), 0, "{mode}: {s}");
        assert_eq!(u(&s, "sessions.ok"), 40, "{mode}");
        assert!(u(&s, "messages") > 0, "{mode}: messages counted inside TLS");
        assert_eq!(u(&s, "tls.handshakes"), 40, "{mode}");
        assert_eq!(u(&s, "tls.resumed"), 0, "{mode}: no resumption unless asked");
        assert_eq!(u(&s, "latency_us.tls.count"), 40, "{mode}: tls phase timed");
        assert_eq!(s["tls"]["mode"], mode);
        assert_eq!(s["tls"]["insecure"], false);
        let hgrm = std::fs::read_to_string(dir.join("tls.hgrm")).unwrap();
        assert!(hgrm.contains("Total count    =           40]"), "{hgrm}");
        if mode == "starttls" {
            assert!(
                u(&s, "classes.starttls.ok") > 0,
                "the injection probe ran and passed"
            );
        }
    }
}

#[test]
fn resumption_reuses_sessions_within_a_thread() {
    let pki = Pki::new();
    let server = Server::start_tls(pki.server(Mode::Implicit));
    let dir = temp_dir("tls-resume");
    let ca = pki.ca_file(&dir, "ca.pem");
    let s = tls_run(
        &server,
        &dir,
        &[
            "--tls",
            "implicit",
            "--tls-ca",
            ca.to_str().unwrap(),
            "--tls-resume",
            "--mix",
            "valid=1",
        ],
    );
    assert_eq!(u(&s, "errors.total"), 0, "{s}");
    assert_eq!(u(&s, "tls.handshakes"), 40);
    assert!(u(&s, "tls.resumed") > 0, "{s}");
    assert_eq!(s["tls"]["resume"], true);
}

#[test]
fn wrong_ca_fails_handshakes_and_insecure_skips_the_check() {
    let (pki, other) = (Pki::new(), Pki::new());
    let server = Server::start_tls(pki.server(Mode::Starttls));
    let dir = temp_dir("tls-wrong-ca");
    let ca = other.ca_file(&dir, "other.pem");
    let s = tls_run(
        &server,
        &dir,
        &[
            "--tls",
            "starttls",
            "--tls-ca",
            ca.to_str().unwrap(),
            "--mix",
            "valid=1",
        ],
    );
    assert_eq!(u(&s, "errors.tls"), 40, "{s}");
    assert_eq!(u(&s, "errors.total"), 40);
    assert_eq!(u(&s, "classes.valid.tls"), 40);
    assert_eq!(u(&s, "sessions.ok"), 0);
    assert_eq!(u(&s, "tls.handshakes"), 0);

    let dir = temp_dir("tls-insecure");
    let s = tls_run(
        &server,
        &dir,
        &["--tls", "starttls", "--tls-insecure", "--mix", "valid=1"],
    );
    assert_eq!(u(&s, "errors.total"), 0, "{s}");
    assert_eq!(s["tls"]["insecure"], true);
}

#[test]
fn injection_vulnerable_server_fails_the_starttls_class() {
    let pki = Pki::new();
    let server = Server::start_tls(pki.server(Mode::Injectable));
    let dir = temp_dir("tls-inject");
    let ca = pki.ca_file(&dir, "ca.pem");
    let s = tls_run(
        &server,
        &dir,
        &[
            "--tls",
            "starttls",
            "--tls-ca",
            ca.to_str().unwrap(),
            "--mix",
            "valid=1,starttls=1",
        ],
    );
    assert!(u(&s, "classes.starttls.mismatch") > 0, "{s}");
    assert_eq!(u(&s, "classes.starttls.ok"), 0, "every probe caught");
    let rows = s["mismatches"].as_array().unwrap();
    assert!(
        rows.iter()
            .all(|r| r["class"] == "starttls" && r["step"] == "starttls"),
        "{rows:?}"
    );
    // Nothing is pipelined behind a plain STARTTLS, so the valid class is unaffected.
    assert_eq!(u(&s, "classes.valid.mismatch"), 0);
}

#[test]
fn tls_flags_are_checked() {
    let server = Server::start_tls(Pki::new().server(Mode::Starttls));
    let target = server.target();
    for (args, why) in [
        (vec!["--tls", "starttls"], "--tls-ca FILE or --tls-insecure"),
        (vec!["--mix", "valid=1,starttls=1"], "needs --tls starttls"),
        (
            vec!["--tls", "implicit", "--tls-insecure", "--mix", "starttls=1"],
            "needs --tls starttls",
        ),
    ] {
        let mut a = vec!["--target", target.as_str(), "--sessions", "1"];
        a.extend(args);
        let o = run(&a, LIMIT);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(why),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
