//! Segments over time: compaction of done and pinned segments (also cut short by a crash), and the descriptors pinned segments hold.

use super::*;

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
    use crate::spool::log::committer::OLDER_OPEN;
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
