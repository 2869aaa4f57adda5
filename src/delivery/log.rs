//! Delivery's log lines: one per recipient outcome, `status=sent|deferred|bounced|expired`, as Postfix's `status=sent (250 …)`.
//!
//! Every outcome is logged at info, the refusals too: a `5xx` from the next hop or an expired
//! message is the mail system working as specified (RFC 5321 §4.2.1, §4.5.4.1), recorded for
//! the operator who traces a queue id, not a fault of ringmx that needs one; warnings and
//! errors stay for what does (a state file that cannot be saved, a spool that refuses a
//! notification), so `log_level = "warn"` shows only those.

use super::reply::Reply;
use super::route::Dest;
use crate::logging::Escaped;
use std::time::SystemTime;

/// What became of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// The next hop took it (`2xx`).
    Sent,
    /// Tried again later (`4xx`, a broken connection, no route).
    Deferred,
    /// Refused for good (`5xx`); the sender is notified.
    Bounced,
    /// Deferred past `max_queue_lifetime`; the sender is notified.
    Expired,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Deferred => "deferred",
            Status::Bounced => "bounced",
            Status::Expired => "expired",
        }
    }

    /// The status a next hop's reply gives.
    pub(super) fn of(reply: &Reply) -> Status {
        match reply.class() {
            2 => Status::Sent,
            5 => Status::Bounced,
            _ => Status::Deferred,
        }
    }
}

/// One recipient's outcome.
pub(super) struct Outcome<'a> {
    pub(super) id: &'a str,
    pub(super) rcpt: &'a [u8],
    /// Where it went; none when it was not routed or it expired between attempts.
    pub(super) relay: Option<&'a Dest>,
    pub(super) reply: &'a Reply,
    /// When the message arrived, for `delay`.
    pub(super) received: SystemTime,
    /// This attempt's number, from 1.
    pub(super) attempts: u32,
    pub(super) status: Status,
}

/// Writes `delivery id=… to=<…> relay=… delay=… attempts=… status=… reply="…"`.
pub(super) fn recipient(o: &Outcome<'_>) {
    let delay = SystemTime::now()
        .duration_since(o.received)
        .map_or(0, |d| d.as_secs());
    tracing::info!(
        id = %o.id,
        to = %format_args!("<{}>", Escaped(o.rcpt)),
        relay = o.relay.map(display),
        delay,
        attempts = o.attempts,
        status = %o.status.name(),
        reply = o.reply.one_line().as_str(),
        "delivery"
    );
}

#[cfg(test)]
mod tests {
    use super::{Reply, Status};

    #[test]
    fn the_reply_class_gives_the_status() {
        assert_eq!(Status::of(&Reply::local(250, "2.0.0 Ok")), Status::Sent);
        assert_eq!(Status::of(&Reply::local(452, "4.2.2 full")), Status::Deferred);
        assert_eq!(Status::of(&Reply::local(550, "5.1.1 no")), Status::Bounced);
    }
}
