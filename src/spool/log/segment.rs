//! One segment file being written: created preallocated, records buffered and written at its end, made durable with `fdatasync`.

use super::record::{self, Kind, MAX_PAYLOAD};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Buffered records are written once they reach this, so a large message reaches the disk as
/// it streams and the buffer stays small; smaller batches are written at the commit.
const FLUSH_AT: usize = 256 << 10;

/// The file name of segment `seq`: hexadecimal, zero-padded, so names sort in order.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:016X}.seg")
}

/// The file name of the done records of segment `seq`.
pub fn done_name(seq: u64) -> String {
    format!("{seq:016X}.done")
}

/// The sequence number in a segment's (or done file's) name, and which of the two it is.
pub fn parse_name(name: &str) -> Option<(u64, bool)> {
    let (stem, done) = if let Some(stem) = name.strip_suffix(".seg") {
        (stem, false)
    } else {
        (name.strip_suffix(".done")?, true)
    };
    if stem.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(stem, 16).ok()?, done))
}

/// A segment this process appends to.
pub struct Segment {
    pub seq: u64,
    path: PathBuf,
    /// `None` while set aside with its descriptor closed ([`Segment::close_descriptor`]):
    /// opened again when it is next written or synced.
    file: Option<File>,
    /// Octets on disk (written, not necessarily durable).
    written: u64,
    /// Records not yet written.
    buf: Vec<u8>,
    /// The preallocated size: no new message starts once it is reached.
    size: u64,
    /// Written since the last `fdatasync`.
    dirty: bool,
    /// Octets made durable by the last `fdatasync` that succeeded.
    durable: u64,
}

impl Segment {
    /// Creates segment `seq` in `dir`, preallocated to `size` octets, with its first record
    /// durable and its name in the directory durable: after this, commits never change the
    /// file's size or create an inode, so one `fdatasync` makes a batch durable.
    pub fn create(dir: &Path, seq: u64, size: u64) -> io::Result<Segment> {
        let path = dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&path)?;
        let made = (|| {
            // SAFETY: the fd is open for the call; fallocate touches no memory of ours.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut seg = Segment {
                seq,
                path: path.clone(),
                file: Some(file),
                written: 0,
                buf: Vec::with_capacity(FLUSH_AT + MAX_PAYLOAD),
                size,
                dirty: false,
                durable: 0,
            };
            seg.push(Kind::Segment, 0, &record::segment_payload(seq));
            seg.flush()?;
            seg.sync()?;
            File::open(dir)?.sync_all()?;
            Ok(seg)
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        made
    }

    /// Buffers one record (a payload of at most [`MAX_PAYLOAD`]); returns its octets.
    pub fn push(&mut self, kind: Kind, msg: u64, payload: &[u8]) -> u64 {
        record::append(&mut self.buf, kind, msg, payload);
        record::framed(payload.len()) as u64
    }

    /// Buffers `data` as `Data` records of message `msg`, writing the buffer out whenever it
    /// is large; returns the octets of the records, or the first write error.
    pub fn push_data(&mut self, msg: u64, data: &[u8]) -> io::Result<u64> {
        let mut octets = 0;
        for piece in data.chunks(MAX_PAYLOAD) {
            octets += self.push(Kind::Data, msg, piece);
            if self.buf.len() >= FLUSH_AT {
                self.flush()?;
            }
        }
        Ok(octets)
    }

    /// The offset the next buffered record will have.
    pub fn offset(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    /// Whether the preallocated space is used up: new messages go to a new segment.
    pub fn full(&self) -> bool {
        self.offset() >= self.size
    }

    /// The open file, opened again if its descriptor was closed.
    fn file(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            self.file = Some(OpenOptions::new().read(true).write(true).open(&self.path)?);
        }
        Ok(self.file.as_ref().expect("opened above"))
    }

    /// Whether the segment holds a descriptor now.
    pub fn has_descriptor(&self) -> bool {
        self.file.is_some()
    }

    /// Writes what is buffered and closes the descriptor, for a full segment that only a few
    /// slow messages still write to: the committer keeps a bounded number of descriptors
    /// however many such segments there are. What was written and not yet synced stays
    /// dirty: the next [`Segment::sync`] opens the file again, and `fdatasync` on any
    /// descriptor of a file covers all its written pages; a writeback error no descriptor has
    /// seen yet is reported to one opened after it (Linux's errseq_t).
    pub fn close_descriptor(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file = None;
        Ok(())
    }

    /// Writes the buffered records at the end of what is on disk.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let (buf, at) = (std::mem::take(&mut self.buf), self.written);
        let res = self.file().and_then(|f| f.write_all_at(&buf, at));
        self.buf = buf;
        res?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        self.dirty = true;
        Ok(())
    }

    /// Writes the buffered records and gives back the preallocated space past them, for a
    /// segment that takes nothing more (a compaction's copy); [`Segment::sync`] makes the new
    /// length durable with the records.
    pub fn trim(&mut self) -> io::Result<()> {
        self.flush()?;
        let len = self.written;
        self.file()?.set_len(len)?;
        self.dirty = true;
        Ok(())
    }

    /// Whether records were written since the last [`Segment::sync`].
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// `fdatasync`: everything written so far is durable. After an error the segment must
    /// not be used again: the kernel may have dropped the pages it could not write and
    /// reports that once (the fsync-gate lesson of PostgreSQL, 2018).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file()?.sync_data()?;
        self.dirty = false;
        self.durable = self.written;
        Ok(())
    }

    /// After a failed write or sync: cuts the segment back to what the last good `fdatasync`
    /// made durable, which holds every message committed in it, so what a failure left half
    /// written does not read as damage (`spool check`) while the server runs on. Best effort:
    /// if the cut fails too, recovery cuts the same place at the next start.
    pub fn cut_to_durable(mut self) {
        let durable = self.durable;
        if self
            .file()
            .and_then(|f| f.set_len(durable).and_then(|()| f.sync_all()))
            .is_err()
        {
            tracing::warn!(
                segment = self.seq,
                "cannot cut a retired segment back to its last commit"
            );
        }
    }
}
