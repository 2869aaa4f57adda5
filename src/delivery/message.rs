//! A queued message as delivery sees it: its envelope, each recipient's state (pending, in flight, deferred, failed, done), its attempts and next attempt, and how it is saved and listed.

use super::control::{Listed, ListedRcpt};
use super::reply::Reply;
use super::state::{Note, State};
use crate::spool::Queued;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Where a recipient stands.
#[derive(Debug, Clone)]
pub(super) enum Rcpt {
    Pending,
    InFlight,
    Deferred(Reply),
    Failed(Reply),
    Done,
}

/// A message in the schedule.
pub(super) struct Msg {
    pub(super) from: Arc<[u8]>,
    pub(super) rcpts: Vec<Vec<u8>>,
    pub(super) state: Vec<Rcpt>,
    pub(super) size: u64,
    pub(super) eight_bit: bool,
    pub(super) smtputf8: bool,
    pub(super) received: SystemTime,
    pub(super) attempts: u32,
    /// Seconds since the epoch; 0: due now.
    pub(super) next_attempt: u64,
    pub(super) held: bool,
    /// Work items out with the pools.
    pub(super) in_flight: usize,
    /// When it was committed, for the latency of a live message (none for one found at start).
    pub(super) since: Option<Instant>,
}

impl Msg {
    pub(super) fn from_queued(q: Queued, state: Option<State>) -> Msg {
        let state = state.unwrap_or_default();
        let rcpts = q.meta.recipients;
        let states = (0..rcpts.len())
            .map(|i| match (q.done.get(i), state.recipients.get(&i)) {
                (Some(true), _) => Rcpt::Done,
                (_, Some(n)) if n.failed => Rcpt::Failed(parse_note(&n.reply)),
                (_, Some(n)) => Rcpt::Deferred(parse_note(&n.reply)),
                _ => Rcpt::Pending,
            })
            .collect();
        let params = q.meta.mail_params.to_ascii_uppercase();
        Msg {
            from: q.meta.mail_from.into(),
            rcpts,
            state: states,
            size: q.size,
            eight_bit: memchr::memmem::find(&params, b"BODY=8BITMIME").is_some(),
            smtputf8: q.meta.smtputf8,
            received: q.meta.received,
            attempts: state.attempts,
            next_attempt: state.next_attempt,
            held: state.held,
            in_flight: 0,
            since: None,
        }
    }

    pub(super) fn state_file(&self) -> State {
        let mut s = State {
            attempts: self.attempts,
            next_attempt: self.next_attempt,
            held: self.held,
            ..State::default()
        };
        for (i, r) in self.state.iter().enumerate() {
            let note = match r {
                Rcpt::Deferred(reply) => Note {
                    failed: false,
                    reply: reply.one_line(),
                },
                Rcpt::Failed(reply) => Note {
                    failed: true,
                    reply: reply.one_line(),
                },
                _ => continue,
            };
            s.recipients.insert(i, note);
        }
        s
    }

    pub(super) fn listed(&self, id: &str, now: SystemTime) -> Listed {
        let rcpts = self
            .rcpts
            .iter()
            .zip(&self.state)
            .map(|(a, r)| {
                let (mut state, reply) = match r {
                    Rcpt::Pending | Rcpt::InFlight => ("pending", None),
                    Rcpt::Deferred(reply) => ("deferred", Some(reply.one_line())),
                    Rcpt::Failed(reply) => ("failed", Some(reply.one_line())),
                    Rcpt::Done => ("done", None),
                };
                if self.held && matches!(r, Rcpt::Pending | Rcpt::InFlight | Rcpt::Deferred(_)) {
                    state = "held";
                }
                ListedRcpt {
                    address: String::from_utf8_lossy(a).into_owned(),
                    state,
                    reply,
                    next_attempt: if state == "deferred" { self.next_attempt } else { 0 },
                }
            })
            .collect();
        Listed {
            id: id.to_string(),
            age_secs: now.duration_since(self.received).map_or(0, |d| d.as_secs()),
            size: self.size,
            sender: String::from_utf8_lossy(&self.from).into_owned(),
            held: self.held,
            attempts: self.attempts,
            next_attempt: self.next_attempt,
            recipients: rcpts,
        }
    }
}

/// `452 4.2.2 text` as a state file stores it, back to a reply.
fn parse_note(s: &str) -> Reply {
    let code = s.get(..3).and_then(|c| c.parse().ok()).unwrap_or(451);
    Reply::local(code, s.get(4..).unwrap_or("").to_string())
}

/// A message of a stopped server's spool as the listing shows it.
pub fn listed(q: Queued, state: Option<State>, now: SystemTime) -> Listed {
    let id = q.meta.id.clone();
    Msg::from_queued(q, state).listed(&id, now)
}
