//! The log spool on real files written by the real committer: recovery after arbitrary truncation and bit flips never lists a message that was not acknowledged nor one that reads back wrong, and compaction (also cut short by a crash) keeps every live message exactly once with its done state.

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

/// A position in one of the segment files: the file and the octet are taken modulo what
/// there is; `used` keeps it before the segment's first unused octet.
#[derive(Debug, Clone)]
struct Spot {
    file: usize,
    at: u64,
    used: bool,
}

#[derive(Debug, Clone)]
struct Damage {
    cut: Option<Spot>,
    /// Bit flips (the bit of each octet), after the cut.
    flips: Vec<(Spot, u8)>,
}

fn damage() -> impl Strategy<Value = Damage> {
    let spot = || {
        (any::<usize>(), any::<u64>(), proptest::bool::weighted(0.8)).prop_map(|(file, at, used)| Spot {
            file,
            at,
            used,
        })
    };
    let flips = move |n| proptest::collection::vec((spot(), 0u8..8), n);
    prop_oneof![
        3 => spot().prop_map(|s| Damage { cut: Some(s), flips: Vec::new() }),
        3 => flips(1..4).prop_map(|flips| Damage { cut: None, flips }),
        2 => (spot(), flips(1..4)).prop_map(|(s, flips)| Damage { cut: Some(s), flips }),
    ]
}

/// Applies `damage` to the segments of `log`, whose used octets are `used`; returns where
/// each was cut (its length if it was not).
fn apply(log: &Path, used: &[u64], damage: &Damage) -> Vec<u64> {
    let files = segments(log);
    let mut lens: Vec<u64> = files.iter().map(|p| fs::metadata(p).unwrap().len()).collect();
    if files.is_empty() {
        return lens;
    }
    if let Some(s) = &damage.cut {
        let i = s.file % files.len();
        let room = if s.used { used[i] } else { lens[i] };
        lens[i] = s.at % (room + 1);
        fs::OpenOptions::new()
            .write(true)
            .open(&files[i])
            .unwrap()
            .set_len(lens[i])
            .unwrap();
    }
    for (s, bit) in &damage.flips {
        let i = s.file % files.len();
        let room = if s.used { used[i].min(lens[i]) } else { lens[i] };
        if room == 0 {
            continue;
        }
        let mut data = fs::read(&files[i]).unwrap();
        data[(s.at % room) as usize] ^= 1 << bit;
        fs::write(&files[i], data).unwrap();
    }
    lens
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever is cut off or flipped, recovery lists only acknowledged messages, each exactly
    /// as stored; with nothing changed inside the used part, it loses none that ended before
    /// the cut. `spool check` sees the damage before recovery and none after it.
    #[test]
    fn recovery_after_truncation_and_bit_flips_lists_only_acknowledged_messages_intact(
        plans in proptest::collection::vec(plan(), 1..10),
        picks in proptest::collection::vec(any::<usize>(), 0..64),
        damage in damage(),
    ) {
        let original = Scratch::new("written");
        let (log, _) = LogSpool::recover(&original.0, SEGMENT).unwrap();
        let mut spool = start(&log);
        let written = submit(&mut spool, &plans, &picks);
        // Writes what the unfinished messages have so far, without their end records.
        spool.finish();
        let acked: BTreeSet<String> = written.acked.keys().cloned().collect();
        prop_assert_eq!(listed(&*log).into_keys().collect::<BTreeSet<_>>(), acked);
        for (id, (stored, _)) in &written.acked {
            prop_assert!(read(&*log, id) == *stored, "{} does not read back as written", id);
        }
        drop(log);
        let (ends, used) = ends(&original.log());

        let copy = Scratch::new("damaged");
        fs::create_dir(copy.log()).unwrap();
        for entry in fs::read_dir(original.log()).unwrap() {
            let path = entry.unwrap().path();
            fs::copy(&path, copy.log().join(path.file_name().unwrap())).unwrap();
        }
        let cuts = apply(&copy.log(), &used, &damage);
        let changed = segments(&original.log()).iter().zip(segments(&copy.log())).zip(&used).any(
            |((before, after), &used)| {
                let (before, after) = (fs::read(before).unwrap(), fs::read(after).unwrap());
                let n = (used as usize).min(after.len());
                before[..n] != after[..n]
            },
        );
        if changed {
            let checked = tool::check(&copy.0).unwrap();
            prop_assert!(checked.problems > 0, "spool check missed a flip:\n{}", checked.report);
        }

        let (log, _) = LogSpool::recover(&copy.0, SEGMENT).unwrap();
        let found = listed(&*log);
        for (id, done) in &found {
            let Some((stored, size)) = written.acked.get(id) else {
                return Err(TestCaseError::fail(format!("{id} was never acknowledged but is listed")));
            };
            prop_assert!(read(&*log, id) == *stored, "{} reads back changed", id);
            let (q, _) = log.open(id).unwrap();
            prop_assert_eq!(q.size, *size);
            prop_assert_eq!(q.meta.recipients.len(), done.len());
            prop_assert!(done.iter().all(|d| !d));
        }
        if !changed {
            for (id, &(file, end)) in &ends {
                if end <= cuts[file] {
                    prop_assert!(found.contains_key(id), "{} ended before the cut but is lost", id);
                }
            }
        }
        let checked = tool::check(&copy.0).unwrap();
        prop_assert_eq!(checked.problems, 0, "damage left after recovery:\n{}", checked.report);
        drop(log);
        let (log, again) = LogSpool::recover(&copy.0, SEGMENT).unwrap();
        prop_assert_eq!(again.truncated, 0);
        prop_assert_eq!(listed(&*log), found);
    }
}

/// A spool of 200 committed messages over about a dozen segments, most of them removed again
/// (deleted, or each recipient marked done) so that the old segments are either wholly done
/// or pinned by one or two live messages, some of those with recipients done.
struct Pinned {
    dir: Scratch,
    log: Arc<LogSpool>,
    spool: Spool,
    written: Written,
    /// The live messages and their recipients' done state.
    want: BTreeMap<String, Vec<bool>>,
    /// The segment files before any message was removed, and the live messages in each.
    before: BTreeMap<PathBuf, Vec<String>>,
}

fn pinned(name: &str) -> Pinned {
    let dir = Scratch::new(name);
    let (log, _) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
    let mut spool = start(&log);
    let plans: Vec<Plan> = (0..200u64)
        .map(|i| Plan {
            recipients: 1 + i as usize % 3,
            // The live ones small, so two of them would still leave their segment mostly
            // free; the others large, so a segment holds fewer than 20 messages.
            chunks: vec![bytes(
                i,
                if i % 20 == 0 {
                    1500
                } else {
                    3000 + (i as usize * 337) % 7000
                },
            )],
            fate: Fate::Commit,
        })
        .collect();
    let written = submit(&mut spool, &plans, &[]);
    let (ends, _) = ends(&dir.log());
    let files = segments(&dir.log());
    assert!(files.len() >= 10, "only {} segments", files.len());
    let mut want = BTreeMap::new();
    for (i, (id, plan)) in written.ids.iter().zip(&plans).enumerate() {
        let r = plan.recipients;
        if i % 20 == 0 {
            let mut done = vec![false; r];
            if r >= 2 {
                log.mark_done(id, 0).unwrap();
                done[0] = true;
            }
            want.insert(id.clone(), done);
        } else if r >= 2 && i % 3 == 0 {
            for k in 0..r {
                log.mark_done(id, k).unwrap();
            }
        } else {
            log.delete(id).unwrap();
        }
    }
    let mut before: BTreeMap<PathBuf, Vec<String>> = files.into_iter().map(|f| (f, Vec::new())).collect();
    for id in want.keys() {
        let (file, _) = ends[id];
        before.values_mut().nth(file).unwrap().push(id.clone());
    }
    Pinned {
        dir,
        log,
        spool,
        written,
        want,
        before,
    }
}

/// The queue lists exactly `want`, each message byte-exact with its done state.
fn assert_holds(queue: &dyn Queue, written: &Written, want: &BTreeMap<String, Vec<bool>>) {
    assert_eq!(listed(queue), *want);
    for id in want.keys() {
        assert!(read(queue, id) == written.acked[id].0, "{id} reads back changed");
    }
}

#[test]
fn compaction_reclaims_done_segments_and_keeps_every_live_message_with_its_done_state() {
    let Pinned {
        dir,
        log,
        mut spool,
        written,
        mut want,
        before,
    } = pinned("compact");
    // The last segment is still the committer's: neither deleted nor compacted.
    let current = before.keys().next_back().unwrap().clone();
    let old: Vec<&PathBuf> = before.keys().filter(|f| **f != current).collect();
    let pinned: Vec<&PathBuf> = old.iter().copied().filter(|f| !before[*f].is_empty()).collect();
    assert!(pinned.len() >= 3 && pinned.len() < old.len(), "{before:?}");
    for f in &old {
        assert_eq!(
            f.exists(),
            pinned.contains(f),
            "{} with {:?}",
            f.display(),
            before[*f]
        );
    }

    assert_eq!(log.compact().unwrap(), pinned.len());
    let after = segments(&dir.log());
    assert!(old.iter().all(|f| !f.exists()), "{after:?}");
    // The committer's segment and the one copy of every pinned segment's live messages.
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.contains(&current));
    let live: u64 = want.keys().map(|id| written.acked[id].0.len() as u64).sum();
    let (total, _) = log.usage();
    // Each live message once, with its framing (a 20-octet header per record and the
    // envelope), and the committer's preallocated segment.
    let bound = 2 * live + SEGMENT;
    assert!(
        total <= bound,
        "usage {total} octets for {live} live (bound {bound})"
    );
    let on_disk = disk(&dir.log());
    assert!(
        on_disk <= bound,
        "{on_disk} octets on disk for {live} live (bound {bound})"
    );
    assert_eq!(total, on_disk, "usage() is not what the segments take on disk");
    assert_holds(&*log, &written, &want);

    // Marks after the compaction go beside the copies.
    let three = want.iter().find(|(_, d)| d.len() == 3).unwrap().0.clone();
    log.mark_done(&three, 1).unwrap();
    want.get_mut(&three).unwrap()[1] = true;
    let gone = want.keys().find(|id| **id != three).unwrap().clone();
    log.delete(&gone).unwrap();
    want.remove(&gone);
    assert_holds(&*log, &written, &want);

    spool.finish();
    drop(log);
    let (log, report) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
    assert_eq!((report.dropped, report.duplicates), (0, 0), "{report:?}");
    assert_holds(&*log, &written, &want);
}

#[test]
fn compaction_cut_short_by_a_crash_keeps_each_message_once_with_the_union_of_done_states() {
    for torn in [false, true] {
        let Pinned {
            dir,
            log,
            mut spool,
            written,
            mut want,
            before,
        } = pinned("compact-crash");
        spool.finish();
        let snapshot: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(dir.log())
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let data = fs::read(&p).unwrap();
                (p, data)
            })
            .collect();
        let compacted = log.compact().unwrap();
        assert!(compacted >= 3, "{compacted} segments compacted");
        // What the compaction deleted: the crash undoes that, and only that.
        let deleted: Vec<(PathBuf, Vec<u8>)> = snapshot.into_iter().filter(|(p, _)| !p.exists()).collect();
        let copy = segments(&dir.log())
            .into_iter()
            .find(|f| !before.contains_key(f))
            .expect("the compacted segment");
        let copied = scan::scan(&copy, false, |_, _| {}).unwrap();
        let moved = copied.messages.len();
        assert!(moved >= 3, "{moved} messages moved");
        if torn {
            // The crash came while the copies were written: half of them are on disk,
            // nothing beside them is done yet, and the originals are all there (below).
            let mut data = fs::read(&copy).unwrap();
            data.truncate(copied.end as usize / 2);
            data.resize(SEGMENT as usize, 0);
            fs::write(&copy, data).unwrap();
            let _ = fs::remove_file(copy.with_extension("done"));
        } else {
            // The crash came after the copies were made durable and the originals were
            // deleted, but their deletion never reached the disk; marks made since then are
            // beside the copies only.
            let three = want.iter().find(|(_, d)| d.len() == 3).unwrap().0.clone();
            log.mark_done(&three, 1).unwrap();
            want.get_mut(&three).unwrap()[1] = true;
            let gone = want.keys().find(|id| **id != three).unwrap().clone();
            log.delete(&gone).unwrap();
            want.remove(&gone);
        }
        drop(log);
        let mut restored = Vec::new();
        for (path, data) in &deleted {
            fs::write(path, data).unwrap();
            restored.push(path.clone());
        }
        assert!(!restored.is_empty());
        if torn {
            // Marks made while the copies were written went beside the originals only: one
            // message done for good, and one more recipient of another, each preferably one
            // whose copy is complete (the copies are written in no set order).
            let complete: Vec<String> = scan::scan(&copy, false, |_, _| {})
                .unwrap()
                .messages
                .into_iter()
                .filter(|m| m.committed())
                .map(|m| m.meta.unwrap().id)
                .collect();
            let gone = complete.first().expect("a complete copy").clone();
            let three = want
                .iter()
                .filter(|(id, d)| d.len() == 3 && **id != gone)
                .max_by_key(|(id, _)| complete.contains(id))
                .unwrap()
                .0
                .clone();
            for (id, rcpts) in [(&gone, &[][..]), (&three, &[1u32][..])] {
                let (original, _) = before.iter().find(|(_, ids)| ids.contains(id)).unwrap();
                let msg = scan::scan(original, false, |_, _| {})
                    .unwrap()
                    .messages
                    .into_iter()
                    .find(|m| m.meta.as_ref().is_some_and(|m| m.id == *id))
                    .unwrap()
                    .msg;
                let payload: Vec<u8> = rcpts.iter().flat_map(|r| r.to_le_bytes()).collect();
                let mut rec = Vec::new();
                record::append(&mut rec, record::Kind::Done, msg, &payload);
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(original.with_extension("done"))
                    .unwrap();
                f.write_all(&rec).unwrap();
            }
            want.remove(&gone);
            want.get_mut(&three).unwrap()[1] = true;
        }

        let (log, report) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
        assert_holds(&*log, &written, &want);
        if torn {
            assert!(report.duplicates < moved, "{report:?}");
        } else {
            assert_eq!(report.duplicates, moved, "{report:?}");
            // Every original has its copy: the restored segments hold nothing live.
            assert!(restored.iter().all(|p| !p.exists()), "{restored:?}");
        }
        drop(log);
        // The merged done state was written beside the copies before the originals went.
        let (log, again) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
        assert_eq!(again.duplicates, 0, "{again:?}");
        assert_holds(&*log, &written, &want);
    }
}

/// Descriptors this process holds on the segment files in `log`.
fn segment_descriptors(log: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(log) && target.extension().is_some_and(|e| e == "seg"))
        .count()
}

#[test]
fn slow_messages_pinning_many_full_segments_hold_a_bounded_number_of_descriptors() {
    use super::committer::OLDER_OPEN;
    const SLOW: u64 = 12;
    let dir = Scratch::new("slow");
    let (log, _) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
    let mut spool = start(&log);
    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut bodies: BTreeMap<u64, (String, Vec<u8>)> = BTreeMap::new();
    // A message that fills the segment it starts in, committed: each slow message starts
    // in a segment of its own, which it pins in the committer's older ones once full.
    let mut filler = |spool: &mut Spool, key: u64, len: usize| {
        let id = spool.ids.next_id();
        let m = meta(&id);
        let body = bytes(key, len);
        want.insert(id.clone(), [received_header(&m, HOST), body.clone()].concat());
        spool.submit(Job::Start {
            key,
            meta: Box::new(m),
        });
        spool.submit(Job::Chunk { key, data: body });
        spool.submit(Job::End {
            key,
            at: std::time::Instant::now(),
        });
        let done = spool.results.recv_timeout(LIMIT).expect("a commit result");
        assert!(done.ok && done.key == key, "{done:?}");
    };
    for i in 0..SLOW {
        let id = spool.ids.next_id();
        let m = meta(&id);
        let first = bytes(1000 + i, 100);
        let header = received_header(&m, HOST);
        spool.submit(Job::Start {
            key: i,
            meta: Box::new(m),
        });
        spool.submit(Job::Chunk {
            key: i,
            data: first.clone(),
        });
        bodies.insert(i, (id, [header, first].concat()));
        filler(&mut spool, 100 + i, SEGMENT as usize + 1000);
    }
    // Every slow message writes again, each into its own full segment, then commits.
    for round in 0..3u64 {
        for (&key, (_, stored)) in bodies.iter_mut() {
            let more = bytes(2000 + key * 10 + round, 700);
            stored.extend_from_slice(&more);
            spool.submit(Job::Chunk { key, data: more });
        }
        filler(&mut spool, 200 + round, 10);
        let held = segment_descriptors(&dir.log());
        // The older segments within the bound, and the current one.
        assert!(
            held <= OLDER_OPEN + 1,
            "{held} segment descriptors in round {round}"
        );
    }
    for &key in bodies.keys() {
        spool.submit(Job::End {
            key,
            at: std::time::Instant::now(),
        });
    }
    for _ in 0..SLOW {
        let done = spool.results.recv_timeout(LIMIT).expect("a commit result");
        assert!(done.ok, "{done:?}");
    }
    assert!(segment_descriptors(&dir.log()) <= OLDER_OPEN + 1);
    want.extend(bodies.into_values());
    assert!(segments(&dir.log()).len() > SLOW as usize);
    for (id, stored) in &want {
        assert!(read(&*log, id) == *stored, "{id} reads back changed");
    }
    drop(spool);
    // And the same after recovery, from what the syncs through reopened descriptors wrote.
    let (log, report) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
    assert_eq!(report.messages, want.len(), "{report:?}");
    for (id, stored) in &want {
        assert!(
            read(&*log, id) == *stored,
            "{id} reads back changed after recovery"
        );
    }
}

/// `n` messages of `chunks` chunks each (1 to 4 KiB), and picks that hand their jobs over
/// round-robin, as `n` sessions streaming at once would: every message's records interleave
/// with all the others'.
fn round_robin(n: usize, chunks: usize) -> (Vec<Plan>, Vec<usize>) {
    let plans: Vec<Plan> = (0..n as u64)
        .map(|i| Plan {
            recipients: 1 + i as usize % 2,
            chunks: (0..chunks as u64)
                .map(|c| bytes(i << 16 | c, 1000 + ((i * 7 + c * 13) as usize * 211) % 3000))
                .collect(),
            fate: Fate::Commit,
        })
        .collect();
    (plans, (0..n * (chunks + 2)).collect())
}

/// The records of a segment's octets up to its first that does not check: offset, octets,
/// kind, message.
fn records(data: &[u8]) -> Vec<(usize, usize, record::Kind, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok((rec, used)) = record::decode(&data[at..]) {
        out.push((at, used, rec.kind, rec.msg));
        at += used;
    }
    out
}

/// The committed message `id` as a scan of the segment `path` finds it.
fn found(path: &Path, id: &str) -> scan::Found {
    scan::scan(path, false, |_, _| {})
        .unwrap()
        .messages
        .into_iter()
        .find(|m| m.meta.as_ref().is_some_and(|m| m.id == id))
        .unwrap()
}

#[test]
fn interleaved_messages_read_back_exact_before_and_after_a_restart_and_a_compaction() {
    let dir = Scratch::new("interleaved");
    let (log, _) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
    let mut spool = start(&log);
    let (plans, picks) = round_robin(50, 6);
    let written = submit(&mut spool, &plans, &picks);
    let holds = |log: &LogSpool, ids: &[String]| {
        for id in ids {
            assert!(read(log, id) == written.acked[id].0, "{id} reads back changed");
        }
    };
    holds(&log, &written.ids);
    // Each has its extents, and lies spread among the others' records.
    let files = segments(&dir.log());
    assert_eq!(files.len(), 1, "{files:?}");
    let scanned = scan::scan(&files[0], false, |_, _| {}).unwrap();
    assert_eq!(scanned.messages.len(), 50);
    for m in &scanned.messages {
        assert!(m.committed() && m.extents.is_some(), "{m:?}");
        assert!(m.end - m.offset > 10 * m.octets, "{m:?} is not interleaved");
    }

    spool.finish();
    drop(log);
    let (log, report) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
    assert_eq!((report.messages, report.dropped), (50, 0), "{report:?}");
    holds(&log, &written.ids);

    // All but five done: what is left of their segment is compacted.
    let keep: Vec<String> = written.ids.iter().step_by(10).cloned().collect();
    for id in written.ids.iter().filter(|id| !keep.contains(id)) {
        log.delete(id).unwrap();
    }
    assert_eq!(log.compact().unwrap(), 1);
    holds(&log, &keep);
    let files = segments(&dir.log());
    assert_eq!(files.len(), 1, "{files:?}");
    let copies = scan::scan(&files[0], false, |_, _| {}).unwrap().messages;
    assert_eq!(copies.len(), 5);
    assert!(
        copies.iter().all(|m| m.committed() && m.extents.is_some()),
        "{copies:?}"
    );
    drop(log);
    let (log, report) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
    assert_eq!((report.messages, report.dropped), (5, 0), "{report:?}");
    assert_eq!(listed(&*log).into_keys().collect::<Vec<_>>(), keep);
    holds(&log, &keep);
}

#[test]
fn a_message_is_read_from_its_own_records_never_from_those_interleaved_with_it() {
    let dir = Scratch::new("own-records");
    let (log, _) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
    let mut spool = start(&log);
    let (plans, picks) = round_robin(5, 8);
    let written = submit(&mut spool, &plans, &picks);
    spool.finish();
    let path = segments(&dir.log())[0].clone();
    let victim = &written.ids[2];
    let m = found(&path, victim);
    // Every record of the others' between its first and its last becomes garbage.
    let mut data = fs::read(&path).unwrap();
    let mut foreign = 0;
    for (at, used, _, msg) in records(&data) {
        if msg != m.msg && at as u64 > m.offset && ((at + used) as u64) < m.end {
            data[at..at + used].fill(0xA5);
            foreign += 1;
        }
    }
    assert!(foreign > 20, "{foreign} records between");
    fs::write(&path, data).unwrap();
    assert!(
        read(&*log, victim) == written.acked[victim].0,
        "{victim} reads back changed"
    );
    // Walking its span, as a message without extents is read, would have met the garbage.
    let (_, mut e) = log.entry(victim).unwrap();
    e.extents = 0;
    let err = log.reader(&e).unwrap().read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn a_segment_written_before_extents_records_recovers_reads_and_compacts() {
    use record::Kind;
    let dir = Scratch::new("old-format");
    fs::create_dir_all(dir.log()).unwrap();
    // Two messages interleaved, as the committer wrote them before `Extents` records: a small
    // one and a large one.
    let (small, large) = (
        [bytes(1, 700), bytes(2, 900)],
        [bytes(3, 30_000), bytes(4, 20_000)],
    );
    let end = |chunks: &[Vec<u8>]| {
        let data: usize = chunks.iter().map(Vec::len).sum();
        [(data as u64).to_le_bytes(), (data as u64).to_le_bytes()].concat()
    };
    let mut seg = Vec::new();
    record::append(&mut seg, Kind::Segment, 0, &record::segment_payload(1));
    for (msg, id) in [(1, "0SMA11"), (2, "0BYTES")] {
        let mut env = Vec::new();
        record::encode_envelope(&meta(id), &mut env);
        record::append(&mut seg, Kind::Envelope, msg, &env);
    }
    record::append(&mut seg, Kind::Data, 1, &small[0]);
    record::append(&mut seg, Kind::Data, 2, &large[0]);
    record::append(&mut seg, Kind::Data, 1, &small[1]);
    record::append(&mut seg, Kind::End, 1, &end(&small));
    record::append(&mut seg, Kind::Data, 2, &large[1]);
    record::append(&mut seg, Kind::End, 2, &end(&large));
    fs::write(dir.log().join(super::segment::segment_name(1)), seg).unwrap();

    let (log, report) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
    assert_eq!(
        (report.messages, report.dropped, report.truncated),
        (2, 0, 0),
        "{report:?}"
    );
    assert!(read(&*log, "0SMA11") == small.concat());
    assert!(read(&*log, "0BYTES") == large.concat());
    assert_eq!(log.get("0BYTES").unwrap().size, 50_000);
    // Its copy is written with its extents and reads the same, also after a restart.
    log.delete("0BYTES").unwrap();
    assert_eq!(log.compact().unwrap(), 1);
    assert_ne!(log.entry("0SMA11").unwrap().1.extents, 0);
    assert!(read(&*log, "0SMA11") == small.concat());
    drop(log);
    let (log, report) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
    assert_eq!((report.messages, report.dropped), (1, 0), "{report:?}");
    assert!(read(&*log, "0SMA11") == small.concat());
}

#[test]
fn a_record_of_a_newer_kind_stops_recovery_and_leaves_the_segment_as_it_was() {
    use record::Kind;
    let dir = Scratch::new("newer-kind");
    fs::create_dir_all(dir.log()).unwrap();
    let message = |seg: &mut Vec<u8>, msg: u64, id: &str, body: &[u8]| {
        let mut env = Vec::new();
        record::encode_envelope(&meta(id), &mut env);
        record::append(seg, Kind::Envelope, msg, &env);
        record::append(seg, Kind::Data, msg, body);
        let n = (body.len() as u64).to_le_bytes();
        record::append(seg, Kind::End, msg, &[n, n].concat());
    };
    let mut seg = Vec::new();
    record::append(&mut seg, Kind::Segment, 0, &record::segment_payload(1));
    message(&mut seg, 1, "0SMA11", &bytes(1, 500));
    // What a later build might write between messages: a whole record, its CRC good, of a kind
    // this build has never heard of; after it, a message that build acknowledged.
    let at = seg.len();
    record::append(&mut seg, Kind::Data, 2, b"a record of kind 99");
    seg[at + 8] = 99;
    let crc = crc32c::crc32c(&seg[at + 4..]);
    seg[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    message(&mut seg, 3, "0BYTES", &bytes(3, 700));
    let path = dir.log().join(super::segment::segment_name(1));
    fs::write(&path, &seg).unwrap();

    let e = LogSpool::recover(&dir.0, SEGMENT)
        .err()
        .expect("recovery refuses the newer record");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains(&format!("kind 99 at octet {at}")), "{e}");
    assert!(fs::read(&path).unwrap() == seg, "the segment was changed");
    // `ringmx spool check` names it for what it is.
    let checked = tool::check(&dir.0).unwrap();
    assert_eq!(checked.problems, 1, "{}", checked.report);
    assert!(
        checked
            .report
            .contains(&format!("kind 99 at octet {at}, unknown")),
        "{}",
        checked.report
    );

    // The same octets with the CRC broken are a torn record: cut there, as before.
    seg[at] ^= 1;
    fs::write(&path, &seg).unwrap();
    let (log, report) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
    assert_eq!((report.messages, report.truncated), (1, 1), "{report:?}");
    assert!(read(&*log, "0SMA11") == bytes(1, 500));
    assert_eq!(fs::metadata(&path).unwrap().len(), at as u64);
}

#[test]
fn a_corrupt_or_lying_extents_record_reads_as_damaged_never_as_other_octets() {
    for lie in [false, true] {
        let dir = Scratch::new("bad-extents");
        let (log, _) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
        let mut spool = start(&log);
        let (plans, picks) = round_robin(4, 6);
        let written = submit(&mut spool, &plans, &picks);
        spool.finish();
        let path = segments(&dir.log())[0].clone();
        let victim = &written.ids[1];
        let at = found(&path, victim).extents.unwrap() as usize;
        let mut data = fs::read(&path).unwrap();
        let (rec, used) = record::decode(&data[at..]).unwrap();
        let payload = rec.payload.to_vec();
        let msg = rec.msg;
        if lie {
            // A list that checks (CRC, first record, octets) but puts its second run one
            // octet later, rewritten with a CRC that matches.
            let mut cursor = record::ExtentCursor::default();
            let mut list = record::ExtentList::default();
            let mut n = 0;
            while let Some((start, end)) = cursor.next(&payload) {
                let shift = u64::from(n == 1);
                list.add(start + shift, end - start);
                n += 1;
            }
            assert!(n >= 3, "{n} runs");
            let mut forged = Vec::new();
            record::append(&mut forged, record::Kind::Extents, msg, list.payload().unwrap());
            assert_eq!(forged.len(), used);
            data[at..at + used].copy_from_slice(&forged);
        } else {
            data[at + record::HEADER + payload.len() / 2] ^= 0x10;
        }
        fs::write(&path, data).unwrap();
        let read_victim = log
            .open(victim)
            .and_then(|(_, mut r)| r.read_to_end(&mut Vec::new()));
        let err = read_victim.expect_err("a damaged message read back");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        for id in written.ids.iter().filter(|id| *id != victim) {
            assert!(read(&*log, id) == written.acked[id].0, "{id} reads back changed");
        }
        drop(log);
        // Recovery drops it (the lie) or cuts the segment at it (the flip): never listed, and
        // what is listed reads back exact.
        let (log, report) = LogSpool::recover(&dir.0, SEGMENT).unwrap();
        assert_eq!(report.truncated, usize::from(!lie), "{report:?}");
        let left = listed(&*log);
        assert!(!left.contains_key(victim));
        if lie {
            assert_eq!(left.len(), 3);
        }
        for id in left.keys() {
            assert!(read(&*log, id) == written.acked[id].0, "{id} reads back changed");
        }
    }
}

/// The index's doc promises about 90 octets a message (a million queued cost about 90 MB):
/// the offset of the extents record fits in it.
#[test]
fn an_index_entry_with_its_key_takes_under_90_octets() {
    let octets = std::mem::size_of::<super::Entry>() + std::mem::size_of::<super::Key>();
    assert!(octets <= 88, "{octets} octets");
}
