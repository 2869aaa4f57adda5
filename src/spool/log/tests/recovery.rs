//! Recovery: after truncation and bit flips only acknowledged messages are listed, intact; a record of a newer kind stops it.

use super::*;

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
    let path = dir.log().join(crate::spool::log::segment::segment_name(1));
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
