//! The durable spool: a message is acknowledged only once its `.eml` and `.json` are on disk, with fsyncs shared per batch.
//!
//! Layout: `DIR/<id>.eml` is a `Received:` trace header (RFC 5321 §4.4) followed by the
//! message exactly as received after dot-unstuffing; `DIR/<id>.json` is its envelope. Both are
//! written in `DIR/tmp/` and renamed into `DIR`; the `.json` is the commit marker. Writing in a
//! separate, small directory keeps file creation cheap (inserting a name into a directory of
//! 100,000 entries costs several times more than into one of 100) and leaves the big directory
//! one insertion per file.
//!
//! Each worker has one committer thread, so the worker's event loop never touches the disk.
//! The worker streams `Start`, `Chunk`, `End` and `Abort` jobs; the committer writes body bytes
//! as they come and, whenever it finds ended messages, commits all of them together:
//!
//! 1. write each `tmp/<id>.json`; start writeback of every file of the batch
//!    (`sync_file_range`), so their blocks are allocated in one journal transaction;
//! 2. `fdatasync` each file: the first waits for that transaction, the others find their data
//!    and metadata mostly durable already (with [`SpoolSync::Filesystem`], steps 1 and 2 are
//!    one `syncfs` instead);
//! 3. rename each `tmp/<id>.eml` to `<id>.eml`, then each `tmp/<id>.json` to `<id>.json`;
//! 4. fsync the directory once for the whole batch; only then are the ids reported back (to
//!    the worker's channel, then its waker), and the sessions send `250`.
//!
//! A crash before step 4 completes can leave either name without the other, or files in
//! `tmp/`; none of those was acknowledged, and [`recover`] removes all of them at start.

use crate::config::SpoolSync;
use crate::wake::Wake;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// Crockford's base32: no I, L, O, U, so an id survives being read aloud or retyped, and is
/// safe in file names and in an SMTP reply.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn base32(mut v: u64, min_digits: usize, out: &mut String) {
    let mut digits = [0u8; 13];
    let mut n = 0;
    while v > 0 || n < min_digits {
        digits[n] = ALPHABET[(v % 32) as usize];
        v /= 32;
        n += 1;
    }
    out.extend(digits[..n].iter().rev().map(|&d| d as char));
}

/// Queue ids unique across workers and restarts: the worker's start time in microseconds,
/// the worker number, and a counter. Ids of one worker sort in order of arrival.
#[derive(Debug)]
pub struct IdGen {
    prefix: String,
    counter: u64,
}

impl IdGen {
    pub fn new(worker: usize) -> IdGen {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut prefix = String::with_capacity(24);
        base32(micros, 11, &mut prefix);
        base32(worker as u64, 2, &mut prefix);
        IdGen { prefix, counter: 0 }
    }

    pub fn next_id(&mut self) -> String {
        self.counter += 1;
        let mut id = self.prefix.clone();
        base32(self.counter, 5, &mut id);
        id
    }
}

/// What the spool records about a message besides its content.
#[derive(Debug, Clone)]
pub struct MessageMeta {
    pub id: String,
    pub helo: Vec<u8>,
    pub esmtp: bool,
    pub smtputf8: bool,
    pub client: SocketAddr,
    pub mail_from: Vec<u8>,
    pub mail_params: Vec<u8>,
    pub recipients: Vec<Vec<u8>>,
    pub received: SystemTime,
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

struct Civil {
    year: i64,
    month: u32,
    day: u32,
    weekday: usize,
    hms: (u64, u64, u64),
}

fn civil(t: SystemTime) -> Civil {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let s = secs % 86_400;
    Civil {
        year,
        month,
        day,
        // 1970-01-01 was a Thursday.
        weekday: ((days + 4) % 7) as usize,
        hms: (s / 3600, s / 60 % 60, s % 60),
    }
}

/// A date in RFC 5322 §3.3 form, in UTC: `Sun, 29 Nov 2026 02:25:04 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = civil(t);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[c.weekday],
        c.day,
        MONTHS[c.month as usize - 1],
        c.year,
        c.hms.0,
        c.hms.1,
        c.hms.2
    )
}

/// A timestamp in RFC 3339 form, in UTC: `2026-11-29T02:25:04Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let c = civil(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hms.0, c.hms.1, c.hms.2
    )
}

/// The client's address as an RFC 5321 §4.1.3 address literal.
fn address_literal(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("[{}]", a.ip()),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{}]", a.ip()),
        },
    }
}

/// The `Received:` trace header (RFC 5321 §4.4): `from` the HELO name with the client's
/// address as TCP-info, `by` this host, `with` the protocol (RFC 3848: SMTP/ESMTP;
/// RFC 6531 §3.7.3: UTF8SMTP), the queue id, `for` the recipient when there is exactly one,
/// and the date. Folded before each clause so it stays short.
pub fn received_header(meta: &MessageMeta, hostname: &str) -> Vec<u8> {
    let with = match (meta.esmtp, meta.smtputf8) {
        (_, true) => "UTF8SMTP",
        (true, false) => "ESMTP",
        (false, false) => "SMTP",
    };
    let mut h = Vec::with_capacity(256);
    h.extend_from_slice(b"Received: from ");
    h.extend_from_slice(&meta.helo);
    let _ = write!(
        h,
        " ({})\r\n\tby {} (ringmx) with {} id {}",
        address_literal(&meta.client),
        hostname,
        with,
        meta.id
    );
    if let [rcpt] = meta.recipients.as_slice() {
        h.extend_from_slice(b"\r\n\tfor <");
        h.extend_from_slice(rcpt);
        h.push(b'>');
    }
    let _ = write!(h, ";\r\n\t{}\r\n", rfc5322_date(meta.received));
    h
}

/// Appends `bytes` as a JSON string (RFC 8259 §7). Valid UTF-8 is kept as is; each byte of an
/// invalid sequence (possible in an address only with SMTPUTF8) becomes `\u00XX`, the
/// convention of Latin-1 surrogates, so nothing is lost silently.
fn json_string(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            let _ = write!(out, "\\u{:04x}", b);
        }
    }
    out.push('"');
}

/// The envelope file: id, HELO name, client address, MAIL FROM with its parameters,
/// recipients, size of the stored message (without the trace header) and time received.
pub fn envelope_json(meta: &MessageMeta, size: u64) -> String {
    let mut j = String::with_capacity(256);
    j.push_str("{\"id\":");
    json_string(&mut j, meta.id.as_bytes());
    j.push_str(",\"helo\":");
    json_string(&mut j, &meta.helo);
    j.push_str(",\"client\":");
    json_string(&mut j, meta.client.to_string().as_bytes());
    j.push_str(",\"mail_from\":");
    json_string(&mut j, &meta.mail_from);
    j.push_str(",\"mail_params\":");
    json_string(&mut j, &meta.mail_params);
    j.push_str(",\"recipients\":[");
    for (i, r) in meta.recipients.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        json_string(&mut j, r);
    }
    let _ = writeln!(
        j,
        "],\"size\":{size},\"received\":\"{}\"}}",
        rfc3339(meta.received)
    );
    j
}

/// Where messages are written before their commit.
const TMP: &str = "tmp";

/// Removes what a crash can leave behind, none of it acknowledged: everything in `tmp/`, an
/// `.eml` without its `.json`, a `.json` without its `.eml`. Creates the directories if needed.
pub fn recover(dir: &Path) -> io::Result<usize> {
    let tmp = dir.join(TMP);
    fs::create_dir_all(&tmp)?;
    let mut removed = 0;
    for entry in fs::read_dir(&tmp)? {
        let path = entry?.path();
        tracing::warn!(file = %path.display(), "removing uncommitted spool leftover");
        fs::remove_file(&path)?;
        removed += 1;
    }
    let mut names = std::collections::HashSet::new();
    for entry in fs::read_dir(dir)? {
        names.insert(entry?.file_name().to_string_lossy().into_owned());
    }
    for name in &names {
        let orphan = if let Some(id) = name.strip_suffix(".eml") {
            !names.contains(&format!("{id}.json"))
        } else if let Some(id) = name.strip_suffix(".json") {
            !names.contains(&format!("{id}.eml"))
        } else {
            false
        };
        if orphan {
            tracing::warn!(file = %dir.join(name).display(), "removing uncommitted spool leftover");
            fs::remove_file(dir.join(name))?;
            removed += 1;
        }
    }
    if removed > 0 {
        File::open(dir)?.sync_all()?;
    }
    Ok(removed)
}

/// A job for the committer, keyed by the session's token.
#[derive(Debug)]
pub enum Job {
    Start { key: u64, meta: Box<MessageMeta> },
    Chunk { key: u64, data: Vec<u8> },
    End { key: u64 },
    Abort { key: u64 },
}

/// The committer's answer to an `End`.
#[derive(Debug)]
pub struct Done {
    pub key: u64,
    pub id: String,
    pub ok: bool,
}

/// The worker's side of its committer.
pub struct Spool {
    jobs: Option<Sender<Job>>,
    pub results: Receiver<Done>,
    queued: Arc<AtomicUsize>,
    /// The worker found the queue full and waits for the committer to wake it.
    waiting: Arc<AtomicBool>,
    limit: usize,
    thread: Option<JoinHandle<()>>,
    pub ids: IdGen,
}

impl Spool {
    /// Starts the committer thread of worker `worker` for the (recovered) directory `dir`.
    pub fn start(
        worker: usize,
        dir: PathBuf,
        hostname: String,
        limit: usize,
        sync: SpoolSync,
        waker: Arc<dyn Wake>,
    ) -> io::Result<Spool> {
        let dir_file = File::open(&dir)?;
        let (jobs, job_rx) = crossbeam_channel::unbounded();
        let (done_tx, results) = crossbeam_channel::unbounded();
        let queued = Arc::new(AtomicUsize::new(0));
        let waiting = Arc::new(AtomicBool::new(false));
        let committer = Committer {
            dir,
            dir_file,
            hostname,
            sync,
            open: HashMap::new(),
            ended: Vec::new(),
            queued: queued.clone(),
            waiting: waiting.clone(),
            limit,
            done: done_tx,
            waker,
        };
        let thread = std::thread::Builder::new()
            .name(format!("ringmx-spool-{worker}"))
            .spawn(move || committer.run(job_rx))?;
        Ok(Spool {
            jobs: Some(jobs),
            results,
            queued,
            waiting,
            limit,
            thread: Some(thread),
            ids: IdGen::new(worker),
        })
    }

    /// Queues a job; a body chunk counts towards the queue limit until written.
    pub fn submit(&self, job: Job) {
        if let Job::Chunk { data, .. } = &job {
            self.queued.fetch_add(data.len(), Ordering::SeqCst);
        }
        if let Some(jobs) = &self.jobs {
            // The committer outlives every send: it exits only when this sender is dropped.
            let _ = jobs.send(job);
        }
    }

    /// Whether body bytes handed to the committer but not yet taken by it exceed the limit;
    /// sessions in DATA stop being read until the committer catches up, and then it wakes the
    /// worker. The flag is raised before the queue is looked at again, and the committer
    /// lowers its count before it looks at the flag, so one of the two always sees the other:
    /// no wake-up is lost.
    pub fn full(&self) -> bool {
        if self.queued.load(Ordering::SeqCst) <= self.limit {
            return false;
        }
        self.waiting.store(true, Ordering::SeqCst);
        self.queued.load(Ordering::SeqCst) > self.limit
    }

    /// Lets the committer finish every job already queued, then waits for it.
    pub fn finish(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("spool committer panicked");
            }
        }
    }
}

struct Pending {
    meta: Box<MessageMeta>,
    file: Option<BufWriter<File>>,
    size: u64,
    error: Option<io::Error>,
}

struct Committer {
    dir: PathBuf,
    dir_file: File,
    hostname: String,
    sync: SpoolSync,
    open: HashMap<u64, Pending>,
    ended: Vec<(u64, Pending)>,
    queued: Arc<AtomicUsize>,
    waiting: Arc<AtomicBool>,
    limit: usize,
    done: Sender<Done>,
    waker: Arc<dyn Wake>,
}

/// Write buffer per open message: a small message (trace header plus body) reaches the disk
/// in one write; larger body chunks bypass it. Small, because every message in DATA has one.
const WRITE_BUFFER: usize = 8192;

/// Jobs taken per batch, so a stream of body chunks cannot postpone the commit of messages
/// that have already ended.
const BATCH_JOBS: usize = 1024;

impl Committer {
    fn run(mut self, jobs: Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            self.handle(first);
            for job in jobs.try_iter().take(BATCH_JOBS) {
                self.handle(job);
            }
            // A worker that found the queue full waits for this wake (see `Spool::full`).
            let drained = self.queued.load(Ordering::SeqCst) <= self.limit
                && self.waiting.swap(false, Ordering::SeqCst);
            let committed = !self.ended.is_empty();
            if committed {
                self.commit_batch();
            }
            if committed || drained {
                self.waker.wake();
            }
        }
        for (_, pending) in std::mem::take(&mut self.open) {
            self.discard(&pending.meta.id);
        }
    }

    fn path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ext}"))
    }

    fn tmp_path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(TMP).join(format!("{id}.{ext}"))
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Start { key, meta } => {
                let header = received_header(&meta, &self.hostname);
                let path = self.tmp_path(&meta.id, "eml");
                let opened = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o640)
                    .open(&path)
                    .map(|f| BufWriter::with_capacity(WRITE_BUFFER, f));
                let mut pending = Pending {
                    meta,
                    file: None,
                    size: 0,
                    error: None,
                };
                match opened.and_then(|mut f| f.write_all(&header).map(|()| f)) {
                    Ok(f) => pending.file = Some(f),
                    Err(e) => self.fail(&mut pending, e),
                }
                self.open.insert(key, pending);
            }
            Job::Chunk { key, data } => {
                self.queued.fetch_sub(data.len(), Ordering::SeqCst);
                let Some(mut pending) = self.open.remove(&key) else {
                    return;
                };
                pending.size += data.len() as u64;
                if let Some(file) = &mut pending.file {
                    if let Err(e) = file.write_all(&data) {
                        self.fail(&mut pending, e);
                    }
                }
                self.open.insert(key, pending);
            }
            Job::End { key } => {
                if let Some(pending) = self.open.remove(&key) {
                    self.ended.push((key, pending));
                }
            }
            Job::Abort { key } => {
                let pending = self.open.remove(&key).or_else(|| {
                    let i = self.ended.iter().position(|(k, _)| *k == key)?;
                    Some(self.ended.swap_remove(i).1)
                });
                if let Some(pending) = pending {
                    self.discard(&pending.meta.id);
                }
            }
        }
    }

    /// Records the first error of a message and drops what was written of it.
    fn fail(&self, pending: &mut Pending, e: io::Error) {
        tracing::error!(id = %pending.meta.id, error = %e, "spool write failed");
        pending.file = None;
        pending.error.get_or_insert(e);
        self.discard(&pending.meta.id);
    }

    fn discard(&self, id: &str) {
        for ext in ["eml", "json"] {
            let _ = fs::remove_file(self.tmp_path(id, ext));
        }
    }

    fn commit_batch(&mut self) {
        let started = std::time::Instant::now();
        let mut batch = std::mem::take(&mut self.ended);
        // Step 1: finish every file and start its writeback.
        let mut files: Vec<Option<(File, File)>> = Vec::with_capacity(batch.len());
        for (_, pending) in &mut batch {
            if pending.error.is_some() {
                // Already logged and discarded when the write failed.
                files.push(None);
                continue;
            }
            match self.write_files(pending) {
                Ok(pair) => files.push(Some(pair)),
                Err(e) => {
                    self.fail(pending, e);
                    files.push(None);
                }
            }
        }
        // Step 2: wait for the data, one file at a time (after the first, mostly done
        // already), or for the whole filesystem at once.
        match self.sync {
            SpoolSync::File => {
                for (i, (_, pending)) in batch.iter_mut().enumerate() {
                    if let Some((eml, json)) = &files[i] {
                        if let Err(e) = eml.sync_data().and_then(|()| json.sync_data()) {
                            files[i] = None;
                            self.fail(pending, e);
                        }
                    }
                }
            }
            SpoolSync::Filesystem => {
                // SAFETY: the fd is open for the duration of the call.
                if unsafe { libc::syncfs(self.dir_file.as_raw_fd()) } != 0 {
                    let e = io::Error::last_os_error();
                    for (i, (_, pending)) in batch.iter_mut().enumerate() {
                        if files[i].take().is_some() {
                            self.fail(pending, io::Error::new(e.kind(), e.to_string()));
                        }
                    }
                }
            }
        }
        // Step 3: the `.json` last, so its presence means committed.
        for (i, (_, pending)) in batch.iter_mut().enumerate() {
            if files[i].is_some() {
                let id = pending.meta.id.clone();
                let renamed = fs::rename(self.tmp_path(&id, "eml"), self.path(&id, "eml"))
                    .and_then(|()| fs::rename(self.tmp_path(&id, "json"), self.path(&id, "json")));
                if let Err(e) = renamed {
                    files[i] = None;
                    let _ = fs::remove_file(self.path(&id, "eml"));
                    self.fail(pending, e);
                }
            }
        }
        // Step 4: one directory fsync for the batch. If it fails nothing is acknowledged, and
        // the names are removed so no committed entry outlives a 452.
        let dir_ok = match self.dir_file.sync_all() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "spool directory fsync failed");
                false
            }
        };
        tracing::debug!(
            messages = batch.len(),
            micros = started.elapsed().as_micros() as u64,
            "spool batch committed"
        );
        for (i, (key, pending)) in batch.into_iter().enumerate() {
            let ok = dir_ok && files[i].is_some();
            if files[i].is_some() && !dir_ok {
                let _ = fs::remove_file(self.path(&pending.meta.id, "json"));
                let _ = fs::remove_file(self.path(&pending.meta.id, "eml"));
            }
            let _ = self.done.send(Done {
                key,
                id: pending.meta.id.clone(),
                ok,
            });
        }
    }

    /// Flushes `tmp/<id>.eml`, writes `tmp/<id>.json`, and starts writeback of both.
    fn write_files(&self, pending: &mut Pending) -> io::Result<(File, File)> {
        let eml = pending
            .file
            .take()
            .ok_or_else(|| io::Error::other("message file missing"))?
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        let json_path = self.tmp_path(&pending.meta.id, "json");
        let mut json = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(json_path)?;
        json.write_all(envelope_json(&pending.meta, pending.size).as_bytes())?;
        if self.sync == SpoolSync::Filesystem {
            return Ok((eml, json));
        }
        for f in [&eml, &json] {
            // SAFETY: the fd is open for the duration of the call; sync_file_range only
            // starts writeback and touches no memory of ours.
            let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok((eml, json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meta() -> MessageMeta {
        MessageMeta {
            id: "ABC".into(),
            helo: b"client.example".to_vec(),
            esmtp: true,
            smtputf8: false,
            client: "127.0.0.1:4000".parse().unwrap(),
            mail_from: b"a@b.example".to_vec(),
            mail_params: b"SIZE=10".to_vec(),
            recipients: vec![b"c@d.example".to_vec()],
            received: UNIX_EPOCH + Duration::from_secs(1_795_919_104),
        }
    }

    #[test]
    fn dates_in_rfc5322_and_rfc3339_form() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_919_104);
        assert_eq!(rfc5322_date(t), "Sun, 29 Nov 2026 02:25:04 +0000");
        assert_eq!(rfc3339(t), "2026-11-29T02:25:04Z");
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn received_header_names_helo_client_host_protocol_id_recipient_and_date() {
        let h = received_header(&meta(), "mx.test");
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "Received: from client.example ([127.0.0.1])\r\n\tby mx.test (ringmx) with ESMTP id ABC\r\n\
             \tfor <c@d.example>;\r\n\tSun, 29 Nov 2026 02:25:04 +0000\r\n"
        );
        let mut m = meta();
        m.recipients.push(b"e@f.example".to_vec());
        m.smtputf8 = true;
        m.client = "[::1]:25".parse().unwrap();
        let h = String::from_utf8(received_header(&m, "mx.test")).unwrap();
        assert!(h.contains("([IPv6:::1])"), "{h}");
        assert!(h.contains("with UTF8SMTP id ABC;"), "{h}");
        assert!(!h.contains("for <"), "{h}");
    }

    #[test]
    fn json_escapes_quotes_controls_and_invalid_utf8() {
        let mut m = meta();
        m.mail_from = b"\"q\\\x01\"@\xc3\xa9.example\xff".to_vec();
        let j = envelope_json(&m, 42);
        assert!(
            j.contains(r#""mail_from":"\"q\\\u0001\"@é.example\u00ff""#),
            "{j}"
        );
        assert!(
            j.contains(r#""size":42,"received":"2026-11-29T02:25:04Z"}"#),
            "{j}"
        );
        assert!(j.contains(r#""recipients":["c@d.example"]"#), "{j}");
    }

    #[test]
    fn ids_are_unique_and_use_a_safe_alphabet() {
        let mut a = IdGen::new(0);
        let mut b = IdGen::new(1);
        let ids: std::collections::HashSet<String> =
            (0..1000).flat_map(|_| [a.next_id(), b.next_id()]).collect();
        assert_eq!(ids.len(), 2000);
        assert!(ids.iter().all(|id| id.bytes().all(|c| ALPHABET.contains(&c))));
    }

    #[test]
    fn recover_removes_only_uncommitted_files() {
        let dir = std::env::temp_dir().join(format!("ringmx-recover-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join(TMP)).unwrap();
        for name in [
            "A.eml",
            "A.json",
            "B.eml",
            "C.json",
            "tmp/D.eml",
            "tmp/D.json",
            "notes",
        ] {
            fs::write(dir.join(name), b"x").unwrap();
        }
        assert_eq!(recover(&dir).unwrap(), 4);
        assert_eq!(fs::read_dir(dir.join(TMP)).unwrap().count(), 0);
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["A.eml", "A.json", "notes", "tmp"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
