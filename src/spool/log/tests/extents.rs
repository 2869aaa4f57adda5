//! Reading a message from its own records: interleaved messages, the extents record (missing in old segments, corrupt, or lying), and the index entry it adds to.

use super::*;

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
    fs::write(dir.log().join(crate::spool::log::segment::segment_name(1)), seg).unwrap();

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
    let octets =
        std::mem::size_of::<crate::spool::log::Entry>() + std::mem::size_of::<crate::spool::log::Key>();
    assert!(octets <= 88, "{octets} octets");
}
