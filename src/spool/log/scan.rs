//! Reading a segment back, record by record, until the first one that does not check: what recovery, `spool check`, `spool export` and the reader share.

use super::record::{self, ExtentList, Kind, Stop, HEADER};
use crate::spool::MessageMeta;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

/// A message found in a segment.
#[derive(Debug)]
pub struct Found {
    pub msg: u64,
    pub meta: Option<MessageMeta>,
    /// Offset of its first record, and just past its last one.
    pub offset: u64,
    pub end: u64,
    /// Octets of its own records (those of other messages interleave with them).
    pub octets: u64,
    /// Octets of its `Data` records.
    pub data: u64,
    /// From its `End` record: the size without the trace header, and the data octets.
    pub ended: Option<(u64, u64)>,
    /// The offset of its `Extents` record, if it has one (segments written before that record
    /// existed do not).
    pub extents: Option<u64>,
    /// Records in an order no writer produces (data before the envelope, anything after the
    /// end, a second envelope, an envelope that does not parse, data after the extents, or
    /// extents that are not exactly its records before them).
    pub bad: bool,
}

impl Found {
    /// Complete and consistent: its end record was written, so it may have been acknowledged.
    pub fn committed(&self) -> bool {
        !self.bad && self.meta.is_some() && self.ended.is_some_and(|(_, data)| data == self.data)
    }
}

/// A segment or done file, read up to its first record that does not check.
#[derive(Debug)]
pub struct Scanned {
    /// The sequence number of its first record (segments only; `None` if that is missing).
    pub seq: Option<u64>,
    /// Just past the last record that checks.
    pub end: u64,
    pub stop: Stop,
    /// The file's length, and whether everything from `end` to it is zero (a preallocated
    /// tail) rather than a torn or corrupt one.
    pub len: u64,
    pub clean_tail: bool,
    pub records: u64,
    /// Messages in the order their first record appears.
    pub messages: Vec<Found>,
    /// Done records: (message, recipients; empty for the whole message).
    pub done: Vec<(u64, Vec<u32>)>,
}

/// Reads the records of `path` (a segment, or with `done_file` a done file) in order.
/// `with_data` receives each `Data` payload with its message number.
pub fn scan(path: &Path, done_file: bool, with_data: impl FnMut(u64, &[u8])) -> io::Result<Scanned> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    scan_from(BufReader::with_capacity(1 << 20, file), len, done_file, with_data)
}

/// [`scan`] over the octets of a segment or done file already in memory (the fuzz target
/// `spool_scan` reads arbitrary segments this way, without a file per run).
pub fn scan_bytes(bytes: &[u8], done_file: bool, with_data: impl FnMut(u64, &[u8])) -> Scanned {
    scan_from(bytes, bytes.len() as u64, done_file, with_data).expect("reading a slice cannot fail")
}

/// The scan proper, over `r`, which holds `len` octets.
fn scan_from(
    mut r: impl Read,
    len: u64,
    done_file: bool,
    mut with_data: impl FnMut(u64, &[u8]),
) -> io::Result<Scanned> {
    let mut out = Scanned {
        seq: None,
        end: 0,
        stop: Stop::End,
        len,
        clean_tail: true,
        records: 0,
        messages: Vec::new(),
        done: Vec::new(),
    };
    let mut index: HashMap<u64, usize> = HashMap::new();
    // Each message's runs of records, noted as the committer notes them, so its `Extents`
    // record must be exactly what is rebuilt here.
    let mut runs: Vec<ExtentList> = Vec::new();
    let mut buf = vec![0u8; HEADER];
    let mut offset = 0u64;
    loop {
        buf.resize(HEADER, 0);
        let got = read_full(&mut r, &mut buf)?;
        buf.truncate(got);
        let plen = match record::payload_len(&buf) {
            Ok(n) => n,
            Err(stop) => {
                out.stop = stop;
                break;
            }
        };
        buf.resize(HEADER + plen, 0);
        let got = read_full(&mut r, &mut buf[HEADER..])?;
        buf.truncate(HEADER + got);
        let (rec, used) = match record::decode(&buf) {
            Ok(x) => x,
            Err(stop) => {
                out.stop = stop;
                break;
            }
        };
        let first = offset == 0;
        let start = offset;
        offset += used as u64;
        if first && !done_file {
            match (rec.kind, record::parse_segment(rec.payload)) {
                (Kind::Segment, Some(seq)) => {
                    out.seq = Some(seq);
                    out.records += 1;
                    out.end = offset;
                    continue;
                }
                _ => {
                    out.stop = Stop::Corrupt;
                    break;
                }
            }
        }
        let wrong_file = matches!(rec.kind, Kind::Segment) || (rec.kind == Kind::Done) != done_file;
        if wrong_file {
            out.stop = Stop::Corrupt;
            break;
        }
        out.records += 1;
        out.end = offset;
        if rec.kind == Kind::Done {
            let rcpts = rec
                .payload
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 octets")))
                .collect();
            out.done.push((rec.msg, rcpts));
            continue;
        }
        let i = *index.entry(rec.msg).or_insert_with(|| {
            out.messages.push(Found {
                msg: rec.msg,
                meta: None,
                offset: start,
                end: offset,
                octets: 0,
                data: 0,
                ended: None,
                extents: None,
                bad: false,
            });
            runs.push(ExtentList::default());
            out.messages.len() - 1
        });
        let m = &mut out.messages[i];
        m.end = offset;
        m.octets += used as u64;
        if m.ended.is_some() {
            m.bad = true;
            continue;
        }
        match rec.kind {
            Kind::Envelope => {
                if m.meta.is_some() || m.data > 0 {
                    m.bad = true;
                }
                runs[i].add(start, used as u64);
                m.meta = record::decode_envelope(rec.payload);
                m.bad |= m.meta.is_none();
            }
            Kind::Data => {
                if m.meta.is_none() || m.extents.is_some() {
                    m.bad = true;
                }
                m.data += rec.payload.len() as u64;
                runs[i].add(start, used as u64);
                with_data(rec.msg, rec.payload);
            }
            Kind::End => {
                let ended = <[u8; 16]>::try_from(rec.payload).ok().map(|p| {
                    let size = u64::from_le_bytes(p[..8].try_into().expect("8 octets"));
                    let data = u64::from_le_bytes(p[8..].try_into().expect("8 octets"));
                    (size, data)
                });
                m.bad |= ended.is_none();
                m.ended = ended.or(Some((0, u64::MAX)));
            }
            Kind::Extents => {
                if m.meta.is_none() || m.extents.is_some() || runs[i].payload() != Some(rec.payload) {
                    m.bad = true;
                }
                m.extents = Some(start);
            }
            Kind::Segment | Kind::Done => unreachable!("handled above"),
        }
    }
    // Whatever follows the last good record: zeros (the unused preallocation) or a torn tail.
    let mut clean = buf.iter().all(|&b| b == 0);
    if clean {
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let n = r.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            if chunk[..n].iter().any(|&b| b != 0) {
                clean = false;
                break;
            }
        }
    }
    out.clean_tail = clean;
    if !clean && out.stop == Stop::End {
        out.stop = Stop::Corrupt;
    }
    Ok(out)
}

/// Reads until `buf` is full or the file ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
