//! Queue ids: unique across workers and restarts, in an alphabet safe to read aloud and to put in a file name.

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

/// The value of one digit of an id, if it is one.
pub(super) fn digit(b: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == b).map(|p| p as u8)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_use_a_safe_alphabet() {
        let mut a = IdGen::new(0);
        let mut b = IdGen::new(1);
        let ids: std::collections::HashSet<String> =
            (0..1000).flat_map(|_| [a.next_id(), b.next_id()]).collect();
        assert_eq!(ids.len(), 2000);
        assert!(ids.iter().all(|id| id.bytes().all(|c| ALPHABET.contains(&c))));
    }
}
