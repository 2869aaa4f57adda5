//! What delivery knows about a message beyond the spool, kept on disk so a restart keeps it: attempts, next attempt, held, and each deferred or failed recipient's last reply; and the backoff between attempts.
//!
//! One small file per message that has been deferred, held or has failed recipients,
//! `DIR/queue/<id>.json`, written to a temporary name and renamed over the old one. A message
//! delivered at its first attempt never gets one. The spool itself keeps which recipients are
//! done; this file only says when to try the others again, so a lost update costs an early
//! retry, never a message. A hold is the operator's word and is fsynced.
//!
//! The queue runner does not write them itself: it hands each change to a [`Writer`], a thread
//! of its own that takes every change waiting, keeps the last per message and writes those, at
//! most one batch a second. A deferral then costs the runner a channel send instead of a
//! create, write and rename (the soak's queue thread spent 57% of its time there, deferring
//! one message after another to a destination that was down), and a message deferred again
//! within the second is written once. What the writer has not written yet when the process
//! dies is the lost update above: an early retry. A hold does not wait for the second: it is
//! written and fsynced at once and the runner answers the operator only after.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The directory of the state files inside the spool directory.
pub const STATE_DIR: &str = "queue";

/// A recipient's last outcome, when it was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// Failed for good (a `5xx`, or the queue lifetime passed): it waits only for the
    /// notification; otherwise deferred.
    pub failed: bool,
    /// The reply, on one line (`452 4.2.2 mailbox full`).
    pub reply: String,
}

/// A message's delivery state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub attempts: u32,
    /// Seconds since the epoch before which it is not tried again (0: now).
    pub next_attempt: u64,
    pub held: bool,
    /// By recipient index in the envelope.
    pub recipients: BTreeMap<usize, Note>,
}

/// The state files of one spool.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// The store of `spool`, its directory created if missing.
    pub fn open(spool: &Path) -> io::Result<StateStore> {
        let dir = spool.join(STATE_DIR);
        fs::create_dir_all(&dir)?;
        Ok(StateStore { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The state of `id`; a file that does not parse counts as none (the message is tried
    /// now, which is always safe).
    pub fn load(&self, id: &str) -> Option<State> {
        let text = fs::read_to_string(self.path(id)).ok()?;
        match serde_json::from_str(&text) {
            Ok(state) => Some(state),
            Err(e) => {
                tracing::warn!(id, error = %e, "ignoring a damaged delivery state file");
                None
            }
        }
    }

    /// Replaces the state of `id`; `durable` fsyncs it (a hold).
    pub fn save(&self, id: &str, state: &State, durable: bool) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(serde_json::to_string(state).map_err(io::Error::other)?.as_bytes())?;
        if durable {
            f.sync_data()?;
        }
        fs::rename(&tmp, self.path(id))?;
        if durable {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Forgets `id` (it left the spool).
    pub fn remove(&self, id: &str) {
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(id, error = %e, "cannot remove a delivery state file");
            }
            _ => {}
        }
    }

    /// Ids with a state file, for removing those whose message is gone.
    pub fn ids(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
                if !id.starts_with('.') {
                    ids.push(id.to_string());
                }
            }
        }
        Ok(ids)
    }
}

/// How often the [`Writer`] writes a batch, at most: a message is written at most once per
/// batch, whatever its deferrals.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// A change for the [`Writer`].
enum Change {
    Save(State),
    /// Fsynced before the answer (a hold).
    Durable(State, crossbeam_channel::Sender<io::Result<()>>),
    Remove,
}

/// What a batch does for one message: its last change, and who waits for a durable one.
struct Pending {
    last: Option<State>,
    durable: bool,
    waiting: Vec<crossbeam_channel::Sender<io::Result<()>>>,
}

/// The thread that writes the runner's state files, in the order the runner changed them.
pub struct Writer {
    tx: Option<crossbeam_channel::Sender<(String, Change)>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread writing to `store`.
    pub fn start(store: StateStore) -> io::Result<Writer> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("ringmx-state".into())
            .spawn(move || write_batches(&store, &rx))?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, id: &str, change: Change) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((id.to_string(), change));
        }
    }

    /// Replaces the state of `id` within a second.
    pub fn save(&self, id: &str, state: State) {
        self.send(id, Change::Save(state));
    }

    /// Replaces the state of `id` and fsyncs it, before returning (a hold).
    pub fn save_durable(&self, id: &str, state: State) -> io::Result<()> {
        let (done, wait) = crossbeam_channel::bounded(1);
        self.send(id, Change::Durable(state, done));
        wait.recv()
            .unwrap_or_else(|_| Err(io::Error::other("the state writer has stopped")))
    }

    /// Forgets `id` (it left the spool), after any change sent before.
    pub fn remove(&self, id: &str) {
        self.send(id, Change::Remove);
    }

    /// Writes what is waiting and stops.
    pub fn finish(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the state writer panicked");
            }
        }
    }
}

/// The writer's loop: wait for a change, gather every change for up to [`WRITE_EVERY`] (a
/// durable one ends the gathering at once), write the last of each message, repeat.
fn write_batches(store: &StateStore, rx: &crossbeam_channel::Receiver<(String, Change)>) {
    let mut batch: BTreeMap<String, Pending> = BTreeMap::new();
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + WRITE_EVERY;
        let mut next = Some(first);
        while let Some((id, change)) = next.take() {
            let p = batch.entry(id).or_insert(Pending {
                last: None,
                durable: false,
                waiting: Vec::new(),
            });
            let urgent = matches!(change, Change::Durable(..));
            match change {
                Change::Save(state) => p.last = Some(state),
                Change::Durable(state, done) => {
                    p.last = Some(state);
                    p.durable = true;
                    p.waiting.push(done);
                }
                Change::Remove => p.last = None,
            }
            next = if urgent {
                rx.try_recv().ok()
            } else {
                rx.recv_deadline(deadline).ok()
            };
        }
        for (id, p) in std::mem::take(&mut batch) {
            let result = match &p.last {
                Some(state) => store.save(&id, state, p.durable),
                None => {
                    store.remove(&id);
                    Ok(())
                }
            };
            if let Err(e) = &result {
                tracing::warn!(id, error = %e, "cannot save the delivery state");
            }
            for done in p.waiting {
                let _ = done.send(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| io::Error::new(e.kind(), e.to_string())),
                );
            }
        }
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The wait after attempt number `attempts` (1 after the first): `min` doubled per attempt,
/// at most `max`, times a jitter factor from 0.75 to 1.25 (`unit` in 0..1) so messages deferred
/// together do not come back together; never below `min` nor above `max`.
pub fn backoff(attempts: u32, min: Duration, max: Duration, unit: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    let base = min.saturating_mul(1 << doublings).min(max);
    base.mul_f64(0.75 + unit.clamp(0.0, 1.0) / 2.0).clamp(min, max)
}

/// A small generator for the jitter (xorshift64*), seeded from the clock: no cryptography
/// needed, and no dependency.
#[derive(Debug)]
pub struct Jitter(u64);

impl Default for Jitter {
    fn default() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64);
        Jitter(seed | 1)
    }
}

impl Jitter {
    /// A number in 0..1.
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_bounds_with_jitter() {
        let (min, max) = (Duration::from_secs(300), Duration::from_secs(4000));
        assert_eq!(backoff(1, min, max, 0.5), min);
        assert_eq!(backoff(2, min, max, 0.5), Duration::from_secs(600));
        assert_eq!(backoff(3, min, max, 0.0), Duration::from_secs(900));
        assert_eq!(backoff(20, min, max, 0.5), max);
        assert_eq!(backoff(20, min, max, 1.0), max);
        assert_eq!(backoff(1, min, max, 0.0), min);
        let mut j = Jitter::default();
        for _ in 0..1000 {
            let u = j.unit();
            assert!((0.0..1.0).contains(&u));
            let d = backoff(2, min, max, u);
            assert!(
                d >= Duration::from_secs(450) && d <= Duration::from_secs(750),
                "{d:?}"
            );
        }
    }

    #[test]
    fn the_writer_keeps_the_last_change_in_order_and_a_hold_waits_for_its_fsync() {
        let dir = std::env::temp_dir().join(format!("ringmx-writer-{}", std::process::id()));
        let store = StateStore::open(&dir).unwrap();
        store.save("GONE", &State::default(), false).unwrap();
        let writer = Writer::start(store.clone()).unwrap();
        let attempts = |n| State {
            attempts: n,
            next_attempt: 1_800_000_000 + u64::from(n),
            ..State::default()
        };
        for n in 1..=50 {
            writer.save("MANY", attempts(n));
        }
        writer.remove("GONE");
        writer.save("BACK", attempts(1));
        writer.remove("BACK");
        writer.save("BACK", attempts(2));
        let held = State {
            held: true,
            ..attempts(1)
        };
        writer.save_durable("HELD", held.clone()).unwrap();
        // Durable means written when the call returns, not within the second.
        assert_eq!(store.load("HELD"), Some(held));
        writer.finish();
        assert_eq!(store.load("MANY"), Some(attempts(50)));
        assert_eq!(store.load("BACK"), Some(attempts(2)));
        assert_eq!(store.load("GONE"), None);
        let mut ids = store.ids().unwrap();
        ids.sort();
        assert_eq!(ids, ["BACK", "HELD", "MANY"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_survives_a_round_trip_and_damage_reads_as_none() {
        let dir = std::env::temp_dir().join(format!("ringmx-state-{}", std::process::id()));
        let store = StateStore::open(&dir).unwrap();
        let mut state = State {
            attempts: 2,
            next_attempt: 1_800_000_000,
            held: true,
            ..State::default()
        };
        state.recipients.insert(
            1,
            Note {
                failed: false,
                reply: "452 4.2.2 full".into(),
            },
        );
        store.save("ABC", &state, true).unwrap();
        assert_eq!(store.load("ABC"), Some(state));
        assert_eq!(store.ids().unwrap(), ["ABC"]);
        fs::write(dir.join(STATE_DIR).join("BAD.json"), "{").unwrap();
        assert_eq!(store.load("BAD"), None);
        store.remove("ABC");
        assert_eq!(store.load("ABC"), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
