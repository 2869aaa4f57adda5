//! A coarse hashed timing wheel: 100 ms slots keyed by connection token, O(1) to schedule, nothing to do while idle.
//!
//! SMTP timeouts are minutes long (RFC 5321 §4.5.3.2), where a second of lateness would not
//! matter, but `greet_delay_ms` is set in milliseconds (postscreen's pregreet wait, often under
//! a second), so a slot is a tenth of a second: a deadline fires at most 100 ms late, and a
//! worker with entries wakes at most ten times a second. Each connection keeps at most one live
//! entry: activity that pushes its deadline later does not touch the wheel; when the entry
//! fires, the worker asks the session for its real deadline and schedules again if it has not
//! passed. An entry is recognized as stale by the tick the connection recorded for it.

use std::time::{Duration, Instant};

/// The width of a slot.
const TICK: Duration = Duration::from_millis(100);

/// Slots in the wheel: 819 s, beyond the default timeouts (the longest, DATA termination, is
/// 600 s); a deadline further away is parked in the last slot and re-scheduled when it fires,
/// once or a few times for the largest configurable timeout (3600 s).
const SLOTS: u64 = 8192;

/// A tick is a whole [`TICK`] since the wheel's origin; 0 means "not scheduled".
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

    /// The tick in which `at` falls due: the first whole tick at or after it.
    fn tick_of(&self, at: Instant) -> Tick {
        let d = at.saturating_duration_since(self.origin).as_nanos();
        let tick = TICK.as_nanos();
        d.div_ceil(tick) as Tick
    }

    /// The whole ticks `now` has passed.
    fn ticks_at(&self, now: Instant) -> Tick {
        (now.saturating_duration_since(self.origin).as_nanos() / TICK.as_nanos()) as Tick
    }

    /// Schedules `key` to fire at `at` (rounded up to the tick); returns the tick, which the
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
        // Entries of tick t are due once `now` reaches origin + t ticks.
        let now_tick = self.ticks_at(now);
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
        self.origin + Duration::from_nanos(tick * TICK.as_nanos() as u64)
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
        let tick = wheel.schedule(7, t0 + Duration::from_millis(2450));
        assert_eq!(tick, 25);
        assert_eq!(wheel.next_deadline(), Some(t0 + Duration::from_millis(2500)));
        let mut out = Vec::new();
        wheel.expire(t0 + Duration::from_millis(2499), 10, &mut out);
        assert!(out.is_empty());
        wheel.expire(t0 + Duration::from_millis(2500), 10, &mut out);
        assert_eq!(out, vec![(7, 25)]);
        out.clear();
        wheel.expire(t0 + Duration::from_secs(10), 10, &mut out);
        assert!(out.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    /// A `greet_delay_ms` of 300 is served at 300 ms, not at the next whole second.
    #[test]
    fn a_sub_second_deadline_fires_within_a_tick_of_it() {
        let t0 = Instant::now();
        let mut wheel = Wheel::new(t0);
        wheel.schedule(1, t0 + Duration::from_millis(300));
        assert_eq!(wheel.next_deadline(), Some(t0 + Duration::from_millis(300)));
        wheel.schedule(2, t0 + Duration::from_millis(301));
        let mut out = Vec::new();
        wheel.expire(t0 + Duration::from_millis(300), 10, &mut out);
        assert_eq!(out, vec![(1, 3)]);
        assert_eq!(wheel.next_deadline(), Some(t0 + Duration::from_millis(400)));
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
        let tick = wheel.schedule(1, t0 + TICK * (SLOTS * 3) as u32);
        assert_eq!(tick, SLOTS - 1);
        assert!(wheel.earlier(t0 + Duration::from_secs(5), tick));
        assert!(!wheel.earlier(t0 + TICK * (SLOTS * 2) as u32, 5));
    }
}
