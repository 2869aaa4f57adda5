//! Recipient lookups in a table of 1,000,000 addresses: one RCPT check on a hit, an unknown user and a foreign domain, and the table's load time and memory.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringmx::policy::recipients::{Recipients, Verdict};
use std::collections::HashSet;
use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

const ADDRESSES: usize = 1_000_000;
const DOMAINS: usize = 16;
/// Probes spread over the whole table: more than the caches hold, as the RCPTs of many
/// sessions are; and a few, all in the cache once the first round has run.
const SPREAD: usize = 1 << 16;
const HOT: usize = 1 << 10;

fn address(i: usize) -> String {
    format!("user.{i:07}@example{}.org", i % DOMAINS)
}

/// The resident set of this process, from /proc/self/status.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Writes the file (streamed, so no large buffer is freed before the measurement), loads it
/// and reports the load time and the resident memory it took, then the same for a plain
/// `HashSet<Box<[u8]>>` of the addresses, for comparison.
fn load() -> Recipients {
    let domains: Vec<String> = (0..DOMAINS).map(|d| format!("example{d}.org")).collect();
    let path = std::env::temp_dir().join(format!("ringmx-bench-recipients-{}", std::process::id()));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..ADDRESSES {
        writeln!(file, "{}", address(i)).unwrap();
    }
    file.into_inner().unwrap().sync_all().unwrap();
    let size = std::fs::metadata(&path).unwrap().len();

    let before = rss();
    let start = Instant::now();
    let table = Recipients::new(&domains, Some(&path)).unwrap();
    let elapsed = start.elapsed();
    let grown = rss().saturating_sub(before);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(table.len(), ADDRESSES);
    println!(
        "recipients: {ADDRESSES} addresses ({size} octets of file) loaded in {elapsed:.2?}; \
         RSS +{:.1} MiB, {:.1} octets per address",
        grown as f64 / (1 << 20) as f64,
        grown as f64 / ADDRESSES as f64
    );

    let before = rss();
    let naive: HashSet<Box<[u8]>> = (0..ADDRESSES).map(|i| address(i).into_bytes().into()).collect();
    let grown = rss().saturating_sub(before);
    println!(
        "recipients: the same as a HashSet<Box<[u8]>>: RSS +{:.1} MiB, {:.1} octets per address",
        grown as f64 / (1 << 20) as f64,
        grown as f64 / ADDRESSES as f64
    );
    drop(naive);
    table
}

fn recipients(c: &mut Criterion) {
    let table = load();
    let spread = |i: usize| i * 7919 % ADDRESSES;
    let probes =
        |f: &dyn Fn(usize) -> String| -> Vec<Vec<u8>> { (0..SPREAD).map(|i| f(i).into_bytes()).collect() };
    let kinds = [
        ("hit", probes(&|i| address(spread(i))), Verdict::Accept),
        (
            "unknown-user",
            probes(&|i| format!("nobody.{:07}@example{}.org", spread(i), i % DOMAINS)),
            Verdict::UnknownUser,
        ),
        (
            "foreign-domain",
            probes(&|i| format!("user.{:07}@example{}.com", spread(i), i % DOMAINS)),
            Verdict::DomainNotAccepted,
        ),
    ];
    for (count, label) in [(SPREAD, "spread"), (HOT, "hot")] {
        let mut group = c.benchmark_group(format!("recipients-{label}"));
        group.throughput(Throughput::Elements(count as u64));
        for (name, probes, verdict) in &kinds {
            let probes = &probes[..count];
            assert!(probes.iter().all(|p| table.check(p) == *verdict), "{name}");
            group.bench_function(*name, |b| {
                b.iter(|| {
                    probes
                        .iter()
                        .filter(|p| table.check(black_box(p)) == *verdict)
                        .count()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, recipients);
criterion_main!(benches);
