//! What delivery knows about a message beyond the spool, kept on disk so a restart keeps it: attempts, next attempt, held, and each deferred or failed recipient's last reply; and the backoff between attempts.
//!
//! One small file per message that has been deferred, held or has failed recipients,
//! `DIR/queue/<id>.json`, written to a temporary name and renamed over the old one. A message
//! delivered at its first attempt never gets one. The spool itself keeps which recipients are
//! done; this file only says when to try the others again, so a lost update costs an early
//! retry, never a message. A hold is the operator's word and is fsynced.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
