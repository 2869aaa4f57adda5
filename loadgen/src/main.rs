//! ringmx-loadgen: drives scripted SMTP sessions at a server and reports checked results and latency.

mod cli;
mod engine;
mod reply;
mod report;
mod script;
mod stats;
mod sweep;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use clap::Parser;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use cli::{Args, Config};
use engine::{Report, Shared};
use report::{Collected, IntervalRow, Summary};
use script::{Corpus, Phase, PHASES};
use stats::{Counters, PhaseHists};

fn main() {
    let args = Args::parse();
    let sweep = args.sweep.zip(args.slo);
    let (step_duration, budget) = (args.step_duration, args.error_budget);
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringmx-loadgen: {e}");
            std::process::exit(2);
        }
    };
    let result = match sweep {
        Some((range, slo)) => sweep::run(&cfg, range, slo, step_duration, budget),
        None => single(&cfg),
    };
    if let Err(e) = result {
        eprintln!("ringmx-loadgen: {e}");
        std::process::exit(1);
    }
}

fn single(cfg: &Config) -> Result<(), String> {
    if let Some(dir) = &cfg.out {
        std::fs::create_dir_all(dir.join("mismatches"))
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let corpus = Arc::new(Corpus::new(cfg.msg_size, cfg.seed));
    let collected = run(cfg, &corpus)?;
    let summary = Summary::build(cfg, &collected);
    let json = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    if cfg.json {
        println!("{json}");
    } else {
        print!("{}", summary.table());
    }
    if let Some(dir) = &cfg.out {
        write_file(&dir.join("summary.json"), json.as_bytes())?;
        for p in PHASES {
            write_file(
                &dir.join(format!("{}.hgrm", p.name())),
                report::hgrm(&collected.corrected.0[p as usize]).as_bytes(),
            )?;
        }
        if cfg.rate.is_some() {
            write_file(
                &dir.join("session.uncorrected.hgrm"),
                report::hgrm(&collected.uncorrected.0[Phase::Session as usize]).as_bytes(),
            )?;
        }
        write_file(
            &dir.join("report.svg"),
            report::report_svg(&summary, &collected).as_bytes(),
        )?;
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), String> {
    std::fs::write(path, data).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Per-interval merge state until every worker has reported that second.
struct Pending {
    hists: PhaseHists,
    counters: Counters,
}

/// Run one load phase with `cfg` and collect everything the workers measured.
pub fn run(cfg: &Config, corpus: &Arc<Corpus>) -> Result<Collected, String> {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        corpus: Arc::clone(corpus),
        start,
        stop_at: cfg.duration.map(|d| start + d),
        sessions_left: cfg.sessions.map(|n| AtomicI64::new(n as i64)),
        saved: engine::saved_counters(),
        mismatch_dir: cfg.out.as_ref().map(|d| d.join("mismatches")),
    });
    let (tx, rx) = crossbeam_channel::unbounded::<Report>();
    let mut handles = vec![];
    for (id, slots) in engine::split_slots(cfg.connections, cfg.threads)
        .into_iter()
        .enumerate()
    {
        let (shared, tx) = (Arc::clone(&shared), tx.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{id}"))
                .spawn(move || engine::run_worker(id, shared, slots, tx))
                .map_err(|e| e.to_string())?,
        );
    }
    drop(tx);

    let mut hlog_file = match &cfg.out {
        Some(dir) => Some(BufWriter::new(
            File::create(dir.join("latency.hlog")).map_err(|e| format!("latency.hlog: {e}"))?,
        )),
        None => None,
    };
    let mut serializer = V2DeflateSerializer::new();
    let start_wall = SystemTime::now();
    let mut hlog = match hlog_file.as_mut() {
        Some(f) => Some(
            IntervalLogWriterBuilder::new()
                .add_comment("ringmx-loadgen interval log: corrected latency per phase, tag = phase")
                .add_comment("values in microseconds; max column in milliseconds")
                .with_start_time(start_wall)
                .with_base_time(start_wall)
                .with_max_value_divisor(1000.0)
                .begin_log_with(f, &mut serializer)
                .map_err(|e| format!("latency.hlog: {e}"))?,
        ),
        None => None,
    };

    let threads = cfg.threads;
    let mut corrected = PhaseHists::new();
    let mut uncorrected = PhaseHists::new();
    let mut counters = Counters::default();
    let mut caps = None;
    let mut backlog = 0;
    let mut last = vec![None::<u64>; threads];
    let mut done = vec![false; threads];
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut intervals = vec![];
    let mut end = start;
    for r in rx.iter() {
        corrected.add(&r.corrected);
        uncorrected.add(r.uncorrected.as_ref().unwrap_or(&r.corrected));
        counters.add(&r.counters);
        caps = caps.or(r.caps);
        let p = pending.entry(r.interval).or_insert_with(|| Pending {
            hists: PhaseHists::new(),
            counters: Counters::default(),
        });
        p.hists.add(&r.corrected);
        p.counters.add(&r.counters);
        last[r.worker] = Some(r.interval);
        if let Some(b) = r.done {
            done[r.worker] = true;
            backlog += b;
            end = Instant::now();
        }
        // An interval is complete once every worker reported it or finished before it.
        while let Some((&i, _)) = pending.first_key_value() {
            if !(0..threads).all(|w| done[w] || last[w].is_some_and(|l| l >= i)) {
                break;
            }
            let (i, p) = pending.pop_first().expect("checked non-empty");
            let len = (end.max(start + std::time::Duration::from_secs(i)) - start).as_secs_f64() - i as f64;
            let secs = if done.iter().all(|d| *d) && pending.is_empty() {
                len.clamp(0.001, 1.0)
            } else {
                1.0
            };
            let row = IntervalRow {
                t: i as f64 + secs,
                sessions: p.counters.total().ok,
                messages: p.counters.messages,
                errors: p.counters.errors(),
                p99_session_us: corrected.0[Phase::Session as usize].value_at_quantile(0.99),
            };
            if !cfg.quiet {
                eprintln!(
                    "[{:>6.1}s] {:>9.0} sessions/s {:>9.0} msgs/s  p99 session {:>9.3} ms  errors {}",
                    row.t,
                    row.sessions as f64 / secs,
                    row.messages as f64 / secs,
                    row.p99_session_us as f64 / 1000.0,
                    row.errors
                );
            }
            if let Some(log) = hlog.as_mut() {
                for ph in PHASES {
                    let h = &p.hists.0[ph as usize];
                    if !h.is_empty() {
                        log.write_histogram(
                            h,
                            std::time::Duration::from_secs(i),
                            std::time::Duration::from_secs_f64(secs),
                            Tag::new(ph.name()),
                        )
                        .map_err(|e| format!("latency.hlog: {e}"))?;
                    }
                }
            }
            intervals.push(row);
        }
    }
    drop(hlog);
    if let Some(mut f) = hlog_file {
        f.flush().map_err(|e| format!("latency.hlog: {e}"))?;
    }
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("worker failed: {e}")),
            Err(_) => return Err("worker panicked".into()),
        }
    }
    Ok(Collected {
        corrected,
        uncorrected,
        counters,
        caps,
        backlog,
        elapsed_s: (end - start).as_secs_f64(),
        intervals,
    })
}
