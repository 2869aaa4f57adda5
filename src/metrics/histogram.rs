//! A fixed-bucket histogram that one thread records into with relaxed atomics and a scrape reads, and the plain cumulative snapshot the renderer prints.

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets recorded in an integer unit (microseconds, messages), each counting the values up
/// to and including its bound; the last slot counts what is above every bound (`+Inf`).
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [u64],
    /// One slot per bound, then the `+Inf` slot; not cumulative.
    slots: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl AtomicHistogram {
    /// `bounds` must rise strictly.
    pub fn new(bounds: &'static [u64]) -> AtomicHistogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        AtomicHistogram {
            bounds,
            slots: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts one value. Relaxed: a scrape may see a count before its sum, a skew of one
    /// value that the next scrape corrects.
    pub fn record(&self, value: u64) {
        let slot = self.bounds.partition_point(|&b| b < value);
        self.slots[slot].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// What was recorded so far, each bound and the sum multiplied by `scale` (to the base
    /// unit: 1e-6 turns microseconds into seconds).
    pub fn snapshot(&self, scale: f64) -> Histogram {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.bounds.len());
        for slot in &self.slots[..self.bounds.len()] {
            running += slot.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        let count = running + self.slots[self.bounds.len()].load(Ordering::Relaxed);
        Histogram {
            bounds: self.bounds.iter().map(|&b| b as f64 * scale).collect(),
            cumulative,
            count,
            sum: self.sum.load(Ordering::Relaxed) as f64 * scale,
        }
    }
}

/// A histogram as Prometheus prints it: per upper bound the count of values at or below it,
/// the total count (the `+Inf` bucket) and the sum, in base units.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    /// Adds another histogram with the same bounds. An empty one (the default: a worker not
    /// heard from yet, or one in sink mode) takes the other's bounds, or adds nothing.
    pub fn merge(&mut self, other: &Histogram) {
        if other.bounds.is_empty() && other.count == 0 {
            return;
        }
        if self.bounds.is_empty() && self.count == 0 {
            *self = other.clone();
            return;
        }
        debug_assert_eq!(self.bounds, other.bounds);
        for (a, b) in self.cumulative.iter_mut().zip(&other.cumulative) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive() {
        static BOUNDS: [u64; 3] = [1, 2, 4];
        let h = AtomicHistogram::new(&BOUNDS);
        for v in [1, 2, 3, 4, 5, 100] {
            h.record(v);
        }
        let s = h.snapshot(1.0);
        assert_eq!(s.cumulative, [1, 2, 4]);
        assert_eq!(s.count, 6);
        assert_eq!(s.sum, 115.0);
        let mut merged = Histogram::default();
        merged.merge(&s);
        merged.merge(&Histogram::default());
        merged.merge(&s);
        assert_eq!(merged.cumulative, [2, 4, 8]);
        assert_eq!(merged.count, 12);
    }
}
