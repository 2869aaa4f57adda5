//! Fuzzes the log spool's recovery scan over arbitrary segment and done-file octets: every record it passes checks, its messages are what those records say, its tail verdict is what follows them, and the segment as recovery seals it (cut at the scan's end, or preallocated zeros after it) scans the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmx::spool::log::record::{self, Kind, Record, Stop, HEADER, MAX_PAYLOAD};
use ringmx::spool::log::scan::{scan_bytes, Scanned};

fuzz_target!(|data: &[u8]| {
    // The first octet: bit 0 reads a done file rather than a segment; bit 1 has the CRC of
    // every framed record set first, so mutations reach past the checksum; the rest sizes
    // the zeros appended as a preallocated tail.
    let Some((&knob, input)) = data.split_first() else {
        return;
    };
    let done_file = knob & 1 != 0;
    let mut bytes = input.to_vec();
    if knob & 2 != 0 {
        seal_crcs(&mut bytes);
    }
    let mut data_seen = Vec::new();
    let scanned = scan_bytes(&bytes, done_file, |msg, payload| {
        data_seen.push((msg, payload.to_vec()))
    });
    check(&bytes, done_file, &scanned, &data_seen);

    let end = scanned.end as usize;
    let sealed = scan_bytes(&bytes[..end], done_file, |_, _| {});
    assert_eq!(
        summary(&sealed),
        summary(&scanned),
        "the segment cut at its end scans otherwise"
    );
    assert!(sealed.clean_tail && sealed.stop == Stop::End);
    let mut padded = bytes[..end].to_vec();
    padded.resize(end + usize::from(knob >> 2) * 8, 0);
    let preallocated = scan_bytes(&padded, done_file, |_, _| {});
    assert_eq!(
        summary(&preallocated),
        summary(&scanned),
        "zeros after the end scan otherwise"
    );
    assert!(preallocated.clean_tail && preallocated.stop == Stop::End);
});

/// Sets the CRC of each record framed from the start, up to the first all-zero header (the
/// preallocated tail) or one whose length does not fit.
fn seal_crcs(bytes: &mut [u8]) {
    let mut off = 0;
    while off + HEADER <= bytes.len() && bytes[off + 4..off + HEADER].iter().any(|&b| b != 0) {
        let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        if len > MAX_PAYLOAD || off + HEADER + len > bytes.len() {
            return;
        }
        let crc = crc32c::crc32c(&bytes[off + 4..off + HEADER + len]);
        bytes[off..off + 4].copy_from_slice(&crc.to_le_bytes());
        off += HEADER + len;
    }
}

/// What recovery takes from a scan, comparable (the tail verdict aside).
fn summary(s: &Scanned) -> String {
    format!(
        "seq {:?} end {} records {} messages {:?} done {:?}",
        s.seq, s.end, s.records, s.messages, s.done
    )
}

fn check(bytes: &[u8], done_file: bool, s: &Scanned, data_seen: &[(u64, Vec<u8>)]) {
    assert_eq!(s.len, bytes.len() as u64);
    let end = usize::try_from(s.end).unwrap();
    assert!(end <= bytes.len());
    // Every record up to the end checks, back to back, and there are as many as counted.
    let mut records: Vec<(usize, usize, Record<'_>)> = Vec::new();
    let mut off = 0;
    while off < end {
        let (rec, used) = record::decode(&bytes[off..end])
            .unwrap_or_else(|stop| panic!("the record at {off} does not check ({stop:?}) but was passed"));
        records.push((off, used, rec));
        off += used;
    }
    assert_eq!(off, end);
    assert_eq!(records.len() as u64, s.records);
    // The tail: zeros (a preallocation) are the clean end; anything else stops the scan as
    // corrupt, short, or at a record of a kind this build does not know.
    let zeros = bytes[end..].iter().all(|&b| b == 0);
    assert_eq!(s.clean_tail, zeros);
    assert_eq!(
        s.stop == Stop::End,
        zeros,
        "{:?} before a tail of zeros: {zeros}",
        s.stop
    );
    if s.stop == Stop::Short {
        let len = record::payload_len(&bytes[end..]).expect("a short record has a header");
        assert!(end + HEADER + len > bytes.len());
    }
    // A newer build's record is whole and its CRC checks; only its kind is unknown.
    if let Stop::Unknown(kind) = s.stop {
        assert_eq!(bytes[end + 8], kind);
        assert_eq!(record::decode(&bytes[end..]), Err(Stop::Unknown(kind)));
    }

    if done_file {
        assert_eq!(s.seq, None);
        assert!(s.messages.is_empty());
        let done: Vec<(u64, Vec<u32>)> = (records.iter())
            .map(|(_, _, r)| {
                assert_eq!(r.kind, Kind::Done, "a done file passed a {:?} record", r.kind);
                let rcpts = r
                    .payload
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()));
                (r.msg, rcpts.collect())
            })
            .collect();
        assert_eq!(s.done, done);
        assert!(data_seen.is_empty());
        return;
    }
    assert!(s.done.is_empty());
    let messages = match records.split_first() {
        None => {
            assert_eq!(s.seq, None);
            &[][..]
        }
        Some(((_, _, first), rest)) => {
            assert_eq!(first.kind, Kind::Segment);
            assert_eq!(
                s.seq,
                Some(record::parse_segment(first.payload).expect("the segment's header"))
            );
            rest
        }
    };
    // A message's records after its end record are no part of it (they make it bad).
    let mut ended = std::collections::HashSet::new();
    let before_end: Vec<bool> = (messages.iter())
        .map(|(_, _, r)| {
            let before = !ended.contains(&r.msg);
            if r.kind == Kind::End {
                ended.insert(r.msg);
            }
            before
        })
        .collect();
    let data: Vec<(u64, Vec<u8>)> = (messages.iter().zip(&before_end))
        .filter(|((_, _, r), &before)| before && r.kind == Kind::Data)
        .map(|((_, _, r), _)| (r.msg, r.payload.to_vec()))
        .collect();
    assert_eq!(
        data_seen, data,
        "the data handed out is not the data records before the ends"
    );

    // Each message found is its records: from the first to the last, their octets, their
    // data before its end, its last extents record before its end; and one that counts as
    // committed is an envelope first and an end last, with at most one extents record, just
    // before the end, listing exactly the runs of its envelope and data records.
    let mut numbers: Vec<u64> = messages.iter().map(|(_, _, r)| r.msg).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), s.messages.len(), "messages found");
    let mut last_offset = None;
    for found in &s.messages {
        assert!(last_offset < Some(found.offset), "messages out of order");
        last_offset = Some(found.offset);
        let own: Vec<_> = messages.iter().filter(|(_, _, r)| r.msg == found.msg).collect();
        let extents = (messages.iter().zip(&before_end))
            .filter(|((_, _, r), &before)| before && r.msg == found.msg && r.kind == Kind::Extents)
            .map(|((off, _, _), _)| *off as u64)
            .last();
        assert_eq!(found.extents, extents);
        assert!(!own.is_empty(), "message {} has no record", found.msg);
        let (first, last) = (own[0], own[own.len() - 1]);
        assert_eq!(found.offset, first.0 as u64);
        assert_eq!(found.end, (last.0 + last.1) as u64);
        assert_eq!(
            found.octets,
            own.iter().map(|(_, used, _)| *used as u64).sum::<u64>()
        );
        let data_octets = (data.iter())
            .filter(|(msg, _)| *msg == found.msg)
            .map(|(_, payload)| payload.len() as u64)
            .sum::<u64>();
        assert_eq!(found.data, data_octets);
        if let Some(meta) = &found.meta {
            // What decodes encodes to an envelope that decodes the same.
            let mut payload = Vec::new();
            record::encode_envelope(meta, &mut payload);
            let back = record::decode_envelope(&payload).expect("an encoded envelope decodes");
            assert_eq!(format!("{back:?}"), format!("{meta:?}"));
        }
        if found.committed() {
            let kinds: Vec<Kind> = own.iter().map(|(_, _, r)| r.kind).collect();
            assert_eq!(kinds[0], Kind::Envelope);
            assert_eq!(kinds.iter().filter(|&&k| k == Kind::Envelope).count(), 1);
            assert_eq!(kinds.iter().filter(|&&k| k == Kind::End).count(), 1);
            assert_eq!(kinds[kinds.len() - 1], Kind::End);
            assert!(record::decode_envelope(own[0].2.payload).is_some());
            let (_, ended_data) = found.ended.unwrap();
            assert_eq!(ended_data, data_octets);
            let lists: Vec<_> = own.iter().filter(|(_, _, r)| r.kind == Kind::Extents).collect();
            assert!(lists.len() <= 1);
            if let Some((_, _, list)) = lists.first() {
                assert_eq!(kinds[kinds.len() - 2], Kind::Extents);
                let mut runs: Vec<(u64, u64)> = Vec::new();
                for (off, used, r) in &own {
                    if !matches!(r.kind, Kind::Envelope | Kind::Data) {
                        continue;
                    }
                    let (start, end) = (*off as u64, (off + used) as u64);
                    match runs.last_mut() {
                        Some(run) if run.1 == start => run.1 = end,
                        _ => runs.push((start, end)),
                    }
                }
                let mut cursor = record::ExtentCursor::default();
                let listed: Vec<(u64, u64)> = std::iter::from_fn(|| cursor.next(list.payload)).collect();
                assert!(cursor.finished(list.payload));
                assert_eq!(listed, runs, "the extents are not the message's records");
            }
        }
    }
}
