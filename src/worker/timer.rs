//! A coarse hashed timing wheel: one-second slots keyed by connection token, O(1) to schedule, nothing to do while idle.
//!
//! SMTP timeouts are minutes long (RFC 5321 §4.5.3.2), so a second of lateness is irrelevant
//! and a wheel of one-second slots is exact enough. Each connection keeps at most one live
//! entry: activity that pushes its deadline later does not touch the wheel; when the entry
//! fires, the worker asks the session for its real deadline and schedules again if it has not
//! passed. An entry is recognized as stale by the tick the connection recorded for it.

use std::time::{Duration, Instant};

/// Slots in the wheel; a deadline further away is parked in the last slot and re-scheduled
/// when it fires. Longer than the largest configurable timeout (3600 s), so that is rare.
const SLOTS: u64 = 4096;

/// A tick is a whole second since the wheel's origin; 0 means "not scheduled".
pub type Tick = u64;

pub struct Wheel {
    slots: Vec<Vec<u64>>,
    origin: Instant,
    /// The last tick whose slot was fully processed.
    done: Tick,
    /// No entry is earlier than this tick, so the search for the next one starts here.
    earliest: Tick,
    len: usize,
}

impl Wheel {
    pub fn new(origin: Instant) -> Wheel {
        Wheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            origin,
            done: 0,
            earliest: 1,
            len: 0,
        }
    }

    /// The tick in which `at` falls due: the first whole second at or after it.
    fn tick_of(&self, at: Instant) -> Tick {
        let d = at.saturating_duration_since(self.origin);
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }

    /// Schedules `key` to fire at `at` (rounded up to the second); returns the tick, which the
    /// caller stores to recognize this entry later.
    pub fn schedule(&mut self, key: u64, at: Instant) -> Tick {
        let tick = self.tick_of(at).clamp(self.done + 1, self.done + SLOTS - 1);
        self.slots[(tick % SLOTS) as usize].push(key);
        self.len += 1;
        self.earliest = self.earliest.min(tick);
        tick
    }

    /// Would an entry for `at` fire before one already at `tick`?
    pub fn earlier(&self, at: Instant, tick: Tick) -> bool {
        tick == 0 || self.tick_of(at).max(self.done + 1) < tick
    }

    /// Moves up to `max` entries that are due at `now` into `out` as `(key, tick)`.
    pub fn expire(&mut self, now: Instant, max: usize, out: &mut Vec<(u64, Tick)>) {
        // Entries of tick t are due once `now` reaches origin + t seconds.
        let now_tick = now.saturating_duration_since(self.origin).as_secs();
        while self.done < now_tick && self.len > 0 {
            let tick = self.done + 1;
            let slot = &mut self.slots[(tick % SLOTS) as usize];
            let room = max.saturating_sub(out.len());
            if slot.len() > room {
                let rest = slot.split_off(room);
                self.len -= slot.len();
                out.extend(slot.drain(..).map(|k| (k, tick)));
                *slot = rest;
                return;
            }
            self.len -= slot.len();
            out.extend(slot.drain(..).map(|k| (k, tick)));
            self.done = tick;
        }
        if self.len == 0 {
            self.done = self.done.max(now_tick);
        }
    }

    fn at(&self, tick: Tick) -> Instant {
        self.origin + Duration::from_secs(tick)
    }

    /// When the earliest entry falls due, if any. The search resumes where the last one
    /// stopped, so over time it visits each slot about once per revolution.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let from = self.earliest.max(self.done + 1);
        let tick = (from..self.done + SLOTS).find(|t| !self.slots[(t % SLOTS) as usize].is_empty())?;
        self.earliest = tick;
        Some(self.at(tick))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_or_after_the_deadline_and_only_once() {
        let t0 = Instant::now();
        let mut wheel = Wheel::new(t0);
        let tick = wheel.schedule(7, t0 + Duration::from_millis(2500));
        assert_eq!(tick, 3);
        assert_eq!(wheel.next_deadline(), Some(t0 + Duration::from_secs(3)));
        let mut out = Vec::new();
        wheel.expire(t0 + Duration::from_millis(2999), 10, &mut out);
        assert!(out.is_empty());
        wheel.expire(t0 + Duration::from_secs(3), 10, &mut out);
        assert_eq!(out, vec![(7, 3)]);
        out.clear();
        wheel.expire(t0 + Duration::from_secs(10), 10, &mut out);
        assert!(out.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn expiry_is_bounded_and_resumes() {
        let t0 = Instant::now();
        let mut wheel = Wheel::new(t0);
        for k in 0..5 {
            wheel.schedule(k, t0 + Duration::from_secs(1));
        }
        let mut out = Vec::new();
        wheel.expire(t0 + Duration::from_secs(2), 3, &mut out);
        assert_eq!(out.len(), 3);
        out.clear();
        wheel.expire(t0 + Duration::from_secs(2), 3, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn far_deadlines_park_in_the_last_slot() {
        let t0 = Instant::now();
        let mut wheel = Wheel::new(t0);
        let tick = wheel.schedule(1, t0 + Duration::from_secs(SLOTS * 3));
        assert_eq!(tick, SLOTS - 1);
        assert!(wheel.earlier(t0 + Duration::from_secs(5), tick));
        assert!(!wheel.earlier(t0 + Duration::from_secs(SLOTS * 2), 5));
    }
}
