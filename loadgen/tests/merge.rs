//! `merge` of two real runs made at the same time (two "machines") against a sink-mode ringmx: totals add up, percentiles are the merged histogram's.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

use common::{run, summary, temp_dir, u, Behaviour, Server};

const LIMIT: Duration = Duration::from_secs(60);

/// `ringmx serve --sink` on a kernel-picked loopback port, killed when dropped.
struct Sink(Child, String);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server binary: $RINGMX_BIN, else the workspace's debug or release build.
fn ringmx_bin() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("RINGMX_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(["target/debug/ringmx", "target/release/ringmx"].map(|p| root.join(p)))
        .find(|p| p.is_file())
}

/// Starts the sink and reads its port from the start line it logs (within 20 s).
fn sink(bin: &Path, dir: &Path) -> Sink {
    let log = dir.join("server.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin)
        .args(["serve", "--sink", "--listen", "127.0.0.1:0", "--workers", "1"])
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn ringmx");
    let mut s = Sink(child, String::new());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let mut text = String::new();
        std::fs::File::open(&log)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        if let Some(l) = text.split("listeners=").nth(1) {
            s.1 = l.split_whitespace().next().unwrap().to_string();
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "ringmx did not log its listener: {}",
        std::fs::read_to_string(&log).unwrap()
    );
}

/// Every tag's histogram of an interval log, summed over intervals.
fn hlog_total(path: &Path, tag: &str) -> Histogram<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut total = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
    for e in IntervalLogIterator::new(&bytes) {
        if let LogEntry::Interval(i) = e.unwrap() {
            if i.tag().map(|t| t.as_str()) == Some(tag) {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(i.encoded_histogram())
                    .unwrap();
                let h: Histogram<u64> = Deserializer::new().deserialize(&mut &raw[..]).unwrap();
                total.add(&h).unwrap();
            }
        }
    }
    total
}

fn load(target: &str, dir: &Path, connections: &str) -> std::thread::JoinHandle<std::process::Output> {
    let (target, dir, connections) = (
        target.to_string(),
        dir.to_str().unwrap().to_string(),
        connections.to_string(),
    );
    std::thread::spawn(move || {
        let args = [
            "--target",
            &target,
            "--duration",
            "2s",
            "--connections",
            &connections,
            "--threads",
            "1",
            "--quiet",
            "--timeout",
            "5s",
            "--out",
            &dir,
        ];
        run(&args, LIMIT)
    })
}

#[test]
fn two_machines_merge_to_the_sum_of_their_counts_and_histograms() {
    let dir = temp_dir("merge");
    // The real server when built (cargo test --workspace builds it), else the in-test one.
    let bin = ringmx_bin();
    let (_sink, _server, target) = match &bin {
        Some(b) => {
            let s = sink(b, &dir);
            let t = s.1.clone();
            (Some(s), None, t)
        }
        None => {
            eprintln!("no ringmx binary (set RINGMX_BIN): merging runs against the test server");
            let s = Server::start(Behaviour::Correct);
            let t = s.target();
            (None, Some(s), t)
        }
    };
    let (a, b, m) = (dir.join("a"), dir.join("b"), dir.join("merged"));
    let ja = load(&target, &a, "3");
    let jb = load(&target, &b, "5");
    for out in [ja.join().unwrap(), jb.join().unwrap()] {
        assert!(
            out.status.success(),
            "run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(
        &[
            "merge",
            m.to_str().unwrap(),
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert!(
        out.status.success(),
        "merge failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("differ in connections"));
    let (sa, sb, sm) = (summary(&a), summary(&b), summary(&m));
    assert!(u(&sa, "sessions.ok") > 0 && u(&sb, "sessions.ok") > 0);
    for k in [
        "sessions.started",
        "sessions.ok",
        "sessions.completed",
        "sessions.aborted",
        "messages",
        "commands",
        "bytes_sent",
        "bytes_received",
        "errors.total",
        "classes.valid.sessions",
        "classes.typo.ok",
        "latency_us.session.count",
        "latency_us.connect.count",
    ] {
        assert_eq!(u(&sm, k), u(&sa, k) + u(&sb, k), "{k}");
    }
    assert_eq!(u(&sm, "connections"), 8);
    assert_eq!(sm["settings_differ"], serde_json::json!(["connections"]));
    assert_eq!(sm["merged_from"].as_array().unwrap().len(), 2);
    assert_eq!(sm["target"].as_str(), Some(target.as_str()));
    // Percentiles are those of one histogram holding both runs' values.
    for phase in ["session", "eod", "connect"] {
        let mut all = hlog_total(&a.join("latency.hlog"), phase);
        all.add(hlog_total(&b.join("latency.hlog"), phase)).unwrap();
        assert_eq!(
            all.len(),
            u(&sm, &format!("latency_us.{phase}.count")),
            "{phase}: hlog holds every value"
        );
        for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            assert_eq!(
                u(&sm, &format!("latency_us.{phase}.{k}")),
                all.value_at_quantile(q),
                "{phase} {k}"
            );
        }
        assert_eq!(u(&sm, &format!("latency_us.{phase}.max")), all.max());
        let merged = hlog_total(&m.join("latency.hlog"), phase);
        assert_eq!(
            (merged.len(), merged.value_at_quantile(0.99)),
            (all.len(), all.value_at_quantile(0.99))
        );
        let hgrm = std::fs::read_to_string(m.join(format!("{phase}.hgrm"))).unwrap();
        assert!(
            hgrm.contains(&format!("Total count    = {:>12}]", all.len())),
            "{phase}.hgrm"
        );
    }
    // Both ran at once: the merged span is about one run's, not their sum.
    let el = sm["elapsed_s"].as_f64().unwrap();
    let (ea, eb) = (
        sa["elapsed_s"].as_f64().unwrap(),
        sb["elapsed_s"].as_f64().unwrap(),
    );
    assert!(el >= ea.max(eb) && el < ea + eb, "{el} from {ea} and {eb}");
    let rate = sm["throughput"]["messages_per_s"].as_f64().unwrap();
    assert!((rate - u(&sm, "messages") as f64 / el).abs() < 1e-6 * rate.max(1.0));
    let secs: u64 = sm["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sessions"].as_u64().unwrap())
        .sum();
    let rows = |s: &serde_json::Value| -> u64 {
        s["intervals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["sessions"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(secs, rows(&sa) + rows(&sb));
    let svg = std::fs::read_to_string(m.join("report.svg")).unwrap();
    roxmltree::Document::parse(&svg).expect("report.svg is XML");
    assert!(svg.contains("2 runs merged") && svg.contains(">session<"));
    // A run of another schema is refused, naming it.
    let mut odd = sa.clone();
    odd["schema"] = serde_json::json!(99);
    let c = dir.join("c");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join("summary.json"), odd.to_string()).unwrap();
    std::fs::copy(a.join("latency.hlog"), c.join("latency.hlog")).unwrap();
    let out = run(
        &[
            "merge",
            dir.join("m2").to_str().unwrap(),
            a.to_str().unwrap(),
            c.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schema 99") && err.contains("refusing"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
