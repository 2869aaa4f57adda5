//! `ringmx spool export` and `ringmx spool check`: the operator's view of a spool in either format, read-only, safe beside a running server.

use super::log::record::Stop;
use super::log::{scan, LogSpool, LOG_DIR};
use super::{FilesQueue, Queue};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

/// Writes every committed message of `spool` (both formats, if both hold some) as
/// `out/<id>.eml` and `out/<id>.json`, exactly as the `files` format stores them; returns how
/// many. Changes nothing in the spool.
pub fn export(spool: &Path, out: &Path) -> io::Result<usize> {
    fs::create_dir_all(out)?;
    let mut n = 0;
    for queue in queues(spool)? {
        for q in queue.list()? {
            let id = q.meta.id.clone();
            let (q, mut body) = match queue.open(&id) {
                Ok(x) => x,
                // Done and removed since it was listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut eml = fs::File::create(out.join(format!("{id}.eml")))?;
            io::copy(&mut body, &mut eml)?;
            fs::write(out.join(format!("{id}.json")), q.json())?;
            n += 1;
        }
    }
    Ok(n)
}

/// The queues a spool directory holds: its log, if it has one, and its files.
fn queues(spool: &Path) -> io::Result<Vec<Box<dyn Queue>>> {
    if !spool.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a directory", spool.display()),
        ));
    }
    let mut out: Vec<Box<dyn Queue>> = Vec::new();
    if spool.join(LOG_DIR).is_dir() {
        out.push(Box::new(LogSpool::read_only(spool)?));
    }
    out.push(Box::new(FilesQueue::new(spool)));
    Ok(out)
}

/// What `spool check` found.
#[derive(Debug, Default)]
pub struct Checked {
    pub report: String,
    /// Segments or files that are damaged: a corrupt record, a torn tail, a message whose
    /// octets do not read back.
    pub problems: usize,
}

/// Verifies every record of every segment (CRC, framing, message structure) and every
/// message of the `files` format (envelope parses, octets read back), like `postsuper -s`
/// without repairing anything.
pub fn check(spool: &Path) -> io::Result<Checked> {
    let mut c = Checked::default();
    let log = spool.join(LOG_DIR);
    let mut names: Vec<String> = match fs::read_dir(&log) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".seg") || n.ends_with(".done"))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    let (mut segments, mut committed, mut unfinished) = (0, 0, 0);
    for name in &names {
        let done = name.ends_with(".done");
        let s = match scan::scan(&log.join(name), done, |_, _| {}) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let ok = s.clean_tail && (done || s.seq.is_some());
        if !done {
            segments += 1;
            let good = s.messages.iter().filter(|m| m.committed()).count();
            committed += good;
            unfinished += s.messages.len() - good;
            let _ = writeln!(
                c.report,
                "{name}: {} records, {good} committed, {} unfinished, {} of {} octets used{}",
                s.records,
                s.messages.len() - good,
                s.end,
                s.len,
                if ok {
                    String::new()
                } else {
                    format!(", {}", problem(&s))
                }
            );
        } else if !ok {
            let _ = writeln!(c.report, "{name}: {}", problem(&s));
        }
        if !ok {
            c.problems += 1;
        }
    }
    if segments > 0 {
        let _ = writeln!(
            c.report,
            "log: {segments} segments, {committed} committed messages, {unfinished} unfinished (in progress or never acknowledged)"
        );
    }
    let files = FilesQueue::new(spool);
    let mut stored = 0;
    for entry in fs::read_dir(spool)? {
        let name = entry?.file_name().into_string().unwrap_or_default();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        match files.open(id) {
            Ok((q, mut body)) => {
                let octets = io::copy(&mut body, &mut io::sink())?;
                if octets < q.size {
                    c.problems += 1;
                    let _ = writeln!(
                        c.report,
                        "{id}: .eml has {octets} octets, fewer than its size {}",
                        q.size
                    );
                } else {
                    stored += 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                c.problems += 1;
                let _ = writeln!(c.report, "{id}: {e}");
            }
        }
    }
    if stored > 0 || segments == 0 {
        let _ = writeln!(c.report, "files: {stored} committed messages");
    }
    let _ = writeln!(
        c.report,
        "{}",
        if c.problems == 0 {
            "ok".to_string()
        } else {
            format!("{} damaged", c.problems)
        }
    );
    Ok(c)
}

/// What is wrong where a scan stopped short of its file's end.
fn problem(s: &scan::Scanned) -> String {
    match s.stop {
        Stop::Unknown(kind) => format!(
            "a record of kind {kind} at octet {}, unknown to this build (written by a newer ringmx?)",
            s.end
        ),
        stop => format!("DAMAGED at octet {} ({stop:?})", s.end),
    }
}
