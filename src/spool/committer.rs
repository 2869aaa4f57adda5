//! A worker's committer thread: writes body bytes as they come and commits ended messages in batches, with shared fsyncs.

use super::format::{envelope_json, received_header};
use super::{Backlog, Batching, CommitClock, Done, Job, MessageMeta, SpoolStats, TMP};
use crate::config::SpoolSync;
use crate::wake::Wake;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Write buffer per open message: a small message (trace header plus body) reaches the disk
/// in one write; larger body chunks bypass it. Small, because every message in DATA has one.
const WRITE_BUFFER: usize = 8192;

struct Pending {
    meta: Box<MessageMeta>,
    file: Option<BufWriter<File>>,
    size: u64,
    error: Option<io::Error>,
}

/// Ended messages committed together, by session key.
type Batch = Vec<(u64, Pending)>;

/// Per message of a batch, its `.eml` and `.json` while they are still on course for a
/// commit; `None` once it has failed (logged and discarded).
type Files = Vec<Option<(File, File)>>;

pub(super) struct Committer {
    dir: PathBuf,
    dir_file: File,
    hostname: String,
    sync: SpoolSync,
    open: HashMap<u64, Pending>,
    ended: Batch,
    backlog: Arc<Backlog>,
    done: Sender<Done>,
    feed: Option<Sender<String>>,
    waker: Arc<dyn Wake>,
    stats: SpoolStats,
    clock: CommitClock,
}

impl Committer {
    /// A committer for the (recovered) directory `dir`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        dir: PathBuf,
        hostname: String,
        sync: SpoolSync,
        backlog: Arc<Backlog>,
        done: Sender<Done>,
        feed: Option<Sender<String>>,
        waker: Arc<dyn Wake>,
        clock: CommitClock,
    ) -> io::Result<Committer> {
        Ok(Committer {
            dir_file: File::open(&dir)?,
            dir,
            hostname,
            sync,
            open: HashMap::new(),
            ended: Vec::new(),
            backlog,
            done,
            feed,
            waker,
            stats: SpoolStats::default(),
            clock,
        })
    }

    /// Runs until the worker drops its sender, then discards the messages still open.
    pub(super) fn run(mut self, jobs: Receiver<Job>) -> SpoolStats {
        let (backlog, waker) = (self.backlog.clone(), self.waker.clone());
        super::run_batches(&mut self, &jobs, &backlog, &*waker);
        for (_, pending) in std::mem::take(&mut self.open) {
            self.discard(&pending.meta.id);
        }
        self.stats
    }

    fn path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ext}"))
    }

    fn tmp_path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(TMP).join(format!("{id}.{ext}"))
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

    /// Step 1: finish every file and start its writeback.
    fn write_batch(&self, batch: &mut Batch) -> Files {
        let mut files: Files = Vec::with_capacity(batch.len());
        for (_, pending) in batch {
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
        files
    }

    /// Step 2: wait for the data, one file at a time (after the first, mostly done already),
    /// or for the whole filesystem at once.
    fn sync_batch(&self, batch: &mut Batch, files: &mut Files) {
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
    }

    /// Step 3: the `.json` last, so its presence means committed.
    fn rename_batch(&self, batch: &mut Batch, files: &mut Files) {
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
    }

    /// Reports each message of the batch to the worker. If the directory fsync failed
    /// nothing is acknowledged, and the names are removed so no committed entry outlives a
    /// 452.
    fn report(&mut self, batch: Batch, files: &Files, dir_ok: bool) {
        for (i, (key, pending)) in batch.into_iter().enumerate() {
            let ok = dir_ok && files[i].is_some();
            if ok {
                self.stats.committed += 1;
                if let Some(feed) = &self.feed {
                    let _ = feed.send(pending.meta.id.clone());
                }
            } else {
                self.stats.failed += 1;
            }
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

impl Batching for Committer {
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
                self.backlog.queued.fetch_sub(data.len(), Ordering::SeqCst);
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
            Job::End { key, at } => {
                if let Some(pending) = self.open.remove(&key) {
                    self.clock.ended(key, at);
                    self.ended.push((key, pending));
                }
            }
            Job::Abort { key } => {
                self.clock.aborted(key);
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

    fn ended(&self) -> bool {
        !self.ended.is_empty()
    }

    /// Steps 1 to 4 of the module documentation for every message that has ended.
    fn commit_batch(&mut self) {
        let started = std::time::Instant::now();
        let mut batch = std::mem::take(&mut self.ended);
        let mut files = self.write_batch(&mut batch);
        let written = files.iter().flatten().count() as u64;
        // Two fdatasyncs per message, or one syncfs; and the directory's fsync below.
        self.stats.syncs += 1 + match self.sync {
            SpoolSync::File => 2 * written,
            SpoolSync::Filesystem => 1,
        };
        self.stats.batches += 1;
        self.sync_batch(&mut batch, &mut files);
        self.rename_batch(&mut batch, &mut files);
        // Step 4: one directory fsync for the batch.
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
        self.clock.batch_done(batch.iter().map(|(key, _)| *key));
        self.report(batch, &files, dir_ok);
        self.clock.metrics.publish(&self.stats);
    }
}
