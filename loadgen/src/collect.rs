//! One load run: starts the engine's workers and merges their per-second reports into one result.
//!
//! Each worker reports once per second of the run; a second is complete once every worker
//! has reported it (or finished before it). Complete seconds give the live line on stderr,
//! one interval of latency.hlog per phase, and a row of summary.json's `intervals`. With
//! `--out`, the end-of-data replies of acknowledged messages go to acked.txt as they come.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Receiver;
use hdrhistogram::serialization::interval_log::{IntervalLogWriter, IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use ringmx_loadgen::reply::Caps;

use crate::cli::Config;
use crate::engine::{self, Report, Shared};
use crate::script::Corpus;
use crate::stats::{Collected, Counters, IntervalRow, PhaseHists};
use crate::vocab::{Phase, PHASES};

type Hlog<'a, 'b> = IntervalLogWriter<'a, 'b, BufWriter<File>, V2DeflateSerializer>;

/// Run one load phase with `cfg` and collect everything the workers measured.
pub fn run(cfg: &Config, corpus: &Arc<Corpus>) -> Result<Collected, String> {
    let start = Instant::now();
    let (rx, handles) = spawn_workers(cfg, corpus, start)?;
    let mut hlog_file = match &cfg.out {
        Some(dir) => Some(BufWriter::new(
            File::create(dir.join("latency.hlog")).map_err(|e| format!("latency.hlog: {e}"))?,
        )),
        None => None,
    };
    let mut acked = match &cfg.out {
        Some(dir) => Some(BufWriter::new(
            File::create(dir.join("acked.txt")).map_err(|e| format!("acked.txt: {e}"))?,
        )),
        None => None,
    };
    let mut serializer = V2DeflateSerializer::new();
    let mut hlog = match hlog_file.as_mut() {
        Some(f) => Some(begin_hlog(f, &mut serializer)?),
        None => None,
    };
    let mut merge = Merge::new(cfg.threads, start);
    for r in rx.iter() {
        if let Some(f) = acked.as_mut() {
            f.write_all(&r.acked).map_err(|e| format!("acked.txt: {e}"))?;
        }
        merge.add(r);
        while let Some((i, p, secs)) = merge.pop_complete() {
            let row = merge.row(i, &p, secs);
            if !cfg.quiet {
                live_line(&row, secs);
            }
            if let Some(log) = hlog.as_mut() {
                write_interval(log, i, secs, &p.hists)?;
            }
            merge.intervals.push(row);
        }
    }
    drop(hlog);
    if let Some(mut f) = hlog_file {
        f.flush().map_err(|e| format!("latency.hlog: {e}"))?;
    }
    if let Some(mut f) = acked {
        f.flush().map_err(|e| format!("acked.txt: {e}"))?;
    }
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("worker failed: {e}")),
            Err(_) => return Err("worker panicked".into()),
        }
    }
    Ok(merge.finish())
}

type Workers = (Receiver<Report>, Vec<JoinHandle<io::Result<()>>>);

/// One engine thread per `cfg.threads`, the connections split evenly between them.
fn spawn_workers(cfg: &Config, corpus: &Arc<Corpus>, start: Instant) -> Result<Workers, String> {
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
    Ok((rx, handles))
}

fn begin_hlog<'a, 'b>(
    f: &'a mut BufWriter<File>,
    serializer: &'b mut V2DeflateSerializer,
) -> Result<Hlog<'a, 'b>, String> {
    let start_wall = SystemTime::now();
    IntervalLogWriterBuilder::new()
        .add_comment("ringmx-loadgen interval log: corrected latency per phase, tag = phase")
        .add_comment("values in microseconds; max column in milliseconds")
        .with_start_time(start_wall)
        .with_base_time(start_wall)
        .with_max_value_divisor(1000.0)
        .begin_log_with(f, serializer)
        .map_err(|e| format!("latency.hlog: {e}"))
}

/// One tagged histogram per phase that recorded anything in second `i`.
fn write_interval(log: &mut Hlog<'_, '_>, i: u64, secs: f64, hists: &PhaseHists) -> Result<(), String> {
    for ph in PHASES {
        let h = &hists.0[ph as usize];
        if !h.is_empty() {
            log.write_histogram(
                h,
                Duration::from_secs(i),
                Duration::from_secs_f64(secs),
                Tag::new(ph.name()),
            )
            .map_err(|e| format!("latency.hlog: {e}"))?;
        }
    }
    Ok(())
}

fn live_line(row: &IntervalRow, secs: f64) {
    eprintln!(
        "[{:>6.1}s] {:>9.0} sessions/s {:>9.0} msgs/s  p99 session {:>9.3} ms  errors {}",
        row.t,
        row.sessions as f64 / secs,
        row.messages as f64 / secs,
        row.p99_session_us as f64 / 1000.0,
        row.errors
    );
}

/// Per-interval merge state until every worker has reported that second.
struct Pending {
    hists: PhaseHists,
    counters: Counters,
}

/// The run's totals so far and the seconds not yet reported by every worker.
struct Merge {
    threads: usize,
    start: Instant,
    corrected: PhaseHists,
    uncorrected: PhaseHists,
    counters: Counters,
    caps: Option<Caps>,
    backlog: u64,
    /// Latest interval each worker reported, and whether it has finished.
    last: Vec<Option<u64>>,
    done: Vec<bool>,
    pending: BTreeMap<u64, Pending>,
    intervals: Vec<IntervalRow>,
    /// The latest end of the workers finished so far ([`engine::Done::end`]).
    end: Instant,
}

impl Merge {
    fn new(threads: usize, start: Instant) -> Merge {
        Merge {
            threads,
            start,
            corrected: PhaseHists::new(),
            uncorrected: PhaseHists::new(),
            counters: Counters::default(),
            caps: None,
            backlog: 0,
            last: vec![None; threads],
            done: vec![false; threads],
            pending: BTreeMap::new(),
            intervals: vec![],
            end: start,
        }
    }

    fn add(&mut self, r: Report) {
        self.corrected.add(&r.corrected);
        self.uncorrected
            .add(r.uncorrected.as_ref().unwrap_or(&r.corrected));
        self.counters.add(&r.counters);
        self.caps = self.caps.or(r.caps);
        let p = self.pending.entry(r.interval).or_insert_with(|| Pending {
            hists: PhaseHists::new(),
            counters: Counters::default(),
        });
        p.hists.add(&r.corrected);
        p.counters.add(&r.counters);
        self.last[r.worker] = Some(r.interval);
        if let Some(d) = r.done {
            self.done[r.worker] = true;
            self.backlog += d.backlog;
            self.end = self.end.max(d.end);
        }
    }

    /// The oldest second every worker has reported or finished before, with its length:
    /// a whole second, except the run's last, which ends when the last worker did.
    fn pop_complete(&mut self) -> Option<(u64, Pending, f64)> {
        let (&i, _) = self.pending.first_key_value()?;
        if !(0..self.threads).all(|w| self.done[w] || self.last[w].is_some_and(|l| l >= i)) {
            return None;
        }
        let (i, p) = self.pending.pop_first().expect("checked non-empty");
        let len = (self.end.max(self.start + Duration::from_secs(i)) - self.start).as_secs_f64() - i as f64;
        let secs = if self.done.iter().all(|d| *d) && self.pending.is_empty() {
            len.clamp(0.001, 1.0)
        } else {
            1.0
        };
        Some((i, p, secs))
    }

    fn row(&self, i: u64, p: &Pending, secs: f64) -> IntervalRow {
        IntervalRow {
            t: i as f64 + secs,
            sessions: p.counters.total().ok,
            messages: p.counters.messages,
            errors: p.counters.errors(),
            p99_session_us: self.corrected.0[Phase::Session as usize].value_at_quantile(0.99),
        }
    }

    fn finish(self) -> Collected {
        Collected {
            corrected: self.corrected,
            uncorrected: self.uncorrected,
            counters: self.counters,
            caps: self.caps,
            backlog: self.backlog,
            elapsed_s: (self.end - self.start).as_secs_f64(),
            intervals: self.intervals,
        }
    }
}
