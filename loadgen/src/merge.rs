//! `ringmx-loadgen merge OUT DIR…`: one report from the `--out` directories of runs made on several load machines.
//!
//! Counts add up; latency percentiles come from the sum of the runs' histograms (read from
//! each `latency.hlog`, so the merge is exact, not an average of percentiles); rates divide by
//! the union of the runs' wall-clock spans; the per-second intervals are merged by absolute
//! time (each log's StartTime/BaseTime is seconds since the epoch), so clocks must be NTP
//! synced: skew moves a run's seconds against the others', nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::chart::{self, Second};
use crate::report::{self, Latency};
use crate::stats::new_hist;
use crate::vocab::PHASES;

pub const USAGE: &str = "usage: ringmx-loadgen merge OUT DIR...   (each DIR an --out directory with summary.json and latency.hlog)";

/// Top-level keys recomputed from the merged data rather than combined value by value.
const RECOMPUTED: [&str; 9] = [
    "schema",
    "elapsed_s",
    "started_at",
    "throughput",
    "latency_us",
    "latency_uncorrected_us",
    "intervals",
    "merged_from",
    "settings_differ",
];
/// Settings that add up over machines: the fleet's connections, threads, offered rate, session limit.
const TOTALS: [&str; 4] = ["connections", "threads", "rate", "sessions_limit"];
/// Settings each `merged_from` entry repeats, so a reader sees what every machine ran.
const SHOWN: [&str; 8] = [
    "target",
    "mode",
    "connections",
    "threads",
    "rate",
    "duration_s",
    "sessions_limit",
    "mix",
];
/// A year in seconds: the interval log's rule for telling offsets from epoch timestamps.
const YEAR_S: f64 = 365.25 * 86400.0;

/// One input run: its summary, when it started (epoch seconds) and its intervals.
struct Run {
    dir: PathBuf,
    summary: Map<String, Value>,
    start: f64,
    intervals: Vec<Interval>,
}

/// One tagged histogram of an interval log, at absolute (epoch) time.
struct Interval {
    tag: String,
    start: f64,
    secs: f64,
    hist: Histogram<u64>,
}

/// One second's histogram of one tag, and the longest interval that went into it (s).
type Bin = (Histogram<u64>, f64);

/// The merged latency: all values per tag, and per second of the merged timeline.
struct Hists {
    total: BTreeMap<String, Histogram<u64>>,
    /// (second since the merged start, tag) → histogram, and the longest interval length.
    bins: BTreeMap<(u64, String), Bin>,
}

pub fn main(args: &[String]) -> Result<(), String> {
    let [out, dirs @ ..] = args else {
        return Err(USAGE.into());
    };
    if dirs.is_empty() || out.starts_with('-') {
        return Err(USAGE.into());
    }
    let out = Path::new(out);
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let out_real = out
        .canonicalize()
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let mut runs = vec![];
    for d in dirs {
        let dir = Path::new(d);
        if dir.canonicalize().is_ok_and(|p| p == out_real) {
            return Err(format!("OUT {} is one of the runs merged", out.display()));
        }
        runs.push(read_run(dir)?);
    }
    let merged = merge(&runs)?;
    for d in merged.summary["settings_differ"].as_array().into_iter().flatten() {
        eprintln!(
            "ringmx-loadgen merge: runs differ in {} (see merged_from)",
            d.as_str().unwrap_or_default()
        );
    }
    merged.write(out)
}

/// What `merge` writes.
struct Merged {
    summary: Value,
    hists: Hists,
    base: f64,
}

fn read_run(dir: &Path) -> Result<Run, String> {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let Value::Object(summary) =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    else {
        return Err(format!("{}: not a JSON object", path.display()));
    };
    let path = dir.join("latency.hlog");
    let log = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (start, intervals) = read_hlog(&log).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Run {
        dir: dir.to_path_buf(),
        summary,
        start,
        intervals,
    })
}

/// An interval log's start (StartTime, else BaseTime, else its first interval) and its
/// intervals at epoch time: offsets from BaseTime when there is one; without, the
/// HdrHistogram rule: offsets from StartTime if more than a year below it, else absolute.
fn read_hlog(log: &[u8]) -> Result<(f64, Vec<Interval>), String> {
    let (mut start, mut base) = (None, None);
    let mut intervals = vec![];
    for e in IntervalLogIterator::new(log) {
        match e.map_err(|e| format!("unreadable interval log: {e:?}"))? {
            LogEntry::StartTime(t) => start = Some(t.as_secs_f64()),
            LogEntry::BaseTime(t) => base = Some(t.as_secs_f64()),
            LogEntry::Interval(i) => {
                let ts = i.start_timestamp().as_secs_f64();
                let offset = base.or(start.filter(|s| ts < s - YEAR_S)).unwrap_or(0.0);
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(i.encoded_histogram())
                    .map_err(|e| format!("bad base64 at {ts}: {e}"))?;
                let hist: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut &bytes[..])
                    .map_err(|e| format!("bad histogram at {ts}: {e:?}"))?;
                intervals.push(Interval {
                    tag: i.tag().map_or("", |t| t.as_str()).to_string(),
                    start: offset + ts,
                    secs: i.duration().as_secs_f64(),
                    hist,
                });
            }
        }
    }
    let first = intervals.iter().map(|i| i.start).fold(f64::MAX, f64::min);
    let start = start
        .or(base)
        .unwrap_or(if intervals.is_empty() { 0.0 } else { first });
    Ok((start, intervals))
}

/// The merged summary and histograms of `runs` (at least one).
fn merge(runs: &[Run]) -> Result<Merged, String> {
    let schema = |r: &Run| r.summary.get("schema").cloned().unwrap_or(Value::Null);
    for r in runs {
        if schema(r) != schema(&runs[0]) {
            return Err(format!(
                "{} has summary schema {}, {} has {}: refusing to merge",
                r.dir.display(),
                schema(r),
                runs[0].dir.display(),
                schema(&runs[0])
            ));
        }
    }
    let base = runs.iter().map(|r| r.start).fold(f64::MAX, f64::min);
    let hists = merge_hists(runs, base)?;
    let mut differs = vec![];
    let mut s = Map::new();
    s.insert("schema".into(), schema(&runs[0]));
    for key in keys(runs.iter().map(|r| &r.summary)) {
        if RECOMPUTED.contains(&key.as_str()) {
            continue;
        }
        let vals: Vec<&Value> = runs.iter().filter_map(|r| r.summary.get(&key)).collect();
        let v = match key.as_str() {
            "mismatches" => mismatches(&vals),
            k if TOTALS.contains(&k) => {
                if vals.windows(2).any(|w| w[0] != w[1]) {
                    differs.push(key.clone());
                }
                total(&vals)
            }
            "mix" => same(&key, &vals, &mut differs),
            _ => combine(&key, &vals, &mut differs),
        };
        s.insert(key, v);
    }
    for r in runs {
        for d in r
            .summary
            .get("settings_differ")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(d) = d.as_str().filter(|d| !differs.iter().any(|x| x == d)) {
                differs.push(d.to_string());
            }
        }
    }
    let spans: Vec<(f64, f64)> = runs
        .iter()
        .map(|r| (r.start, r.start + num(r.summary.get("elapsed_s"))))
        .collect();
    // Epoch seconds as f64 hold about 0.2 µs, so the union computed from them can come out a
    // few hundred nanoseconds shorter than a run's own (exact) elapsed_s; a union is never
    // shorter than any of its runs.
    let longest = runs
        .iter()
        .map(|r| num(r.summary.get("elapsed_s")))
        .fold(0.0, f64::max);
    let elapsed = union_len(&spans).max(longest);
    s.insert("started_at".into(), json!(base));
    s.insert("elapsed_s".into(), json!(elapsed));
    s.insert("throughput".into(), throughput(&s, elapsed));
    let lat = latency(runs, &hists)?;
    let closed = runs
        .iter()
        .all(|r| r.summary.get("mode") == Some(&json!("closed")));
    // Uncorrected latency is not in the interval log: exact only where it equals the corrected.
    let uncorrected = if closed { lat.clone() } else { Value::Null };
    s.insert("latency_us".into(), lat);
    s.insert("latency_uncorrected_us".into(), uncorrected);
    s.insert("intervals".into(), intervals(runs, base, &hists));
    s.insert("merged_from".into(), merged_from(runs, &differs));
    s.insert("settings_differ".into(), json!(differs));
    Ok(Merged {
        summary: Value::Object(s),
        hists,
        base,
    })
}

/// Every key of the `maps`, in order of first appearance.
fn keys<'a>(maps: impl Iterator<Item = &'a Map<String, Value>>) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for m in maps {
        for k in m.keys() {
            if !out.contains(k) {
                out.push(k.clone());
            }
        }
    }
    out
}

/// Integers add up (counters, at any depth, whatever their name); objects merge key by key;
/// any other value (a setting) is kept when every run has it alike, else it is null and its
/// path goes into `differs`. Runs lacking the key or holding null are left out.
fn combine(path: &str, vals: &[&Value], differs: &mut Vec<String>) -> Value {
    let vals: Vec<&Value> = vals.iter().copied().filter(|v| !v.is_null()).collect();
    if vals.is_empty() {
        return Value::Null;
    }
    if vals.iter().all(|v| v.is_u64()) {
        return json!(vals.iter().filter_map(|v| v.as_u64()).sum::<u64>());
    }
    if vals.iter().all(|v| v.is_object()) {
        let objs: Vec<&Map<String, Value>> = vals.iter().filter_map(|v| v.as_object()).collect();
        let mut m = Map::new();
        for k in keys(objs.iter().copied()) {
            let sub: Vec<&Value> = objs.iter().filter_map(|o| o.get(&k)).collect();
            m.insert(k.clone(), combine(&format!("{path}.{k}"), &sub, differs));
        }
        return Value::Object(m);
    }
    same(path, &vals, differs)
}

fn same(path: &str, vals: &[&Value], differs: &mut Vec<String>) -> Value {
    if vals.windows(2).all(|w| w[0] == w[1]) {
        vals.first().map_or(Value::Null, |v| (*v).clone())
    } else {
        differs.push(path.to_string());
        Value::Null
    }
}

/// A setting summed over machines; null if any run has none (e.g. `rate` in closed loop).
fn total(vals: &[&Value]) -> Value {
    if vals.iter().any(|v| v.is_null()) {
        return Value::Null;
    }
    if vals.iter().all(|v| v.is_u64()) {
        return json!(vals.iter().filter_map(|v| v.as_u64()).sum::<u64>());
    }
    json!(vals.iter().filter_map(|v| v.as_f64()).sum::<f64>())
}

/// `[{class, step, count}]` lists: counts of the same class and step add up.
fn mismatches(vals: &[&Value]) -> Value {
    let mut rows: Vec<Value> = vec![];
    for row in vals.iter().filter_map(|v| v.as_array()).flatten() {
        let key = |r: &Value| (r["class"].clone(), r["step"].clone());
        match rows.iter_mut().find(|r| key(r) == key(row)) {
            Some(r) => {
                r["count"] = json!(r["count"].as_u64().unwrap_or(0) + row["count"].as_u64().unwrap_or(0))
            }
            None => rows.push(row.clone()),
        }
    }
    Value::Array(rows)
}

fn num(v: Option<&Value>) -> f64 {
    v.and_then(Value::as_f64).unwrap_or(0.0)
}

/// Total length of the union of `[start, end)` spans.
fn union_len(spans: &[(f64, f64)]) -> f64 {
    let mut s = spans.to_vec();
    s.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut total, mut cur) = (0.0, None::<(f64, f64)>);
    for (a, b) in s {
        cur = match cur {
            Some((c0, c1)) if a <= c1 => Some((c0, c1.max(b))),
            Some((c0, c1)) => {
                total += c1 - c0;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    total + cur.map_or(0.0, |(a, b)| b - a)
}

fn throughput(s: &Map<String, Value>, elapsed: f64) -> Value {
    let el = elapsed.max(1e-9);
    let n = |path: &str| num(at(s, path));
    json!({
        "sessions_per_s": n("sessions.completed") / el,
        "messages_per_s": n("messages") / el,
        "commands_per_s": n("commands") / el,
        "bytes_per_s": (n("bytes_sent") + n("bytes_received")) / el,
    })
}

/// The value at a dotted `path` of `s`.
fn at<'a>(s: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut keys = path.split('.');
    let mut v = s.get(keys.next()?)?;
    for k in keys {
        v = v.get(k)?;
    }
    Some(v)
}

/// Sums every run's intervals per tag, and per second of the timeline that starts at
/// `base`: an interval goes to the second its start is nearest to.
fn merge_hists(runs: &[Run], base: f64) -> Result<Hists, String> {
    let mut h = Hists {
        total: BTreeMap::new(),
        bins: BTreeMap::new(),
    };
    let add = |a: &mut Histogram<u64>, b: &Histogram<u64>| {
        a.add(b).map_err(|e| format!("histograms do not add: {e:?}"))
    };
    for r in runs {
        for i in &r.intervals {
            add(h.total.entry(i.tag.clone()).or_insert_with(new_hist), &i.hist)?;
            let bin = (i.start - base).round().max(0.0) as u64;
            let e = h
                .bins
                .entry((bin, i.tag.clone()))
                .or_insert_with(|| (new_hist(), 0.0));
            add(&mut e.0, &i.hist)?;
            e.1 = f64::max(e.1, i.secs);
        }
    }
    Ok(h)
}

/// `latency_us` from the merged histograms; each run's log must hold every value its
/// summary counts, or the percentiles would not be the runs'.
fn latency(runs: &[Run], h: &Hists) -> Result<Value, String> {
    let empty = new_hist();
    let mut out = Map::new();
    let names = keys(
        runs.iter()
            .filter_map(|r| r.summary.get("latency_us")?.as_object()),
    );
    // Tags of the logs that no summary reports (none today) stay in the merged log only.
    for name in tags(names.iter()) {
        let want: u64 = runs
            .iter()
            .map(|r| {
                r.summary
                    .get("latency_us")
                    .and_then(|l| l[&name]["count"].as_u64())
                    .unwrap_or(0)
            })
            .sum();
        let hist = h.total.get(&name).unwrap_or(&empty);
        if hist.len() != want {
            return Err(format!(
                "phase {name}: the interval logs hold {} values, the summaries count {want}: \
                 a latency.hlog is incomplete (run cut short?) or from another run",
                hist.len()
            ));
        }
        out.insert(
            name,
            serde_json::to_value(Latency::of(hist)).map_err(|e| e.to_string())?,
        );
    }
    Ok(Value::Object(out))
}

/// Phase names in the order of [`PHASES`], then any other (newer) tag by name.
fn tags<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = vec![];
    for n in names {
        if !v.contains(n) {
            v.push(n.clone());
        }
    }
    let rank = |n: &String| PHASES.iter().position(|p| p.name() == n).unwrap_or(PHASES.len());
    v.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    v
}

/// summary.json `intervals` on the merged timeline: each run's rows moved to the second
/// (since `base`) their start is nearest to; integers add up, `p99_session_us` is the
/// cumulative p99 of the merged session histograms up to that second.
fn intervals(runs: &[Run], base: f64, h: &Hists) -> Value {
    let mut bins: BTreeMap<u64, (f64, Vec<&Value>)> = BTreeMap::new();
    for r in runs {
        for row in r
            .summary
            .get("intervals")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let t = num(row.get("t"));
            let i = ((t - 1e-9).ceil() - 1.0).max(0.0);
            let bin = (r.start + i - base).round().max(0.0) as u64;
            let e = bins.entry(bin).or_insert((0.0, vec![]));
            e.0 = e.0.max(t - i);
            e.1.push(row);
        }
    }
    let mut session = new_hist();
    let mut rows = vec![];
    for (bin, (secs, vals)) in bins {
        for ((b, tag), (hist, _)) in h.bins.range((bin, String::new())..(bin + 1, String::new())) {
            if *b == bin && tag == "session" {
                let _ = session.add(hist);
            }
        }
        let mut differs = vec![];
        let mut row = combine("intervals", &vals, &mut differs);
        row["t"] = json!(bin as f64 + secs);
        row["p99_session_us"] = json!(session.value_at_quantile(0.99));
        rows.push(row);
    }
    Value::Array(rows)
}

/// One entry per run (or the entries of an already merged one): where it came from, when
/// it ran, and its settings, plus any top-level setting that differs between runs.
fn merged_from(runs: &[Run], differs: &[String]) -> Value {
    let mut out = vec![];
    for r in runs {
        if let Some(inner) = r.summary.get("merged_from").and_then(Value::as_array) {
            out.extend(inner.iter().cloned());
            continue;
        }
        let mut m = Map::new();
        m.insert("dir".into(), json!(r.dir.display().to_string()));
        m.insert("started_at".into(), json!(r.start));
        m.insert(
            "elapsed_s".into(),
            r.summary.get("elapsed_s").cloned().unwrap_or(Value::Null),
        );
        let top = differs.iter().map(|d| d.split('.').next().unwrap_or(d));
        for k in SHOWN.iter().copied().chain(top) {
            m.insert(k.into(), r.summary.get(k).cloned().unwrap_or(Value::Null));
        }
        out.push(Value::Object(m));
    }
    Value::Array(out)
}

impl Merged {
    /// OUT/summary.json, latency.hlog, one PHASE.hgrm per phase, report.svg.
    fn write(&self, out: &Path) -> Result<(), String> {
        let w = |name: &str, data: &[u8]| {
            let p = out.join(name);
            std::fs::write(&p, data).map_err(|e| format!("writing {}: {e}", p.display()))
        };
        let json = serde_json::to_string_pretty(&self.summary).map_err(|e| e.to_string())?;
        w("summary.json", json.as_bytes())?;
        w("latency.hlog", &self.hlog()?)?;
        let empty = new_hist();
        let names: Vec<String> = self.summary["latency_us"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let names = tags(names.iter());
        for n in &names {
            w(
                &format!("{n}.hgrm"),
                report::hgrm(self.hists.total.get(n).unwrap_or(&empty)).as_bytes(),
            )?;
        }
        let phases: Vec<(&str, &Histogram<u64>)> = names
            .iter()
            .map(|n| (n.as_str(), self.hists.total.get(n).unwrap_or(&empty)))
            .collect();
        let seconds: Vec<Second> = self.summary["intervals"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| Second {
                t: num(r.get("t")),
                sessions: r["sessions"].as_u64().unwrap_or(0),
                messages: r["messages"].as_u64().unwrap_or(0),
                errors: r["errors"].as_u64().unwrap_or(0),
            })
            .collect();
        let n = self.summary["merged_from"].as_array().map_or(0, Vec::len);
        let target = self.summary["target"].as_str().unwrap_or("several targets");
        let mode = self.summary["mode"].as_str().unwrap_or("closed and open");
        let title = format!("{target}, {n} runs merged");
        w(
            "report.svg",
            chart::report_svg(&title, mode, &phases, &seconds).as_bytes(),
        )
    }

    /// The merged interval log: StartTime = BaseTime = the earliest run's start, one
    /// histogram per second and tag.
    fn hlog(&self) -> Result<Vec<u8>, String> {
        let mut buf = vec![];
        let mut ser = V2DeflateSerializer::new();
        let start = UNIX_EPOCH + Duration::from_secs_f64(self.base.max(0.0));
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment("ringmx-loadgen merge: corrected latency per phase of several runs, tag = phase")
            .add_comment("values in microseconds; max column in milliseconds")
            .with_start_time(start)
            .with_base_time(start)
            .with_max_value_divisor(1000.0)
            .begin_log_with(&mut buf, &mut ser)
            .map_err(|e| format!("latency.hlog: {e}"))?;
        let order = tags(self.hists.total.keys());
        let mut entries: Vec<(&(u64, String), &Bin)> = self.hists.bins.iter().collect();
        let rank = |t: &String| order.iter().position(|o| o == t);
        entries.sort_by_key(|(k, _)| (k.0, rank(&k.1)));
        for ((bin, tag), (hist, secs)) in entries {
            log.write_histogram(
                hist,
                Duration::from_secs(*bin),
                Duration::from_secs_f64(*secs),
                Tag::new(tag),
            )
            .map_err(|e| format!("latency.hlog: {e}"))?;
        }
        drop(log);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interval log starting at `start` (epoch s): one session interval per `secs` entry.
    fn hlog(start: f64, secs: &[Vec<u64>]) -> Vec<u8> {
        let mut buf = vec![];
        let mut ser = V2DeflateSerializer::new();
        let t = UNIX_EPOCH + Duration::from_secs_f64(start);
        let mut log = IntervalLogWriterBuilder::new()
            .with_start_time(t)
            .with_base_time(t)
            .begin_log_with(&mut buf, &mut ser)
            .unwrap();
        for (i, values) in secs.iter().enumerate() {
            let mut h = new_hist();
            for v in values {
                h.record(*v).unwrap();
            }
            log.write_histogram(
                &h,
                Duration::from_secs(i as u64),
                Duration::from_secs(1),
                Tag::new("session"),
            )
            .unwrap();
        }
        drop(log);
        buf
    }

    fn run(dir: &str, start: f64, secs: &[Vec<u64>], extra: Value) -> Run {
        let n: u64 = secs.iter().map(|s| s.len() as u64).sum();
        let rows: Vec<Value> = secs
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"t": i as f64 + 1.0, "sessions": s.len(), "messages": s.len(), "errors": 0, "p99_session_us": 0}))
            .collect();
        let mut summary = json!({
            "schema": 1, "target": "127.0.0.1:25", "mode": "closed", "connections": 10, "threads": 1,
            "rate": null, "elapsed_s": secs.len() as f64, "mix": {"valid": 90, "typo": 3},
            "sessions": {"started": n, "ok": n, "completed": n, "aborted": 0},
            "messages": n, "commands": 5 * n,
            "classes": {"valid": {"sessions": n, "ok": n, "pregreet_rejected": 2, "variants": {"0": 1}}},
            "tls": {"mode": "starttls", "handshakes": n},
            "mismatches": [{"class": "typo", "step": "typo-mail", "count": 1}],
            "latency_us": {"session": {"count": n}},
            "intervals": rows,
        });
        for (k, v) in extra.as_object().unwrap() {
            summary[k] = v.clone();
        }
        let (start, intervals) = read_hlog(&hlog(start, secs)).unwrap();
        Run {
            dir: PathBuf::from(dir),
            summary: summary.as_object().unwrap().clone(),
            start,
            intervals,
        }
    }

    #[test]
    fn merged_percentiles_are_those_of_all_values_and_counts_add() {
        let a_vals: Vec<Vec<u64>> = vec![(1..=1000).collect(), (5000..=5999).collect()];
        let b_vals: Vec<Vec<u64>> = vec![(20_000..=20_099).collect(), (100..=300).collect(), vec![900_000]];
        let a = run("a", 1_700_000_000.25, &a_vals, json!({}));
        let b = run(
            "b",
            1_700_000_000.5,
            &b_vals,
            json!({"connections": 30, "target": "127.0.0.2:25"}),
        );
        let m = merge(&[a, b]).unwrap();
        let s = &m.summary;
        let mut all = new_hist();
        for v in a_vals.iter().chain(&b_vals).flatten() {
            all.record(*v).unwrap();
        }
        let l = &s["latency_us"]["session"];
        assert_eq!(l["count"], json!(all.len()));
        for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            assert_eq!(l[k], json!(all.value_at_quantile(q)), "{k}");
        }
        assert_eq!(l["max"], json!(all.max()));
        let n = all.len();
        assert_eq!(s["sessions"]["ok"], json!(n));
        assert_eq!(s["messages"], json!(n));
        assert_eq!(s["commands"], json!(5 * n));
        // Fields this code does not know add up too.
        assert_eq!(s["classes"]["valid"]["pregreet_rejected"], json!(4));
        assert_eq!(s["classes"]["valid"]["variants"]["0"], json!(2));
        assert_eq!(s["tls"]["handshakes"], json!(n));
        assert_eq!(s["tls"]["mode"], json!("starttls"));
        assert_eq!(
            s["mismatches"],
            json!([{"class": "typo", "step": "typo-mail", "count": 2}])
        );
        assert_eq!(s["mix"], json!({"valid": 90, "typo": 3}), "a setting, not summed");
        assert_eq!(s["connections"], json!(40), "the fleet's connections");
        assert_eq!(s["target"], Value::Null);
        assert_eq!(s["settings_differ"], json!(["connections", "target"]));
        assert_eq!(s["merged_from"][1]["target"], json!("127.0.0.2:25"));
        // Spans [0.25, 2.25) and [0.5, 3.5) since the epoch second: 3.25 s of wall clock.
        assert!(
            (s["elapsed_s"].as_f64().unwrap() - 3.25).abs() < 1e-6,
            "{}",
            s["elapsed_s"]
        );
        let rate = s["throughput"]["messages_per_s"].as_f64().unwrap();
        assert!((rate - n as f64 / 3.25).abs() < 1e-6);
        // Seconds by absolute time: a's first and b's first (0.25 s later) share second 0.
        let rows = s["intervals"].as_array().unwrap();
        let sessions: Vec<u64> = rows.iter().map(|r| r["sessions"].as_u64().unwrap()).collect();
        assert_eq!(sessions, [1100, 1201, 1]);
        assert_eq!(rows[2]["p99_session_us"], json!(all.value_at_quantile(0.99)));
    }

    #[test]
    fn refuses_other_schemas_and_incomplete_logs() {
        let one = vec![vec![10, 20]];
        let a = run("a", 1_700_000_000.0, &one, json!({}));
        let b = run("b", 1_700_000_000.0, &one, json!({"schema": 2}));
        let e = merge(&[a, b]).err().unwrap();
        assert!(e.contains("schema") && e.contains('b'), "{e}");
        let c = run(
            "c",
            1_700_000_000.0,
            &one,
            json!({"latency_us": {"session": {"count": 3}}}),
        );
        let e = merge(&[c]).err().unwrap();
        assert!(e.contains("incomplete"), "{e}");
    }

    #[test]
    fn interval_log_times_are_epoch_absolute() {
        let (start, iv) = read_hlog(&hlog(1_700_000_123.5, &[vec![1], vec![2]])).unwrap();
        assert_eq!(start, 1_700_000_123.5);
        assert_eq!(iv[1].start, 1_700_000_124.5);
        // Without BaseTime, small timestamps are offsets from StartTime, large ones absolute.
        let text = b"#[StartTime: 1700000000.000 (seconds since epoch)]\n";
        let (start, iv) = read_hlog(text).unwrap();
        assert_eq!((start, iv.len()), (1_700_000_000.0, 0));
    }

    #[test]
    fn union_of_spans() {
        assert_eq!(union_len(&[(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]), 4.0);
        assert_eq!(union_len(&[(1.0, 2.0)]), 1.0);
    }
}
