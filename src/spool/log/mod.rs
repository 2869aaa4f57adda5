//! The log-structured spool: per-worker append-only segments of framed records, committed in groups with one `fdatasync` per segment, read back through [`crate::spool::Queue`].
//!
//! Layout, in `DIR/log/`: `<seq>.seg` segments (sixteen hexadecimal digits, in order of
//! creation), each preallocated to `spool_segment_size` so a commit never creates an inode or
//! changes a size; and beside some of them `<seq>.done`, the done records of that segment's
//! messages. A segment starts with a `Segment` record; a message is an `Envelope` record, its
//! `Data` records (the `Received:` header first, then the body as it streamed in), an
//! `Extents` record listing where those records are, and an `End` record, which commits it.
//! Messages of one worker interleave in its segment, so a message is read back from the runs
//! its `Extents` record lists, one `pread` each, and never touches the others' records; a
//! message without one (segments written before it existed, or a message in more runs than
//! [`record::MAX_EXTENTS`] holds) is read by walking its span and skipping the others'.
//!
//! - **Write** ([`committer`]): each worker's committer thread appends as jobs arrive and, per
//!   batch, the extents and end records of every message that ended, then one `fdatasync` per
//!   segment written; only then are the ids reported and the `250`s sent.
//! - **Recover** ([`LogSpool::recover`], at start, under the spool lock): every segment is
//!   scanned to its first record that does not check (CRC32C) and truncated there; messages
//!   without an end record are dropped and logged; recovered segments are sealed, never
//!   appended to again, so nothing written after a torn tail can ever be mistaken for a record.
//! - **Reclaim**: a sealed segment whose messages are all done is deleted (the segment first,
//!   then its done file: a done file alone is an orphan recovery removes); one that is mostly
//!   done is compacted ([`LogSpool::compact`]): its live messages are copied into a new
//!   segment with their done state, made durable, and only then is the old one deleted. A copy
//!   left by a crash during compaction has the same id as its original; recovery keeps the
//!   newer and merges their done state, so a message is never committed twice.

mod committer;
pub mod record;
pub mod scan;
mod segment;
#[cfg(test)]
mod tests;

pub(super) use committer::Committer;

use super::queue::{Queue, Queued};
use super::MessageMeta;
use record::{ExtentCursor, ExtentList, Kind, Stop};
use segment::{done_name, parse_name, segment_name, Segment};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The log's directory inside the spool directory.
pub const LOG_DIR: &str = "log";

/// Descriptors a committer holds at most: its current segment, the full ones it keeps open
/// ([`committer::OLDER_OPEN`]), and for a moment the directory it syncs after creating one.
pub const COMMITTER_DESCRIPTORS: u64 = committer::OLDER_OPEN as u64 + 2;

/// A segment is compacted once its live messages take less than this fraction of it.
const COMPACT_BELOW: f64 = 0.25;

/// A message the committer made durable, for the index.
pub(super) struct Committed {
    pub seq: u64,
    pub msg: u64,
    pub offset: u64,
    pub end: u64,
    pub extents: Option<u64>,
    pub octets: u64,
    pub size: u64,
    pub key: Key,
    pub recipients: usize,
}

/// A queue id packed into an integer: the index holds no string per message. Ids are
/// Crockford base32 (`IdGen`); a leading 1 bit keeps leading zeros apart, so up to 25
/// digits fit.
pub(super) type Key = u128;

/// The key of queue id `id`, if it is one `IdGen` could have made.
pub(super) fn key(id: &str) -> Option<Key> {
    if id.is_empty() || id.len() > 25 {
        return None;
    }
    let mut v: Key = 1;
    for b in id.bytes() {
        let d = crate::spool::id::digit(b)?;
        v = v << 5 | Key::from(d);
    }
    Some(v)
}

/// Which recipients of a message are done: a bit each up to 64 (the common case, no
/// allocation), a flag each beyond.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DoneSet {
    Small { count: u8, bits: u64 },
    Large(Box<Flags>),
}

/// The flags of a message with more than 64 recipients, behind a thin pointer: a slice's own
/// (pointer and length) would make every [`Entry`] 8 octets larger for the rare message
/// that has them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flags(Box<[bool]>);

impl DoneSet {
    fn new(count: usize) -> DoneSet {
        if count <= 64 {
            DoneSet::Small {
                count: count as u8,
                bits: 0,
            }
        } else {
            DoneSet::Large(Box::new(Flags(vec![false; count].into_boxed_slice())))
        }
    }

    fn len(&self) -> usize {
        match self {
            DoneSet::Small { count, .. } => usize::from(*count),
            DoneSet::Large(v) => v.0.len(),
        }
    }

    fn get(&self, i: usize) -> bool {
        match self {
            DoneSet::Small { bits, .. } => bits >> i & 1 == 1,
            DoneSet::Large(v) => v.0[i],
        }
    }

    fn set(&mut self, i: usize) {
        match self {
            DoneSet::Small { bits, .. } => *bits |= 1 << i,
            DoneSet::Large(v) => v.0[i] = true,
        }
    }

    fn set_all(&mut self) {
        for i in 0..self.len() {
            self.set(i);
        }
    }

    fn union(&mut self, other: &DoneSet) {
        for i in 0..self.len().min(other.len()) {
            if other.get(i) {
                self.set(i);
            }
        }
    }

    /// A message without recipients cannot be committed, so an empty set is done too.
    fn live(&self) -> bool {
        (0..self.len()).any(|i| !self.get(i))
    }

    fn to_vec(&self) -> Vec<bool> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }
}

/// A committed message in the index: where its records are, and its recipients' state.
/// About 90 octets with its key, so a queue of a million messages costs about 90 MB; the
/// envelope itself is read from the segment when asked for.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    msg: u64,
    /// Its first record, and just past its end record: the records of messages that were
    /// written at the same time lie between them too.
    offset: u64,
    end: u64,
    /// Its `Extents` record, which lists where its own records are; 0 (the offset of the
    /// segment's first record, never a message's) if it has none, and is read by walking
    /// from `offset` to `end`. Not an `Option`: that would take 8 more octets per message.
    extents: u64,
    /// Octets of its own records: what it keeps of its segment, and what a copy takes.
    octets: u64,
    size: u64,
    done: DoneSet,
}

#[derive(Debug, Default)]
struct SegmentState {
    /// Written by no one any more: deleted once nothing in it is live.
    sealed: bool,
    /// Its committed messages that are not done, and their octets.
    live: usize,
    live_octets: u64,
    /// Octets on disk (its length, or its preallocated size while written).
    octets: u64,
}

#[derive(Debug, Default)]
struct Index {
    segments: BTreeMap<u64, SegmentState>,
    messages: hashbrown::HashMap<Key, Entry>,
}

impl Index {
    /// Adds a committed entry that is still live, and counts it in its segment.
    fn insert(&mut self, key: Key, entry: Entry) {
        if !entry.done.live() {
            return;
        }
        let s = self.segments.entry(entry.seq).or_default();
        s.live += 1;
        s.live_octets += entry.octets;
        self.messages.insert(key, entry);
    }

    /// Removes an entry; returns it and whether its segment is sealed with nothing live left.
    fn remove(&mut self, key: Key) -> Option<(Entry, bool)> {
        let e = self.messages.remove(&key)?;
        let s = self.segments.get_mut(&e.seq)?;
        s.live -= 1;
        s.live_octets -= e.octets;
        let dead = s.sealed && s.live == 0;
        Some((e, dead))
    }
}

/// What recovery found, for the log line at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub segments: usize,
    pub messages: usize,
    /// Messages without their end record: never acknowledged, dropped.
    pub dropped: usize,
    /// Segments whose tail was torn or corrupt and cut off.
    pub truncated: usize,
    /// Segments deleted because nothing in them was live.
    pub deleted: usize,
    /// Copies left by a compaction that did not finish.
    pub duplicates: usize,
}

/// The log spool of one directory, shared by the committers that write it and the readers.
pub struct LogSpool {
    dir: PathBuf,
    segment_size: u64,
    next_seq: AtomicU64,
    index: Mutex<Index>,
    /// Whether this handle may change files (the server's, under the spool lock), or only
    /// reads them (`spool export`, `spool check` beside a running server).
    writable: bool,
}

impl LogSpool {
    /// Recovers the log in `spool/log` (created if missing) for a server that holds the spool
    /// lock: scans, truncates torn tails, drops unfinished messages, deletes dead segments.
    pub fn recover(spool: &Path, segment_size: u64) -> io::Result<(Arc<LogSpool>, Recovered)> {
        let dir = spool.join(LOG_DIR);
        fs::create_dir_all(&dir)?;
        let (log, report) = LogSpool::load(dir, segment_size, true)?;
        Ok((Arc::new(log), report))
    }

    /// Reads the log of `spool` without changing anything: for tools beside a running server.
    pub fn read_only(spool: &Path) -> io::Result<LogSpool> {
        Ok(LogSpool::load(spool.join(LOG_DIR), 0, false)?.0)
    }

    fn load(dir: PathBuf, segment_size: u64, writable: bool) -> io::Result<(LogSpool, Recovered)> {
        let mut report = Recovered::default();
        let mut seqs = BTreeMap::new();
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries {
                let name = entry?.file_name();
                if let Some((seq, done)) = name.to_str().and_then(parse_name) {
                    let e = seqs.entry(seq).or_insert((false, false));
                    if done {
                        e.1 = true;
                    } else {
                        e.0 = true;
                    }
                }
            }
        }
        let mut index = Index::default();
        // Messages found with every recipient done: a later copy of one (left by a compaction
        // cut short, beside no done record yet) is done too.
        let mut finished: hashbrown::HashSet<Key> = hashbrown::HashSet::new();
        // Done state a copy takes over from its original: written beside the copy before the
        // original's segment may be deleted, or it would be lost with it.
        let mut carried: BTreeMap<u64, Vec<(u64, Vec<u32>)>> = BTreeMap::new();
        let mut changed = false;
        let max_seq = seqs.keys().next_back().copied().unwrap_or(0);
        for (&seq, &(has_seg, has_done)) in &seqs {
            let seg_path = dir.join(segment_name(seq));
            let done_path = dir.join(done_name(seq));
            if !has_seg {
                // A done file whose segment was deleted: nothing of it is left to mark.
                if writable {
                    fs::remove_file(&done_path)?;
                    changed = true;
                }
                continue;
            }
            let scanned = match scan::scan(&seg_path, false, |_, _| {}) {
                Ok(s) => s,
                // Deleted by the server beside a read-only reader.
                Err(e) if !writable && e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            report.segments += 1;
            if writable {
                refuse_newer(&seg_path, &scanned)?;
            }
            let torn = !scanned.clean_tail || scanned.seq != Some(seq);
            if torn && writable {
                report.truncated += 1;
                tracing::warn!(
                    segment = %seg_path.display(),
                    at = scanned.end,
                    cut = scanned.len - scanned.end,
                    "spool segment has a torn or corrupt tail; truncated there"
                );
            }
            if writable && scanned.len != scanned.end {
                // Recovered segments are sealed: cut to their last good record, so the unused
                // preallocation is given back and nothing after it can ever be read as a record.
                let f = OpenOptions::new().write(true).open(&seg_path)?;
                f.set_len(scanned.end)?;
                f.sync_all()?;
            }
            let mut done: HashMap<u64, Vec<u32>> = HashMap::new();
            let mut whole: Vec<u64> = Vec::new();
            if has_done {
                let d = match scan::scan(&done_path, true, |_, _| {}) {
                    Ok(d) => d,
                    Err(e) if !writable && e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if writable {
                    refuse_newer(&done_path, &d)?;
                }
                if writable && d.len != d.end {
                    let f = OpenOptions::new().write(true).open(&done_path)?;
                    f.set_len(d.end)?;
                    f.sync_all()?;
                }
                for (msg, rcpts) in d.done {
                    if rcpts.is_empty() {
                        whole.push(msg);
                    } else {
                        done.entry(msg).or_default().extend(rcpts);
                    }
                }
            }
            index.segments.insert(
                seq,
                SegmentState {
                    sealed: true,
                    octets: scanned.end,
                    ..SegmentState::default()
                },
            );
            for found in scanned.messages {
                if !found.committed() {
                    if found.meta.is_some() || found.data > 0 {
                        report.dropped += 1;
                        tracing::warn!(
                            segment = seq,
                            id = found.meta.as_ref().map_or("?", |m| m.id.as_str()),
                            "dropping a message without its end record (never acknowledged)"
                        );
                    }
                    continue;
                }
                let meta = found.meta.expect("committed");
                let Some(k) = key(&meta.id) else {
                    report.dropped += 1;
                    tracing::warn!(segment = seq, id = %meta.id, "dropping a message with an id no server writes");
                    continue;
                };
                let mut flags = DoneSet::new(meta.recipients.len());
                if whole.contains(&found.msg) {
                    flags.set_all();
                }
                for &r in done.get(&found.msg).into_iter().flatten() {
                    if (r as usize) < flags.len() {
                        flags.set(r as usize);
                    }
                }
                let mut entry = Entry {
                    seq,
                    msg: found.msg,
                    offset: found.offset,
                    end: found.end,
                    extents: found.extents.unwrap_or(0),
                    octets: found.octets,
                    size: found.ended.expect("committed").0,
                    done: flags,
                };
                // A copy from a compaction that did not finish: keep the newer (this one),
                // with the done state of both.
                let own = entry.done.clone();
                let duplicate = if let Some((old, _)) = index.remove(k) {
                    entry.done.union(&old.done);
                    true
                } else if finished.remove(&k) {
                    entry.done.set_all();
                    true
                } else {
                    false
                };
                if duplicate {
                    report.duplicates += 1;
                    if entry.done != own {
                        let rcpts = if entry.done.live() {
                            (0..entry.done.len())
                                .filter(|&r| entry.done.get(r))
                                .map(|r| r as u32)
                                .collect()
                        } else {
                            Vec::new()
                        };
                        carried.entry(seq).or_default().push((found.msg, rcpts));
                    }
                }
                if !entry.done.live() {
                    finished.insert(k);
                }
                index.insert(k, entry);
            }
        }
        report.messages = index.messages.len();
        let log = LogSpool {
            dir,
            segment_size,
            next_seq: AtomicU64::new(max_seq + 1),
            index: Mutex::new(index),
            writable,
        };
        if writable {
            for (seq, records) in &carried {
                log.append_done(*seq, records)?;
            }
            let dead: Vec<u64> = {
                let index = log.lock();
                index
                    .segments
                    .iter()
                    .filter(|(_, s)| s.live == 0)
                    .map(|(&seq, _)| seq)
                    .collect()
            };
            for seq in dead {
                log.delete_segment(seq)?;
                report.deleted += 1;
                changed = true;
            }
            if changed || report.truncated > 0 {
                File::open(&log.dir)?.sync_all()?;
            }
        }
        Ok((log, report))
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // Every update of the index is complete before it can panic, so a poisoned lock
        // still guards a consistent index.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new segment for a committer (or for compaction), durable with its first record.
    fn create_segment(&self) -> io::Result<Segment> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let seg = Segment::create(&self.dir, seq, self.segment_size)?;
        self.lock().segments.insert(
            seq,
            SegmentState {
                octets: self.segment_size,
                ..SegmentState::default()
            },
        );
        Ok(seg)
    }

    /// Messages the committer made durable; called before their `250`s.
    fn register(&self, committed: &[Committed]) {
        let mut index = self.lock();
        for c in committed {
            let entry = Entry {
                seq: c.seq,
                msg: c.msg,
                offset: c.offset,
                end: c.end,
                extents: c.extents.unwrap_or(0),
                octets: c.octets,
                size: c.size,
                done: DoneSet::new(c.recipients),
            };
            index.insert(c.key, entry);
        }
    }

    /// No one writes segment `seq` any more; it is deleted now if nothing in it is live.
    fn seal(&self, seq: u64) {
        // A message that was in progress when the preallocated size was reached finished past
        // it: the segment's octets are its length now.
        let len = fs::metadata(self.dir.join(segment_name(seq))).map(|m| m.len());
        let dead = {
            let mut index = self.lock();
            let Some(s) = index.segments.get_mut(&seq) else {
                return;
            };
            s.sealed = true;
            if let Ok(len) = len {
                s.octets = len;
            }
            s.live == 0
        };
        if dead {
            if let Err(e) = self.delete_segment(seq) {
                tracing::error!(segment = seq, error = %e, "cannot delete a spool segment");
            }
        }
    }

    /// Removes a segment and then its done file.
    fn delete_segment(&self, seq: u64) -> io::Result<()> {
        self.lock().segments.remove(&seq);
        for name in [segment_name(seq), done_name(seq)] {
            match fs::remove_file(self.dir.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Appends done records to segment `seq`'s done file and makes them durable.
    fn append_done(&self, seq: u64, records: &[(u64, Vec<u32>)]) -> io::Result<()> {
        let path = self.dir.join(done_name(seq));
        let created = !path.exists();
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&path)?;
        let mut buf = Vec::new();
        for (msg, rcpts) in records {
            let payload: Vec<u8> = rcpts.iter().flat_map(|r| r.to_le_bytes()).collect();
            record::append(&mut buf, Kind::Done, *msg, &payload);
        }
        let before = f.metadata()?.len();
        if let Err(e) = f.write_all(&buf).and_then(|()| f.sync_data()) {
            // A write cut short by ENOSPC leaves a torn record, and recovery stops reading a
            // done file at its first bad record: every mark appended after it would be lost.
            // Cut it off, so the caller's retry appends whole records after whole records.
            if let Err(cut) = f.set_len(before) {
                tracing::error!(file = %path.display(), error = %cut, "cannot cut a failed append off a done file");
            }
            return Err(e);
        }
        if created {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    fn entry(&self, id: &str) -> io::Result<(Key, Entry)> {
        let k = key(id).ok_or_else(|| not_found(id))?;
        let e = self
            .lock()
            .messages
            .get(&k)
            .cloned()
            .ok_or_else(|| not_found(id))?;
        Ok((k, e))
    }

    /// Marks recipients of `id` done (all of them with `None`), durably; deletes the segment
    /// when that was its last live message.
    fn mark(&self, id: &str, recipient: Option<usize>) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "spool opened read-only",
            ));
        }
        let (k, e) = self.entry(id)?;
        if recipient.is_some_and(|r| r >= e.done.len()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no such recipient"));
        }
        let rcpts = recipient.map(|r| vec![r as u32]).unwrap_or_default();
        self.append_done(e.seq, &[(e.msg, rcpts)])?;
        let dead = {
            let mut index = self.lock();
            let Some(cur) = index.messages.get_mut(&k) else {
                return Ok(());
            };
            match recipient {
                Some(r) => cur.done.set(r),
                None => cur.done.set_all(),
            }
            if cur.done.live() {
                return Ok(());
            }
            index.remove(k).is_some_and(|(_, dead)| dead)
        };
        if dead {
            self.delete_segment(e.seq)?;
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Disk use: octets of every segment, and of the live messages in them.
    pub fn usage(&self) -> (u64, u64) {
        let index = self.lock();
        index
            .segments
            .values()
            .fold((0, 0), |(all, live), s| (all + s.octets, live + s.live_octets))
    }

    /// Copies the live messages of every sealed segment that is mostly done into a new
    /// segment, then deletes the old ones; returns how many were compacted. Runs beside the
    /// committers: the index is locked only to take a snapshot and to switch over, and done
    /// marks that arrive during the copy are carried to the copy before the switch.
    pub fn compact(&self) -> io::Result<usize> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "spool opened read-only",
            ));
        }
        let (victims, entries): (Vec<u64>, Vec<(Key, Entry)>) = {
            let index = self.lock();
            let victims: Vec<u64> = index
                .segments
                .iter()
                .filter(|(_, s)| {
                    s.sealed && s.live > 0 && (s.live_octets as f64) < COMPACT_BELOW * s.octets as f64
                })
                .map(|(&seq, _)| seq)
                .collect();
            let entries = index
                .messages
                .iter()
                .filter(|(_, e)| victims.contains(&e.seq))
                .map(|(k, e)| (*k, e.clone()))
                .collect();
            (victims, entries)
        };
        if victims.is_empty() {
            return Ok(0);
        }
        let mut seg = self.create_segment()?;
        let seq = seg.seq;
        let moved = match self.copy_live(&mut seg, entries) {
            Ok(moved) => moved,
            Err(e) => {
                // Nothing points at the copy yet: it goes, the originals stay.
                drop(seg);
                let _ = self.delete_segment(seq);
                return Err(e);
            }
        };
        self.switch_over(seg, moved, &victims)?;
        Ok(victims.len())
    }

    /// Copies `entries` into `seg` (envelope, data, extents, end, under new message numbers)
    /// and makes them durable.
    fn copy_live(&self, seg: &mut Segment, entries: Vec<(Key, Entry)>) -> io::Result<Vec<(Key, Entry)>> {
        let mut moved = Vec::with_capacity(entries.len());
        let mut chunk = vec![0u8; record::MAX_PAYLOAD];
        let mut env = Vec::new();
        for (n, (k, e)) in (1u64..).zip(entries) {
            let offset = seg.offset();
            env.clear();
            record::encode_envelope(&self.envelope(&e)?, &mut env);
            seg.push(Kind::Envelope, n, &env);
            let mut data = 0u64;
            let mut reader = self.reader(&e)?;
            loop {
                let got = reader.read(&mut chunk)?;
                if got == 0 {
                    break;
                }
                data += got as u64;
                seg.push_data(n, &chunk[..got])?;
            }
            // A copy's records are contiguous (nothing else is written to this segment), so
            // walking its span would read nothing foreign either; it gets its extents (one run)
            // all the same, so that every message this version writes is read one way and the
            // walk is left to segments written before `Extents` records existed.
            let mut extents = ExtentList::default();
            extents.add(offset, seg.offset() - offset);
            let at = seg.offset();
            seg.push(Kind::Extents, n, extents.payload().expect("a copy has records"));
            let mut payload = [0u8; 16];
            payload[..8].copy_from_slice(&e.size.to_le_bytes());
            payload[8..].copy_from_slice(&data.to_le_bytes());
            seg.push(Kind::End, n, &payload);
            let copy = Entry {
                seq: seg.seq,
                msg: n,
                offset,
                end: seg.offset(),
                extents: at,
                octets: seg.offset() - offset,
                ..e
            };
            moved.push((k, copy));
        }
        // The copy is sealed once written: the rest of its preallocation would be disk space
        // no message can use until a restart cuts it off.
        seg.trim()?;
        seg.sync()?;
        Ok(moved)
    }

    /// Writes the done state the copies need beside them, points the index at them, and
    /// deletes the originals.
    fn switch_over(&self, seg: Segment, moved: Vec<(Key, Entry)>, victims: &[u64]) -> io::Result<()> {
        let done: Vec<(u64, Vec<u32>)> = {
            let index = self.lock();
            moved
                .iter()
                .filter_map(|(k, copy)| {
                    let cur = index.messages.get(k)?;
                    let rcpts: Vec<u32> = (0..cur.done.len())
                        .filter(|&r| cur.done.get(r))
                        .map(|r| r as u32)
                        .collect();
                    (!rcpts.is_empty()).then_some((copy.msg, rcpts))
                })
                .collect()
        };
        if !done.is_empty() {
            self.append_done(seg.seq, &done)?;
        }
        let mut index = self.lock();
        if let Some(s) = index.segments.get_mut(&seg.seq) {
            s.sealed = true;
            s.octets = seg.offset();
        }
        for (k, mut copy) in moved {
            let Some((cur, _)) = index.remove(k) else { continue };
            // A done mark that arrived after the state above was written is in the index but
            // not beside the copy: after a crash that costs one duplicate delivery, never a loss.
            copy.done = cur.done;
            index.insert(k, copy);
        }
        let empty = index.segments.get(&seg.seq).is_some_and(|s| s.live == 0);
        drop(index);
        for &victim in victims {
            self.delete_segment(victim)?;
        }
        if empty {
            self.delete_segment(seg.seq)?;
        }
        File::open(&self.dir)?.sync_all()
    }

    /// The envelope of a committed message, read back from its first record.
    fn envelope(&self, e: &Entry) -> io::Result<MessageMeta> {
        let file = File::open(self.dir.join(segment_name(e.seq)))?;
        let payload = read_record(&file, e.offset, Kind::Envelope, e.msg)?;
        record::decode_envelope(&payload).ok_or_else(damaged)
    }

    /// The stored octets of a committed message (trace header, then body): its own records
    /// at the runs its `Extents` record lists, or for a message without one, every record of
    /// its span.
    fn reader(&self, e: &Entry) -> io::Result<MessageReader> {
        let mut file = File::open(self.dir.join(segment_name(e.seq)))?;
        let records = if e.extents == 0 {
            file.seek(SeekFrom::Start(e.offset))?;
            Records::Walk {
                file: BufReader::with_capacity(WINDOW, file.take(e.end - e.offset)),
                record: Vec::new(),
            }
        } else {
            let list = read_record(&file, e.extents, Kind::Extents, e.msg)?;
            // Its runs must be the records before it: the message's octets less its own and
            // the end record's.
            let listed = e
                .octets
                .checked_sub(record::framed(list.len()) as u64 + record::END_RECORD)
                .ok_or_else(damaged)?;
            if !record::extents_fit(&list, e.offset, listed, e.extents) {
                return Err(damaged());
            }
            Records::Extents(Extents {
                file,
                list,
                cursor: ExtentCursor::default(),
                at: 0,
                end: 0,
                window: Vec::new(),
                window_at: 0,
                envelope: true,
            })
        };
        Ok(MessageReader {
            msg: e.msg,
            records,
            ready: 0..0,
        })
    }

    fn queued(&self, e: &Entry) -> io::Result<Queued> {
        Ok(Queued {
            meta: self.envelope(e)?,
            size: e.size,
            done: e.done.to_vec(),
        })
    }
}

/// Recovery cuts a segment at its first record that does not check, which is right for a
/// torn write; a record that checks but is of a kind this build does not know was written by
/// a newer ringmx, and the messages after it may have been acknowledged. The spool is left
/// as it is and the server does not start: run the version that wrote it, or drain it first.
fn refuse_newer(path: &Path, scanned: &scan::Scanned) -> io::Result<()> {
    match scanned.stop {
        Stop::Unknown(kind) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} holds a record of kind {kind} at octet {}, unknown to this build: written by a \
                 newer ringmx? Not cutting it (the messages after it may be acknowledged); start \
                 the version that wrote it, and drain or export the spool before going back",
                path.display(),
                scanned.end
            ),
        )),
        _ => Ok(()),
    }
}

fn damaged() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "damaged spool record")
}

/// What a reader reads of a segment at once: a run of a message's records up to this in one
/// `pread`, a longer one in pieces this large (or one record's, if larger).
const WINDOW: usize = 1 << 16;

/// The payload of the record at `offset` of `file`, which must check and be a `kind` record of
/// message `msg`.
fn read_record(file: &File, offset: u64, kind: Kind, msg: u64) -> io::Result<Vec<u8>> {
    let mut header = [0u8; record::HEADER];
    file.read_exact_at(&mut header, offset).map_err(eof_damaged)?;
    let len = record::payload_len(&header).map_err(|_| damaged())?;
    let mut buf = vec![0u8; record::HEADER + len];
    file.read_exact_at(&mut buf, offset).map_err(eof_damaged)?;
    match record::decode(&buf) {
        Ok((rec, _)) if rec.kind == kind && rec.msg == msg => {
            buf.drain(..record::HEADER);
            Ok(buf)
        }
        _ => Err(damaged()),
    }
}

/// A record the index says is there but the segment is too short for: damage (the segment
/// was cut behind the server's back), not the end of the message.
fn eof_damaged(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        damaged()
    } else {
        e
    }
}

fn not_found(id: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no message {id} in the spool"))
}

/// A message's octets from its `Data` records; every record of its own has its CRC and its
/// message number checked again as it is read.
struct MessageReader {
    msg: u64,
    records: Records,
    /// The part of the current data payload not yet handed out, in the buffer of `records`.
    ready: Range<usize>,
}

/// Where a reader takes a message's records from.
enum Records {
    /// Its own records only, at the runs of its `Extents` record.
    Extents(Extents),
    /// A message without an `Extents` record (written before they existed): every record
    /// from its first to just past its end, skipping the others' unread (their framing was
    /// checked at commit or recovery).
    Walk {
        file: BufReader<io::Take<File>>,
        /// The record being read, kept for the next.
        record: Vec<u8>,
    },
}

/// The runs of a message's records, read one `pread` per run (or per [`WINDOW`] of a long
/// one): the records of other messages between them are never read.
struct Extents {
    file: File,
    /// The `Extents` payload, checked ([`record::extents_fit`]) when the reader was made.
    list: Vec<u8>,
    cursor: ExtentCursor,
    /// The next record, and the end of the run it is in.
    at: u64,
    end: u64,
    /// Octets of the segment from `window_at`.
    window: Vec<u8>,
    window_at: u64,
    /// The first record, still to come, is the envelope (read apart by `LogSpool::envelope`).
    envelope: bool,
}

impl Extents {
    /// The window range holding `[self.at, self.at + need)`, read first if it does not; `need`
    /// lies within the run.
    fn window(&mut self, need: usize) -> io::Result<Range<usize>> {
        let held = self.window_at + self.window.len() as u64;
        if self.at < self.window_at || self.at + need as u64 > held {
            let len = ((self.end - self.at) as usize).min(WINDOW).max(need);
            self.window.resize(len, 0);
            self.file
                .read_exact_at(&mut self.window, self.at)
                .map_err(eof_damaged)?;
            self.window_at = self.at;
        }
        let from = (self.at - self.window_at) as usize;
        Ok(from..from + need)
    }

    /// The window range of the next data payload, or `None` after the last run.
    fn next(&mut self, msg: u64) -> io::Result<Option<Range<usize>>> {
        loop {
            if self.at == self.end {
                match self.cursor.next(&self.list) {
                    Some((start, end)) => (self.at, self.end) = (start, end),
                    None => return Ok(None),
                }
            }
            let room = self.end - self.at;
            if room < record::HEADER as u64 {
                return Err(damaged());
            }
            let head = self.window(record::HEADER)?;
            let len = record::payload_len(&self.window[head]).map_err(|_| damaged())?;
            let whole = record::framed(len);
            if whole as u64 > room {
                return Err(damaged());
            }
            let range = self.window(whole)?;
            let (rec, _) = record::decode(&self.window[range.clone()]).map_err(|_| damaged())?;
            let kind = rec.kind;
            if rec.msg != msg {
                return Err(damaged());
            }
            self.at += whole as u64;
            match (std::mem::take(&mut self.envelope), kind) {
                (true, Kind::Envelope) => {}
                (false, Kind::Data) => return Ok(Some(range.start + record::HEADER..range.end)),
                _ => return Err(damaged()),
            }
        }
    }
}

/// The next record of the walk: the range of its data payload in `record`, or `None` at the
/// message's end.
fn walk_next(
    file: &mut BufReader<io::Take<File>>,
    record: &mut Vec<u8>,
    msg: u64,
) -> io::Result<Option<Range<usize>>> {
    loop {
        let mut header = [0u8; record::HEADER];
        match file.read_exact(&mut header) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            r => r?,
        }
        let len = record::payload_len(&header).map_err(|_| damaged())?;
        if record::header_msg(&header) != msg {
            file.seek_relative(len as i64)?;
            continue;
        }
        record.clear();
        record.extend_from_slice(&header);
        record.resize(record::HEADER + len, 0);
        file.read_exact(&mut record[record::HEADER..])?;
        let (rec, _) = record::decode(record).map_err(|_| damaged())?;
        match rec.kind {
            Kind::Data => return Ok(Some(record::HEADER..record.len())),
            Kind::End => return Ok(None),
            _ => {}
        }
    }
}

impl Read for MessageReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.ready.is_empty() {
            let next = match &mut self.records {
                Records::Extents(x) => x.next(self.msg)?,
                Records::Walk { file, record } => walk_next(file, record, self.msg)?,
            };
            match next {
                Some(range) => self.ready = range,
                None => return Ok(0),
            }
        }
        let buf = match &self.records {
            Records::Extents(x) => &x.window,
            Records::Walk { record, .. } => record,
        };
        let n = out.len().min(self.ready.len());
        out[..n].copy_from_slice(&buf[self.ready.start..self.ready.start + n]);
        self.ready.start += n;
        Ok(n)
    }
}

impl Queue for LogSpool {
    fn list(&self) -> io::Result<Vec<Queued>> {
        let mut entries: Vec<Entry> = self.lock().messages.values().cloned().collect();
        entries.sort_by_key(|e| (e.seq, e.offset));
        let mut out = Vec::with_capacity(entries.len());
        for e in &entries {
            match self.queued(e) {
                Ok(q) => out.push(q),
                // Its segment was compacted or deleted since the snapshot.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        out.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
        Ok(out)
    }

    fn open(&self, id: &str) -> io::Result<(Queued, Box<dyn Read + Send>)> {
        let (_, e) = self.entry(id)?;
        let reader = self.reader(&e)?;
        Ok((self.queued(&e)?, Box::new(reader)))
    }

    fn get(&self, id: &str) -> io::Result<Queued> {
        let (_, e) = self.entry(id)?;
        self.queued(&e)
    }

    fn content(&self, id: &str) -> io::Result<Box<dyn Read + Send>> {
        let (_, e) = self.entry(id)?;
        Ok(Box::new(self.reader(&e)?))
    }

    fn mark_done(&self, id: &str, recipient: usize) -> io::Result<()> {
        self.mark(id, Some(recipient))
    }

    fn delete(&self, id: &str) -> io::Result<()> {
        self.mark(id, None)
    }

    /// One append and one `fdatasync` per segment for the whole batch, instead of one each.
    fn mark_done_many(&self, marks: &[(String, usize)]) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "spool opened read-only",
            ));
        }
        let mut by_segment: BTreeMap<u64, BTreeMap<u64, Vec<u32>>> = BTreeMap::new();
        let mut found = Vec::with_capacity(marks.len());
        {
            let index = self.lock();
            for (id, r) in marks {
                let Some(k) = key(id) else { continue };
                let Some(e) = index.messages.get(&k) else { continue };
                if *r >= e.done.len() {
                    continue;
                }
                by_segment
                    .entry(e.seq)
                    .or_default()
                    .entry(e.msg)
                    .or_default()
                    .push(*r as u32);
                found.push((k, e.seq, *r));
            }
        }
        for (seq, msgs) in &by_segment {
            let records: Vec<(u64, Vec<u32>)> = msgs.iter().map(|(m, r)| (*m, r.clone())).collect();
            self.append_done(*seq, &records)?;
        }
        let mut dead = Vec::new();
        {
            let mut index = self.lock();
            for (k, seq, r) in found {
                // Compacted meanwhile: the copy is in another segment, whose done file lacks
                // this mark; after a crash that is one duplicate delivery, never a loss.
                let Some(cur) = index.messages.get_mut(&k) else {
                    continue;
                };
                if cur.seq != seq {
                    continue;
                }
                cur.done.set(r);
                if !cur.done.live() && index.remove(k).is_some_and(|(_, d)| d) {
                    dead.push(seq);
                }
            }
        }
        for seq in &dead {
            self.delete_segment(*seq)?;
        }
        if !dead.is_empty() {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}
