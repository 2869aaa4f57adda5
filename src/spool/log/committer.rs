//! A worker's log committer: appends each message's records to the worker's segment as they stream, and makes every message that ended since the last flush durable with one `fdatasync` per segment.

use super::record::{ExtentList, Kind};
use super::segment::Segment;
use super::{Committed, LogSpool};
use crate::spool::format::received_header;
use crate::spool::{Backlog, Batching, CommitClock, Done, Job, MessageMeta, SpoolStats};
use crate::wake::Wake;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A message between its start and its commit.
struct Open {
    meta: Box<MessageMeta>,
    /// The segment it is written to, by sequence number; `None` once it has failed.
    seq: Option<u64>,
    msg: u64,
    offset: u64,
    /// Body octets (without the trace header), and all data octets.
    size: u64,
    data: u64,
    /// Octets of its own records so far: the records of other messages come between them.
    octets: u64,
    /// Where those records are, for its `Extents` record.
    extents: ExtentList,
}

/// Full segments that may keep their descriptor open: past this, the one written longest ago
/// closes it ([`Segment::close_descriptor`]) and opens it again when written. A segment stays
/// in `older` while any message of it is in progress, and a slow client (a body at the
/// minimum data rate, a dripping attacker) can keep one there for minutes while the fast ones
/// fill new segments: without a bound each would hold a descriptor, and the descriptor budget
/// (src/descriptors.rs) would have to reserve one per connection for them.
pub(in crate::spool) const OLDER_OPEN: usize = 4;

/// Segments this committer writes: `current` takes new messages; `older` ones are full but
/// still hold messages in progress, which finish there (a message never spans segments).
struct Segments {
    current: Option<Segment>,
    /// With the turn each was last written in, so the least recently written gives up its
    /// descriptor first.
    older: Vec<(Segment, u64)>,
    turn: u64,
}

impl Segments {
    fn get(&mut self, seq: u64) -> Option<&mut Segment> {
        if self.current.as_ref().is_some_and(|s| s.seq == seq) {
            return self.current.as_mut();
        }
        self.turn += 1;
        let i = self.older.iter().position(|(s, _)| s.seq == seq)?;
        self.older[i].1 = self.turn;
        if !self.older[i].0.has_descriptor() {
            self.bound_descriptors(Some(i));
        }
        Some(&mut self.older[i].0)
    }

    fn all(&mut self) -> impl Iterator<Item = &mut Segment> {
        self.current
            .iter_mut()
            .chain(self.older.iter_mut().map(|(s, _)| s))
    }

    fn set_aside(&mut self, seg: Segment) {
        self.turn += 1;
        self.older.push((seg, self.turn));
        self.bound_descriptors(Some(self.older.len() - 1));
    }

    fn take_older(&mut self, seq: u64) -> Option<Segment> {
        let i = self.older.iter().position(|(s, _)| s.seq == seq)?;
        Some(self.older.swap_remove(i).0)
    }

    /// Closes descriptors of the least recently written older segments until at most
    /// [`OLDER_OPEN`] are open, counting `keep` (about to be written) as open. A segment whose
    /// buffer cannot be written keeps its descriptor; its next write or sync reports the error.
    fn bound_descriptors(&mut self, keep: Option<usize>) {
        let open = |older: &[(Segment, u64)]| {
            older
                .iter()
                .enumerate()
                .filter(|(i, (s, _))| s.has_descriptor() || Some(*i) == keep)
                .count()
        };
        while open(&self.older) > OLDER_OPEN {
            let lru = self
                .older
                .iter()
                .enumerate()
                .filter(|(i, (s, _))| s.has_descriptor() && Some(*i) != keep)
                .min_by_key(|(_, (_, turn))| *turn)
                .map(|(i, _)| i);
            let Some(i) = lru else { break };
            if self.older[i].0.close_descriptor().is_err() {
                break;
            }
        }
    }
}

pub(in crate::spool) struct Committer {
    log: Arc<LogSpool>,
    hostname: String,
    segments: Segments,
    /// Messages in progress per segment, so a full one is sealed when its last one is done.
    in_progress: HashMap<u64, usize>,
    next_msg: u64,
    open: HashMap<u64, Open>,
    ended: Vec<(u64, Open)>,
    record: Vec<u8>,
    backlog: Arc<Backlog>,
    done: Sender<Done>,
    feed: Option<Sender<String>>,
    waker: Arc<dyn Wake>,
    stats: SpoolStats,
    clock: CommitClock,
}

impl Committer {
    pub(in crate::spool) fn new(
        log: Arc<LogSpool>,
        hostname: String,
        backlog: Arc<Backlog>,
        done: Sender<Done>,
        feed: Option<Sender<String>>,
        waker: Arc<dyn Wake>,
        clock: CommitClock,
    ) -> Committer {
        Committer {
            log,
            hostname,
            segments: Segments {
                current: None,
                older: Vec::new(),
                turn: 0,
            },
            in_progress: HashMap::new(),
            next_msg: 0,
            open: HashMap::new(),
            ended: Vec::new(),
            record: Vec::with_capacity(512),
            backlog,
            done,
            feed,
            waker,
            stats: SpoolStats::default(),
            clock,
        }
    }

    /// Runs until the worker drops its sender; messages still open then are never committed
    /// (their records stay without an end, which recovery drops).
    pub(in crate::spool) fn run(mut self, jobs: Receiver<Job>) -> SpoolStats {
        let (backlog, waker) = (self.backlog.clone(), self.waker.clone());
        crate::spool::run_batches(&mut self, &jobs, &backlog, &*waker);
        // Write what is buffered so the segment ends on a record boundary; nothing of it is
        // committed.
        for seg in self.segments.all() {
            let _ = seg.flush();
        }
        let sealed: Vec<u64> = self.segments.all().map(|s| s.seq).collect();
        for seq in sealed {
            self.log.seal(seq);
        }
        self.stats
    }

    /// Opens a message in the current segment (a new one if there is none or it is full):
    /// its envelope record, then its trace header as its first data.
    fn start(&mut self, meta: Box<MessageMeta>) -> Open {
        self.next_msg += 1;
        let msg = self.next_msg;
        let mut open = Open {
            meta,
            seq: None,
            msg,
            offset: 0,
            size: 0,
            data: 0,
            octets: 0,
            extents: ExtentList::default(),
        };
        if let Err(e) = self.current_segment() {
            tracing::error!(id = %open.meta.id, error = %e, "spool segment unavailable");
            return open;
        }
        let header = received_header(&open.meta, &self.hostname);
        self.record.clear();
        super::record::encode_envelope(&open.meta, &mut self.record);
        let seg = self.segments.current.as_mut().expect("created above");
        open.offset = seg.offset();
        open.octets = seg.push(Kind::Envelope, msg, &self.record);
        open.extents.add(open.offset, open.octets);
        let seq = seg.seq;
        open.data = header.len() as u64;
        let at = seg.offset();
        match seg.push_data(msg, &header) {
            Ok(octets) => {
                open.octets += octets;
                open.extents.add(at, octets);
                open.seq = Some(seq);
                *self.in_progress.entry(seq).or_default() += 1;
            }
            Err(e) => self.retire(seq, &e),
        }
        open
    }

    /// Makes sure there is a current segment with room, sealing or setting aside a full one.
    fn current_segment(&mut self) -> io::Result<()> {
        if let Some(seg) = &self.segments.current {
            if !seg.full() {
                return Ok(());
            }
            let seg = self.segments.current.take().expect("checked");
            self.set_aside(seg);
        }
        let seg = self.log.create_segment()?;
        self.segments.current = Some(seg);
        Ok(())
    }

    /// A segment that takes no new messages: sealed now if nothing is in progress in it.
    fn set_aside(&mut self, mut seg: Segment) {
        if self.in_progress.get(&seg.seq).copied().unwrap_or(0) == 0 {
            let _ = seg.flush();
            self.in_progress.remove(&seg.seq);
            self.log.seal(seg.seq);
        } else {
            self.segments.set_aside(seg);
        }
    }

    /// A message of segment `seq` was committed, failed or aborted.
    fn finished(&mut self, seq: u64) {
        let left = self.in_progress.entry(seq).or_default();
        *left = left.saturating_sub(1);
        if *left > 0 {
            return;
        }
        if let Some(mut seg) = self.segments.take_older(seq) {
            let _ = seg.flush();
            self.in_progress.remove(&seq);
            self.log.seal(seq);
        }
    }

    /// After a write or `fdatasync` error: the segment takes nothing more, and every message
    /// in progress or ended in it fails (`452`); none is acknowledged. Messages committed in
    /// earlier batches are durable already and stay.
    fn retire(&mut self, seq: u64, e: &io::Error) {
        tracing::error!(segment = seq, error = %e, "spool segment write failed; segment retired");
        let is_current = self.segments.current.as_ref().is_some_and(|s| s.seq == seq);
        let seg = if is_current {
            self.segments.current.take()
        } else {
            self.segments.take_older(seq)
        };
        if let Some(seg) = seg {
            seg.cut_to_durable();
        }
        for open in self
            .open
            .values_mut()
            .chain(self.ended.iter_mut().map(|(_, o)| o))
        {
            if open.seq == Some(seq) {
                open.seq = None;
            }
        }
        self.in_progress.remove(&seq);
        self.log.seal(seq);
    }
}

impl Batching for Committer {
    fn handle(&mut self, job: Job) {
        match job {
            Job::Start { key, meta } => {
                let open = self.start(meta);
                self.open.insert(key, open);
            }
            Job::Chunk { key, data } => {
                self.backlog.queued.fetch_sub(data.len(), Ordering::SeqCst);
                let Some(open) = self.open.get_mut(&key) else {
                    return;
                };
                open.size += data.len() as u64;
                open.data += data.len() as u64;
                let Some(seq) = open.seq else { return };
                let msg = open.msg;
                let written = match self.segments.get(seq) {
                    Some(seg) => {
                        let at = seg.offset();
                        seg.push_data(msg, &data).map(|octets| (at, octets))
                    }
                    None => Err(io::Error::other("segment retired")),
                };
                match written {
                    Ok((at, octets)) => {
                        open.octets += octets;
                        open.extents.add(at, octets);
                    }
                    Err(e) => self.retire(seq, &e),
                }
            }
            Job::End { key, at } => {
                if let Some(open) = self.open.remove(&key) {
                    self.clock.ended(key, at);
                    self.ended.push((key, open));
                }
            }
            Job::Abort { key } => {
                self.clock.aborted(key);
                let open = self.open.remove(&key).or_else(|| {
                    let i = self.ended.iter().position(|(k, _)| *k == key)?;
                    Some(self.ended.swap_remove(i).1)
                });
                // Its records stay in the segment without an end record: never committed.
                if let Some(Open { seq: Some(seq), .. }) = open {
                    self.finished(seq);
                }
            }
        }
    }

    fn ended(&self) -> bool {
        !self.ended.is_empty()
    }

    /// Appends the extents and end records of every message that ended, writes each segment's
    /// buffer, and `fdatasync`s each segment written to once; then registers the messages with
    /// the spool and reports them to the worker, in the order they ended.
    fn commit_batch(&mut self) {
        let started = std::time::Instant::now();
        let mut batch = std::mem::take(&mut self.ended);
        let mut ends = Vec::with_capacity(batch.len());
        for (_, open) in &mut batch {
            let end = open.seq.and_then(|seq| {
                let seg = self.segments.get(seq)?;
                let mut octets = open.octets;
                // Just before the end record, after every record it lists: durable with it in
                // this batch's sync, and committed by it.
                let extents = open.extents.payload().map(|p| {
                    let at = seg.offset();
                    octets += seg.push(Kind::Extents, open.msg, p);
                    at
                });
                let mut payload = [0u8; 16];
                payload[..8].copy_from_slice(&open.size.to_le_bytes());
                payload[8..].copy_from_slice(&open.data.to_le_bytes());
                octets += seg.push(Kind::End, open.msg, &payload);
                Some((seg.offset(), octets, extents))
            });
            ends.push(end);
        }
        let mut failed = Vec::new();
        let mut syncs = 0u64;
        for seg in self.segments.all() {
            let res = seg.flush().and_then(|()| {
                if seg.dirty() {
                    syncs += 1;
                    seg.sync()
                } else {
                    Ok(())
                }
            });
            if let Err(e) = res {
                failed.push((seg.seq, e));
            }
        }
        for (seq, e) in &failed {
            self.retire(*seq, e);
        }
        // The syncs above opened again the older segments that had been written.
        self.segments.bound_descriptors(None);
        // Retiring cleared only the messages still open or ended since: this batch was taken
        // out of `ended` above, so a message of it is durable only if its segment is not one
        // that just failed.
        let mut committed = Vec::with_capacity(batch.len());
        let mut results = Vec::with_capacity(batch.len());
        for ((key, open), end) in batch.into_iter().zip(ends) {
            let id = open.meta.id.clone();
            let ok = match (open.seq, end) {
                (Some(seq), Some((end, octets, extents))) if !failed.iter().any(|(f, _)| *f == seq) => {
                    match super::key(&id) {
                        Some(key) => committed.push(Committed {
                            seq,
                            msg: open.msg,
                            offset: open.offset,
                            end,
                            extents,
                            octets,
                            size: open.size,
                            key,
                            recipients: open.meta.recipients.len(),
                        }),
                        None => tracing::error!(id = %id, "queue id does not fit the spool index"),
                    }
                    true
                }
                _ => false,
            };
            results.push(Done { key, id, ok });
        }
        self.log.register(&committed);
        for c in &committed {
            self.finished(c.seq);
        }
        self.stats.batches += 1;
        self.stats.syncs += syncs;
        self.stats.committed += committed.len() as u64;
        self.stats.failed += (results.len() - committed.len()) as u64;
        tracing::debug!(
            messages = results.len(),
            syncs,
            micros = started.elapsed().as_micros() as u64,
            "log batch committed"
        );
        self.clock.batch_done(results.iter().map(|done| done.key));
        self.clock.metrics.publish(&self.stats);
        for done in results {
            if let (true, Some(feed)) = (done.ok, &self.feed) {
                let _ = feed.send(done.id.clone());
            }
            let _ = self.done.send(done);
        }
    }
}
