//! A worker's timers: when each slowloris connection's next octet is due, in a heap ordered by time.
//!
//! An entry names its slot and the slot's session generation; one whose session has ended
//! is dropped when it comes due rather than searched for, so cancelling costs nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

pub(super) struct Timers(BinaryHeap<Reverse<(Instant, usize, u32)>>);

impl Timers {
    /// Room for two entries per slot (the one due and a stale one of the slot's previous
    /// session), so the heap does not grow in a steady run.
    pub fn new(slots: usize) -> Timers {
        Timers(BinaryHeap::with_capacity(2 * slots + 16))
    }

    pub fn push(&mut self, at: Instant, slot: usize, generation: u32) {
        self.0.push(Reverse((at, slot, generation)));
    }

    /// When the earliest timer is due.
    pub fn next_at(&self) -> Option<Instant> {
        self.0.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The next timer due at `now`, as its slot and generation.
    pub fn pop_due(&mut self, now: Instant) -> Option<(usize, u32)> {
        match self.0.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.0.pop().map(|Reverse((_, s, g))| (s, g)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_in_time_order() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Timers::new(2);
        t.push(ms(30), 1, 7);
        t.push(ms(10), 0, 3);
        t.push(ms(20), 2, 1);
        assert_eq!(t.next_at(), Some(ms(10)));
        assert_eq!(t.pop_due(ms(5)), None);
        assert_eq!(t.pop_due(ms(25)), Some((0, 3)));
        assert_eq!(t.pop_due(ms(25)), Some((2, 1)));
        assert_eq!(t.pop_due(ms(25)), None);
        assert_eq!(t.next_at(), Some(ms(30)));
        assert_eq!(t.pop_due(ms(30)), Some((1, 7)));
        assert_eq!(t.next_at(), None);
    }
}
