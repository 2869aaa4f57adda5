//! Slowloris drips: a command line or a message body sent one octet per `--slowloris-interval`, each octet written when the worker's timer says so.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use super::conn::{is_reset, Failure, State};
use super::Worker;
use crate::tls;

impl Worker {
    /// The drip's command is written (nothing of it yet): the first octet goes now, and
    /// the server has `--slowloris-max` to end the connection.
    pub(super) fn start_drip(&mut self, slot: usize, now: Instant) {
        let max = self.shared.cfg.slowloris_max;
        let c = &mut self.conns[slot];
        c.dripping = true;
        c.drip_pos = 0;
        c.deadline = now + max;
        self.drip(slot, now);
    }

    /// Fire the timers that are due: one octet for each dripping session they belong to.
    pub(super) fn run_timers(&mut self, now: Instant) {
        while let Some((slot, generation)) = self.timers.pop_due(now) {
            let c = &self.conns[slot];
            if c.generation == generation && c.state == State::Running && c.dripping {
                self.drip(slot, now);
            }
        }
    }

    /// Write the drip's next octet, then set the timer for the one after. A drip that runs
    /// out before the server acts stays silent: its line or message is still unfinished.
    fn drip(&mut self, slot: usize, now: Instant) {
        let corpus = Arc::clone(&self.shared.corpus);
        let interval = self.shared.cfg.slowloris_interval;
        let c = &mut self.conns[slot];
        let piece = c.plan[c.sent - 1].piece;
        let text = corpus.drip(piece);
        let Some(&octet) = text.get(c.drip_pos) else {
            c.dripping = false;
            return;
        };
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        // Octets of the drip taken, octets on the wire (a TLS record's worth in TLS).
        let wrote = match c.tls.as_mut() {
            Some(t) => t
                .writer()
                .write(&[octet])
                .and_then(|n| tls::push(t, stream).map(|sent| (n, sent))),
            None => stream.write(&[octet]).map(|n| (n, n)),
        };
        match wrote {
            Ok((n, sent)) => {
                c.drip_pos += n;
                self.counters.bytes_sent += sent as u64;
            }
            // A full socket or an interrupted call: the same octet at the next tick.
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) => {
                // The server closed on us between two octets: what a slowloris waits for.
                let ok = is_reset(&e) && self.close_expected(slot);
                self.end_session(slot, if ok { None } else { Some(Failure::Reset) }, now);
                return;
            }
        }
        let generation = self.conns[slot].generation;
        self.timers.push(now + interval, slot, generation);
    }
}
