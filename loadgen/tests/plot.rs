//! `plot`: several sweeps in one SVG that parses as XML, with every series, the SLO line labelled, round ticks.

mod common;

use std::time::Duration;

use common::{run, temp_dir};

/// A sweep.json as `--sweep` writes it: steps of (offered, achieved, messages/s, p50 µs, p99 µs).
fn sweep(steps: &[(f64, f64, f64, u64, u64)]) -> String {
    let steps: Vec<serde_json::Value> = steps
        .iter()
        .map(|s| {
            serde_json::json!({"offered": s.0, "achieved": s.1, "messages_per_s": s.2, "p50_us": s.3,
                "slo_value_us": s.4, "p99_us": s.4, "sessions": 100, "errors": 0, "error_pct": 0.0,
                "backlog": 0, "met_slo": s.4 <= 500_000, "within_budget": true})
        })
        .collect();
    serde_json::json!({"schema": 1, "target": "127.0.0.1:25", "slo_percentile": 99.0, "slo_us": 500_000,
        "error_budget_pct": 0.1, "step_duration_s": 10.0, "capacity": 1500.0, "steps": steps})
    .to_string()
}

#[test]
fn plot_draws_every_sweep_with_the_slo_line_and_round_ticks() {
    let dir = temp_dir("plot");
    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(
        plain.join("sweep.json"),
        sweep(&[
            (500.0, 499.0, 490.0, 1800, 4200),
            (1000.0, 996.0, 980.0, 2100, 9100),
            (1500.0, 1490.0, 1460.0, 3000, 61_000),
            (2000.0, 1720.0, 1700.0, 90_000, 2_400_000),
        ]),
    )
    .unwrap();
    let tls = dir.join("tls.json");
    std::fs::write(
        &tls,
        sweep(&[
            (500.0, 498.0, 488.0, 2500, 7000),
            (1000.0, 990.0, 975.0, 4000, 800_000),
        ]),
    )
    .unwrap();
    let out_svg = dir.join("capacity.svg");
    let out = run(
        &[
            "plot",
            out_svg.to_str().unwrap(),
            &format!("plain={}", plain.display()),
            &format!("tls & resumption={}", tls.display()),
        ],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "plot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&out_svg).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the SVG is well-formed XML");
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    for want in [
        "plain",
        "tls & resumption",
        "SLO p99 ≤ 500 ms",
        "offered rate (sessions/s)",
        "achieved (messages/s)",
    ] {
        assert!(texts.contains(&want), "{want:?} missing from {texts:?}");
    }
    // Two panels, each with one line per sweep.
    assert_eq!(
        doc.descendants().filter(|n| n.has_tag_name("polyline")).count(),
        4
    );
    // Offered rate ticks at round values; latency (1.8 ms .. 2.4 s) on a log axis at decades.
    for want in ["500", "1000", "1500", "2000", "1 ms", "10 ms", "100 ms", "1 s"] {
        assert!(texts.contains(&want), "tick {want:?} missing from {texts:?}");
    }
    assert!(
        !texts.iter().any(|t| t.contains(".000") || t.contains("e-")),
        "{texts:?}"
    );
    // --metric p50 with an explicit SLO.
    let out = run(
        &[
            "plot",
            out_svg.to_str().unwrap(),
            "--metric",
            "p50",
            "--slo",
            "20ms",
            &format!("plain={}", plain.display()),
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(&out_svg).unwrap();
    roxmltree::Document::parse(&svg).unwrap();
    assert!(svg.contains("SLO p50 ≤ 20 ms") && svg.contains("p50 session latency"));
    // A path that is not a sweep is refused.
    let out = run(
        &["plot", out_svg.to_str().unwrap(), "x=/nonexistent/sweep.json"],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}
