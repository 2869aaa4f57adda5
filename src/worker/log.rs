//! A session's log line: the client, its HELO name, its TLS, its accepted messages (queue id, sender, recipients, size), its rejections by reply code, how long it lasted and why it ended.
//!
//! The line is what an operator greps for, modelled on Postfix's `client=`, `helo=<…>`,
//! `from=<…>, size=…, nrcpt=…`: one `session ended` line per session at info, each item its
//! own field, so the JSON format gives each its own key. A session's messages are parallel
//! lists (`ids=A,B from=<a@x>,<b@y> nrcpt=2,1 size=310,4022`), so a session with one message
//! reads like Postfix's line and a queue id found in the delivery lines finds its session.
//!
//! Cost: a session that accepted no message allocates nothing for its line beyond what the
//! writer does (`logging`); the fields are borrowed or written by `Display` impls straight into
//! the formatter. The first accepted message (or a fold of the counters before the end, every
//! `SessionStats::FOLD_AT` commands) allocates a [`Record`], reused for the rest of the
//! session and bounded by [`MESSAGES_PER_LINE`].

use crate::logging::Escaped;
use crate::proto::{CloseReason, Reply, SessionStats};
use std::fmt::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// Accepted messages a session's record holds before they are written as a `session
/// messages` line and the record starts again. It bounds the record (16 queue ids and senders
/// of up to 256 octets, escaped: under 20 KiB) and the line, which stays well under the
/// 48 KiB where journald splits a line (`LineMax=`), while a session of a few messages, the
/// common case, still gets one line with everything.
pub(crate) const MESSAGES_PER_LINE: usize = 16;

/// What a session's line needs beyond its counters, kept from its first accepted message.
#[derive(Debug)]
pub(crate) struct Record {
    /// Queue ids since the last line, comma-separated.
    ids: String,
    /// Each message's sender, escaped, in angle brackets, comma-separated.
    from: String,
    nrcpt: [u32; MESSAGES_PER_LINE],
    size: [u64; MESSAGES_PER_LINE],
    count: usize,
    /// The counters of the session's earlier folds (a session past `SessionStats::FOLD_AT`
    /// commands), so that its line reports the whole session.
    commands: u32,
    messages: u32,
    errors: u32,
    /// Replies by kind, for the rejections.
    replies: [u32; Reply::COUNT],
}

impl Record {
    fn new() -> Record {
        Record {
            ids: String::with_capacity(MESSAGES_PER_LINE * 17),
            from: String::new(),
            nrcpt: [0; MESSAGES_PER_LINE],
            size: [0; MESSAGES_PER_LINE],
            count: 0,
            commands: 0,
            messages: 0,
            errors: 0,
            replies: [0; Reply::COUNT],
        }
    }

    /// Adds an accepted message; returns true when the record is full and must be written.
    pub(crate) fn queued(
        record: &mut Option<Box<Record>>,
        id: &str,
        from: &[u8],
        nrcpt: usize,
        size: u64,
    ) -> bool {
        let r = record.get_or_insert_with(|| Box::new(Record::new()));
        if r.count > 0 {
            r.ids.push(',');
            r.from.push(',');
        }
        r.ids.push_str(id);
        let _ = write!(r.from, "<{}>", Escaped(from));
        r.nrcpt[r.count] = u32::try_from(nrcpt).unwrap_or(u32::MAX);
        r.size[r.count] = size;
        r.count += 1;
        r.count == MESSAGES_PER_LINE
    }

    /// Keeps the counters of a fold before the session's end (one per
    /// `SessionStats::FOLD_AT` commands, so rare enough to allocate for).
    pub(crate) fn folded(record: &mut Option<Box<Record>>, s: &SessionStats) {
        let r = record.get_or_insert_with(|| Box::new(Record::new()));
        r.commands += u32::from(s.commands);
        r.messages += u32::from(s.messages);
        r.errors += u32::from(s.errors);
        for (a, &b) in r.replies.iter_mut().zip(&s.replies) {
            *a += u32::from(b);
        }
    }

    /// Empties the message lists after they were written (the allocation stays).
    pub(crate) fn clear_messages(&mut self) {
        self.ids.clear();
        self.from.clear();
        self.count = 0;
    }

    /// Whether it lists any message.
    pub(crate) fn has_messages(&self) -> bool {
        self.count > 0
    }

    pub(crate) fn ids(&self) -> &str {
        &self.ids
    }

    pub(crate) fn from(&self) -> &str {
        &self.from
    }

    pub(crate) fn nrcpt(&self) -> List<'_, u32> {
        List(&self.nrcpt[..self.count])
    }

    pub(crate) fn size(&self) -> List<'_, u64> {
        List(&self.size[..self.count])
    }
}

/// What the `session ended` line says of one session, all borrowed.
pub(crate) struct Ended<'a> {
    /// The real client (after a PROXY header, the one it named).
    pub(crate) client: SocketAddr,
    pub(crate) helo: &'a [u8],
    /// TLS version and cipher suite, if the session ended inside TLS.
    pub(crate) tls: Option<(&'static str, &'static str)>,
    pub(crate) record: Option<&'a Record>,
    /// The counters of the session's last fold.
    pub(crate) last: &'a SessionStats,
    pub(crate) duration: Duration,
    pub(crate) reason: CloseReason,
}

/// Writes the `session ended` line; a field with nothing to say is left out.
pub(crate) fn session_ended(e: &Ended<'_>) {
    let listed = e.record.filter(|r| r.has_messages());
    let rejected = Rejected::count(e.last, e.record);
    tracing::info!(
        client = %e.client,
        helo = (!e.helo.is_empty()).then(|| display(Escaped(e.helo))),
        tls = e.tls.map(|(version, _)| display(version)),
        cipher = e.tls.map(|(_, cipher)| display(cipher)),
        ids = listed.map(|r| display(r.ids())),
        from = listed.map(|r| display(r.from())),
        nrcpt = listed.map(|r| display(r.nrcpt())),
        size = listed.map(|r| display(r.size())),
        rejected = rejected.any().then_some(display(&rejected)),
        commands = u32::from(e.last.commands) + e.record.map_or(0, |r| r.commands),
        messages = u32::from(e.last.messages) + e.record.map_or(0, |r| r.messages),
        errors = u32::from(e.last.errors) + e.record.map_or(0, |r| r.errors),
        duration_ms = e.duration.as_millis() as u64,
        reason = %e.reason.name(),
        "session ended"
    );
}

/// Writes a full record's messages as a `session messages` line (the session goes on).
pub(crate) fn session_messages(client: SocketAddr, r: &Record) {
    tracing::info!(
        client = %client,
        ids = %r.ids(),
        from = %r.from(),
        nrcpt = %r.nrcpt(),
        size = %r.size(),
        "session messages"
    );
}

/// Whether a reply kind is a refusal for the log (RFC 5321 §4.2.1: a 4yz or 5yz code).
fn rejection(r: Reply) -> bool {
    r.code() >= 400
}

/// Numbers, comma-separated.
pub(crate) struct List<'a, T>(&'a [T]);

impl<T: fmt::Display> fmt::Display for List<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

/// The session's refusals by code, `550:3,554:1` in code order: the replies of its last
/// counters and of those folded before, counted once per line.
pub(crate) struct Rejected {
    codes: [(u16, u32); Reply::COUNT],
    n: usize,
}

impl Rejected {
    /// Counts by code, in code order, without allocating.
    pub(crate) fn count(last: &SessionStats, earlier: Option<&Record>) -> Rejected {
        let mut out = Rejected {
            codes: [(0, 0); Reply::COUNT],
            n: 0,
        };
        for r in Reply::ALL.into_iter().filter(|&r| rejection(r)) {
            let count = u32::from(last.replies[r as usize]) + earlier.map_or(0, |e| e.replies[r as usize]);
            if count == 0 {
                continue;
            }
            match out.codes[..out.n].iter_mut().find(|(code, _)| *code == r.code()) {
                Some((_, c)) => *c += count,
                None => {
                    out.codes[out.n] = (r.code(), count);
                    out.n += 1;
                }
            }
        }
        out.codes[..out.n].sort_unstable();
        out
    }

    /// Whether the session was refused anything.
    pub(crate) fn any(&self) -> bool {
        self.n > 0
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (code, count)) in self.codes[..self.n].iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{code}:{count}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_summed_by_code_over_every_fold() {
        let mut last = SessionStats::default();
        last.replies[Reply::UnknownUser as usize] = 2;
        last.replies[Reply::TextLineTooLong as usize] = 1;
        last.replies[Reply::RelayDenied as usize] = 1;
        last.replies[Reply::RcptOk as usize] = 5;
        let mut record = None;
        let mut before = SessionStats::default();
        before.replies[Reply::Unrecognized as usize] = 4;
        Record::folded(&mut record, &before);
        let r = Rejected::count(&last, record.as_deref());
        assert_eq!(r.to_string(), "500:4,550:3,554:1");
        assert!(!Rejected::count(&SessionStats::default(), None).any());
    }

    #[test]
    fn the_record_fills_at_its_bound_and_starts_again() {
        let mut record = None;
        for i in 0..MESSAGES_PER_LINE - 1 {
            assert!(!Record::queued(&mut record, &format!("ID{i}"), b"a@x", 1, 10));
        }
        assert!(Record::queued(&mut record, "LAST", b"", 2, 20));
        let r = record.as_mut().unwrap();
        assert!(r.ids().ends_with(",ID14,LAST"));
        assert!(r.from().ends_with(",<a@x>,<>"));
        assert!(r.nrcpt().to_string().ends_with(",1,2"));
        r.clear_messages();
        assert!(!r.has_messages());
        assert!(!Record::queued(&mut record, "NEXT", b"b@y", 3, 30));
        let r = record.as_ref().unwrap();
        assert_eq!((r.ids(), r.from()), ("NEXT", "<b@y>"));
        assert_eq!(
            (r.nrcpt().to_string(), r.size().to_string()),
            ("3".into(), "30".into())
        );
    }
}
