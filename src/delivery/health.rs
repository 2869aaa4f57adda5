//! A destination's health as the queue runner judges it, Postfix's dead-destination marking: alive, dead until a timer after a failed connection, or probing with the one delivery that decides.
//!
//! Postfix's qmgr declares a destination dead when a cohort of its connection attempts fails
//! (`default_destination_concurrency_failed_cohort_limit`, 1): it keeps the failure's reason,
//! defers every recipient for that destination that comes up at once with that reason,
//! without a delivery agent, and starts a timer of `minimal_backoff_time`; when it fires the
//! destination gets deliveries again and a success restores its concurrency. Here the timer is
//! `destination_dead_secs` (by default `min_backoff_secs`), and what follows it is one probe:
//! a single work item, so a destination still down costs one connection attempt per timer,
//! not one per thread of its pool. Work that comes due meanwhile waits beside the probe
//! (parked), and goes to the pool at full concurrency if the probe is answered, or is
//! deferred with the probe's error if not. No clock is read here: `now` is an argument.

use super::pool::{Attempt, Work};
use super::reply::Reply;
use std::time::{Duration, Instant};

/// Where a destination stands.
#[derive(Debug)]
pub(super) enum Health {
    /// Work goes to its pool.
    Alive,
    /// A connection failed: until `until`, its recipients are deferred at once with `reason`.
    Dead { until: Instant, reason: Reply },
    /// The dead timer ran out and message `probe` was sent; the rest waits in `parked`.
    Probing {
        probe: String,
        reason: Reply,
        parked: Vec<Work>,
    },
}

/// What to do with work for a destination now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Hand it to the pool.
    Send,
    /// Dead: defer its recipients with this reply, without a connection.
    Defer(Reply),
    /// The timer ran out: this is the probe (hand one work item to the pool, park the rest).
    Probe,
    /// A probe is out: keep it for the probe's verdict ([`Health::park`]).
    Park,
}

/// What an outcome asks of the runner besides settling its own recipients.
#[derive(Debug)]
pub(super) enum Then {
    Nothing,
    /// Alive again: hand these parked items to the pool.
    Submit(Vec<Work>),
    /// Dead (again): defer these parked items with the reply.
    Defer(Vec<Work>, Reply),
    /// The probe told nothing (its message was unreadable): this parked item is the probe now.
    Probe(Work),
}

impl Health {
    /// Work for the destination at `now`, for message `id`; a run-out timer makes it the probe.
    pub(super) fn admit(&mut self, id: &str, now: Instant) -> Admit {
        match self {
            Health::Alive => Admit::Send,
            Health::Dead { until, reason } if now < *until => Admit::Defer(reason.clone()),
            Health::Dead { reason, .. } => {
                *self = Health::Probing {
                    probe: id.to_string(),
                    reason: reason.clone(),
                    parked: Vec::new(),
                };
                Admit::Probe
            }
            Health::Probing { .. } => Admit::Park,
        }
    }

    /// Keeps `work` for the probe's verdict; given back when not probing (sent at once).
    pub(super) fn park(&mut self, work: Work) -> Option<Work> {
        match self {
            Health::Probing { parked, .. } => {
                parked.push(work);
                None
            }
            _ => Some(work),
        }
    }

    /// Learns from the outcome of message `id` (its `attempt`, and `reply`, the first
    /// recipient's reply). Any answer revives the destination (Postfix unthrottles a queue on
    /// any delivery); a failed connection kills it for `dead_for` unless it is dead already (the
    /// rest of a failed cohort does not push the timer back); a broken session or a pool's own
    /// dead deferral counts only against the probe.
    pub(super) fn learn(
        &mut self,
        id: &str,
        attempt: Attempt,
        reply: Option<&Reply>,
        now: Instant,
        dead_for: Duration,
    ) -> Then {
        let is_probe = matches!(self, Health::Probing { probe, .. } if probe == id);
        let failed = match attempt {
            Attempt::Answered => {
                return match std::mem::replace(self, Health::Alive) {
                    Health::Probing { parked, .. } => Then::Submit(parked),
                    _ => Then::Nothing,
                };
            }
            Attempt::ConnectFailed => !matches!(self, Health::Dead { .. }),
            Attempt::Lost | Attempt::Dead => is_probe,
            Attempt::Unread if is_probe => {
                let Health::Probing { parked, reason, .. } = self else {
                    return Then::Nothing;
                };
                return match parked.pop() {
                    Some(next) => {
                        *self = Health::Probing {
                            probe: next.id.clone(),
                            reason: reason.clone(),
                            parked: std::mem::take(parked),
                        };
                        Then::Probe(next)
                    }
                    None => {
                        // Nothing else to probe with: the next work for it probes.
                        *self = Health::Dead {
                            until: now,
                            reason: reason.clone(),
                        };
                        Then::Nothing
                    }
                };
            }
            Attempt::Unread => false,
        };
        if !failed {
            return Then::Nothing;
        }
        let reason = reply
            .cloned()
            .unwrap_or_else(|| Reply::local(451, "4.4.1 the destination is not answering"));
        let was = std::mem::replace(
            self,
            Health::Dead {
                until: now + dead_for,
                reason: reason.clone(),
            },
        );
        match was {
            Health::Probing { parked, .. } => Then::Defer(parked, reason),
            _ => Then::Nothing,
        }
    }

    /// Forgets a death (an operator's flush, as Postfix's `postqueue -f` flushes its dead
    /// destinations too): the next work is sent, to the pool at full concurrency. A probe out
    /// still decides for its parked work.
    pub(super) fn revive(&mut self) {
        if matches!(self, Health::Dead { .. }) {
            *self = Health::Alive;
        }
    }

    /// Parked work, taken out at shutdown (its messages are tried again at the next start).
    pub(super) fn take_parked(&mut self) -> Vec<Work> {
        match self {
            Health::Probing { parked, .. } => std::mem::take(parked),
            _ => Vec::new(),
        }
    }

    /// The state's name, as the counters show it.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Health::Alive => "alive",
            Health::Dead { .. } => "dead",
            Health::Probing { .. } => "probing",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn work(id: &str) -> Work {
        Work {
            id: id.into(),
            from: Arc::from(&b"a@b.test"[..]),
            size: 1,
            eight_bit: false,
            smtputf8: false,
            rcpts: vec![(0, b"c@d.test".to_vec())],
            queued: Instant::now(),
        }
    }

    const DEAD: Duration = Duration::from_secs(5);

    #[test]
    fn a_failed_connection_kills_then_one_probe_decides() {
        let t0 = Instant::now();
        let refused = Reply::local(451, "4.4.1 connect to x: refused");
        let mut h = Health::Alive;
        assert_eq!(h.admit("A", t0), Admit::Send);
        assert!(matches!(
            h.learn("A", Attempt::ConnectFailed, Some(&refused), t0, DEAD),
            Then::Nothing
        ));
        // The rest of the cohort fails too: the timer is not pushed back.
        h.learn(
            "B",
            Attempt::ConnectFailed,
            Some(&refused),
            t0 + Duration::from_secs(1),
            DEAD,
        );
        assert_eq!(
            h.admit("C", t0 + Duration::from_secs(4)),
            Admit::Defer(refused.clone())
        );
        assert_eq!(h.admit("C", t0 + DEAD), Admit::Probe);
        assert_eq!(h.name(), "probing");
        assert_eq!(h.admit("D", t0 + DEAD), Admit::Park);
        assert!(h.park(work("D")).is_none());
        // A straggler's pool deferral says nothing about the probe.
        assert!(matches!(
            h.learn("E", Attempt::Dead, Some(&refused), t0 + DEAD, DEAD),
            Then::Nothing
        ));
        match h.learn("C", Attempt::Answered, None, t0 + DEAD, DEAD) {
            Then::Submit(parked) => assert_eq!(parked.len(), 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.name(), "alive");
        assert!(h.park(work("F")).is_some(), "alive: nothing is parked");
    }

    #[test]
    fn a_failed_probe_defers_the_parked_work_and_restarts_the_timer() {
        let t0 = Instant::now();
        let refused = Reply::local(451, "4.4.1 refused");
        let timeout = Reply::local(451, "4.4.2 timed out");
        let mut h = Health::Dead {
            until: t0,
            reason: refused,
        };
        assert_eq!(h.admit("P", t0), Admit::Probe);
        h.park(work("Q"));
        // A session broken on another message does not count; on the probe it does.
        assert!(matches!(
            h.learn("Q", Attempt::Lost, Some(&timeout), t0, DEAD),
            Then::Nothing
        ));
        match h.learn("P", Attempt::Lost, Some(&timeout), t0, DEAD) {
            Then::Defer(parked, reply) => {
                assert_eq!(parked.len(), 1);
                assert_eq!(reply, timeout);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            h.admit("R", t0 + DEAD - Duration::from_millis(1)),
            Admit::Defer(timeout)
        );
        assert_eq!(h.admit("R", t0 + DEAD), Admit::Probe);
    }

    #[test]
    fn an_unreadable_probe_hands_the_probe_on() {
        let t0 = Instant::now();
        let refused = Reply::local(451, "4.4.1 refused");
        let mut h = Health::Dead {
            until: t0,
            reason: refused.clone(),
        };
        assert_eq!(h.admit("P", t0), Admit::Probe);
        h.park(work("Q"));
        match h.learn("P", Attempt::Unread, None, t0, DEAD) {
            Then::Probe(next) => assert_eq!(next.id, "Q"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            h.learn("Q", Attempt::Unread, None, t0, DEAD),
            Then::Nothing
        ));
        assert_eq!(h.name(), "dead");
        assert_eq!(h.admit("S", t0), Admit::Probe, "the next work probes at once");
        assert!(h.take_parked().is_empty());
        h.learn("S", Attempt::ConnectFailed, Some(&refused), t0, DEAD);
        h.revive();
        assert_eq!(h.admit("T", t0), Admit::Send, "a flush revives");
    }
}
