//! The runner's answers to `ringmx queue` (list, flush, hold, release, delete, stats) and the counters a metrics scrape asks for.

use super::Runner;
use crate::delivery::control::{self, Listed, Request};
use crate::delivery::message::Msg;
use crate::delivery::stats::Stats;
use std::time::SystemTime;

impl Runner {
    /// The counters with the queue's size, its oldest message's age and each pool's state.
    pub(super) fn snapshot(&mut self, now: SystemTime) -> Stats {
        let mut stats = self.stats.clone();
        stats.queue_size = (self.msgs.len() + self.backlog.len()) as u64;
        stats.oldest_age_secs = self
            .msgs
            .values()
            .filter_map(|m| now.duration_since(m.received).ok())
            .max()
            .map_or(0, |d| d.as_secs());
        for (dest, pool) in &self.pools {
            let d = stats.dest(dest);
            d.connections = pool.connections() as u64;
            d.threads = pool.threads() as u64;
            d.waiting = pool.waiting() as u64;
        }
        for (dest, health) in &self.health {
            stats.dest(dest).health = health.name();
        }
        stats
    }

    pub(super) fn request(&mut self, req: Request) -> Result<String, String> {
        let now = SystemTime::now();
        match req {
            Request::List { json } => {
                let mut ids: Vec<&String> = self.msgs.keys().collect();
                ids.sort();
                let mut listed: Vec<Listed> = ids.iter().map(|id| self.msgs[*id].listed(id, now)).collect();
                for id in &self.backlog {
                    if let Ok(q) = self.queue.get(id) {
                        listed.push(Msg::from_queued(q, self.states.load(id)).listed(id, now));
                    }
                }
                Ok(control::format_list(&listed, json))
            }
            Request::Flush(id) => {
                let ids: Vec<String> = match id {
                    Some(id) if self.msgs.contains_key(&id) => vec![id],
                    Some(id) => return Err(format!("no message {id} in the queue")),
                    None => self.msgs.keys().cloned().collect(),
                };
                for health in self.health.values_mut() {
                    health.revive();
                }
                let mut n = 0;
                for id in ids {
                    let Some(m) = self.msgs.get_mut(&id) else { continue };
                    if m.held || m.in_flight > 0 {
                        continue;
                    }
                    m.next_attempt = 0;
                    n += 1;
                    self.dispatch(&id);
                }
                Ok(format!("flushed {n}\n"))
            }
            Request::Hold(id) | Request::Release(id) if !self.msgs.contains_key(&id) => {
                Err(format!("no message {id} in the queue"))
            }
            Request::Hold(id) => {
                let m = self.msgs.get_mut(&id).ok_or("gone")?;
                m.held = true;
                self.writer
                    .save_durable(&id, m.state_file())
                    .map_err(|e| e.to_string())?;
                Ok(format!("held {id}\n"))
            }
            Request::Release(id) => {
                let m = self.msgs.get_mut(&id).ok_or("gone")?;
                m.held = false;
                m.next_attempt = 0;
                self.writer
                    .save_durable(&id, m.state_file())
                    .map_err(|e| e.to_string())?;
                self.dispatch(&id);
                Ok(format!("released {id}\n"))
            }
            Request::Delete(id) => {
                self.queue.delete(&id).map_err(|e| e.to_string())?;
                self.msgs.remove(&id);
                self.backlog.retain(|b| *b != id);
                self.writer.remove(&id);
                self.stats.deleted += 1;
                self.refill();
                Ok(format!("deleted {id}\n"))
            }
            Request::Stats => Ok(self.snapshot(now).json().to_string() + "\n"),
        }
    }
}
