//! The log spool on real files written by the real committer: the helpers its tests share (a scratch directory, messages planned and submitted as sessions would, reading back); the tests are by topic in recovery.rs, segments.rs and extents.rs.

use super::{record, scan, LogSpool, LOG_DIR};
use crate::spool::format::received_header;
use crate::spool::{tool, Backing, Job, MessageMeta, Queue, Spool};
use crate::wake::Wake;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod extents;
mod recovery;
mod segments;

/// The envelope of a one-recipient message `id`, for the tests that write records themselves.
fn meta(id: &str) -> MessageMeta {
    MessageMeta {
        id: id.into(),
        helo: b"client.example".to_vec(),
        esmtp: true,
        smtputf8: false,
        client: "192.0.2.7:40000".parse().unwrap(),
        mail_from: b"sender@client.example".to_vec(),
        mail_params: Vec::new(),
        recipients: vec![b"r0@mx.test".to_vec()],
        received: SystemTime::now(),
        tls: None,
    }
}

const HOST: &str = "mx.test";

/// The smallest segment the configuration allows, so a few messages fill several.
const SEGMENT: u64 = 1 << 16;

/// How long the committer may take to answer before the test counts it as hung.
const LIMIT: Duration = Duration::from_secs(30);

/// The committer wakes its worker after each batch; these tests wait on its results instead.
struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

/// A spool directory of one test, removed when dropped (also when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringmx-log-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn log(&self) -> PathBuf {
        self.0.join(LOG_DIR)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Ended: the committer must acknowledge it.
    Commit,
    /// Given up by its session halfway.
    Abort,
    /// Still streaming when the committer stops.
    Unfinished,
}

/// One message as a session would hand it to the committer.
#[derive(Debug, Clone)]
struct Plan {
    recipients: usize,
    chunks: Vec<Vec<u8>>,
    fate: Fate,
}

/// What the committer was given and what it acknowledged.
struct Written {
    /// Every message's id, in the order of the plans.
    ids: Vec<String>,
    /// Acknowledged (`ok`): the octets `Queue::open` must give (trace header, then body) and
    /// the body's size.
    acked: BTreeMap<String, (Vec<u8>, u64)>,
}

/// `len` octets that differ from chunk to chunk, so a misplaced record reads back wrong.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn start(log: &Arc<LogSpool>) -> Spool {
    Spool::start(
        0,
        Backing::Log(log.clone()),
        HOST.into(),
        1 << 20,
        Arc::new(NoWake),
        None,
    )
    .unwrap()
}

/// Hands `plans` to the committer of `spool`, the jobs of different messages interleaved as
/// `picks` choose (the rest in plan order), and waits for the result of every ended one.
fn submit(spool: &mut Spool, plans: &[Plan], picks: &[usize]) -> Written {
    let mut written = Written {
        ids: Vec::new(),
        acked: BTreeMap::new(),
    };
    let mut pending: Vec<VecDeque<Job>> = Vec::new();
    for (key, plan) in (0u64..).zip(plans) {
        let id = spool.ids.next_id();
        let meta = MessageMeta {
            id: id.clone(),
            helo: b"client.example".to_vec(),
            esmtp: true,
            smtputf8: false,
            client: "192.0.2.7:40000".parse().unwrap(),
            mail_from: b"sender@client.example".to_vec(),
            mail_params: Vec::new(),
            recipients: (0..plan.recipients)
                .map(|r| format!("r{r}@mx.test").into_bytes())
                .collect(),
            received: SystemTime::now(),
            tls: None,
        };
        let body = plan.chunks.concat();
        if plan.fate == Fate::Commit {
            let stored = [received_header(&meta, HOST), body.clone()].concat();
            written.acked.insert(id.clone(), (stored, body.len() as u64));
        }
        written.ids.push(id);
        let mut jobs = VecDeque::from([Job::Start {
            key,
            meta: Box::new(meta),
        }]);
        jobs.extend(plan.chunks.iter().map(|c| Job::Chunk { key, data: c.clone() }));
        match plan.fate {
            Fate::Commit => jobs.push_back(Job::End {
                key,
                at: std::time::Instant::now(),
            }),
            Fate::Abort => jobs.push_back(Job::Abort { key }),
            Fate::Unfinished => {}
        }
        pending.push(jobs);
    }
    for &pick in picks {
        let open: Vec<usize> = (0..pending.len()).filter(|&i| !pending[i].is_empty()).collect();
        if open.is_empty() {
            break;
        }
        let i = open[pick % open.len()];
        spool.submit(pending[i].pop_front().expect("not empty"));
    }
    for job in pending.into_iter().flatten() {
        spool.submit(job);
    }
    for _ in 0..written.acked.len() {
        let done = spool.results.recv_timeout(LIMIT).expect("a commit result");
        assert!(done.ok, "the committer failed {}", done.id);
        assert_eq!(done.id, written.ids[done.key as usize]);
    }
    written
}

/// The stored octets of `id`, read back through the queue interface.
fn read(queue: &dyn Queue, id: &str) -> Vec<u8> {
    let (_, mut body) = queue.open(id).unwrap();
    let mut out = Vec::new();
    body.read_to_end(&mut out).unwrap();
    out
}

/// The segment files of a log directory, in order.
fn segments(log: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    out.sort();
    out
}

/// Octets of the segment files on disk.
fn disk(log: &Path) -> u64 {
    segments(log).iter().map(|p| fs::metadata(p).unwrap().len()).sum()
}

/// Where each committed message of a log directory ends: its segment (an index into
/// [`segments`]) and the offset just past its end record; and each segment's used octets.
fn ends(log: &Path) -> (BTreeMap<String, (usize, u64)>, Vec<u64>) {
    let mut ends = BTreeMap::new();
    let mut used = Vec::new();
    for (i, path) in segments(log).iter().enumerate() {
        let s = scan::scan(path, false, |_, _| {}).unwrap();
        // The scan of the octets in memory (the `spool_scan` fuzz target's) is the file's.
        let in_memory = scan::scan_bytes(&fs::read(path).unwrap(), false, |_, _| {});
        assert_eq!(format!("{in_memory:?}"), format!("{s:?}"));
        for m in s.messages.iter().filter(|m| m.committed()) {
            ends.insert(m.meta.as_ref().unwrap().id.clone(), (i, m.end));
        }
        used.push(s.end);
    }
    (ends, used)
}

/// The listed messages and their done state.
fn listed(queue: &dyn Queue) -> BTreeMap<String, Vec<bool>> {
    queue
        .list()
        .unwrap()
        .into_iter()
        .map(|q| (q.meta.id, q.done))
        .collect()
}

fn plan() -> impl Strategy<Value = Plan> {
    let fate = prop_oneof![6 => Just(Fate::Commit), 1 => Just(Fate::Abort), 1 => Just(Fate::Unfinished)];
    (
        1usize..4,
        proptest::collection::vec(1usize..12_000, 0..4),
        fate,
        any::<u64>(),
    )
        .prop_map(|(recipients, sizes, fate, seed)| Plan {
            recipients,
            chunks: (0u64..)
                .zip(sizes)
                .map(|(i, n)| bytes(seed ^ i << 32, n))
                .collect(),
            fate,
        })
}
