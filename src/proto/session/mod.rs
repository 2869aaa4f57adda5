//! One SMTP session as a deterministic state machine: bytes and the clock in, replies and events out.

use super::data::{Body, DataReceiver};
use super::envelope::Envelope;
use super::event::{CloseReason, Commit, Event, Progress};
use super::reply::Reply;
use super::settings::Settings;
use super::sniff::NonSmtp;
use super::stats::SessionStats;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod commands;
mod message;

#[derive(Debug)]
enum State {
    /// Not started: the caller has not yet told who the client is ([`Session::handle_start`]),
    /// waiting for a PROXY header or an implicit TLS handshake. Nothing is read or sent.
    Pending,
    /// The first line of a delayed greeting is sent; the rest follows at `until`. A client
    /// that talks before it is a pregreeter (postscreen's test).
    Greeting {
        until: Instant,
    },
    Command,
    Data(DataReceiver),
    /// Inside a BDAT chunk of `remaining` octets, whose content goes where `fate` says.
    Chunk {
        remaining: u64,
        last: bool,
        fate: Fate,
    },
    AwaitCommit,
    /// STARTTLS was answered: nothing is read until the caller reports the handshake done.
    AwaitTls,
    /// A reply held back (the invalid-recipient tarpit) in `held`, sent at `until`; nothing
    /// is read meanwhile, so the replies behind it keep their order.
    Tarpit {
        until: Instant,
    },
    Closed,
}

/// What becomes of a BDAT chunk's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Message content.
    Keep,
    /// Read and dropped, then answered with this reply (RFC 3030 §4.2).
    Refuse(Reply),
    /// Read and dropped; already answered.
    Discard,
}

/// What the caller knows of the client when the session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client may send to any domain: it is in `relay_networks`.
    pub relay: bool,
    /// The connection is inside TLS from its start (an implicit TLS listener, RFC 8314).
    pub tls: bool,
}

/// What carries the session's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    Plain,
    /// Inside TLS, after STARTTLS or on an implicit TLS listener (RFC 8314).
    Tls,
}

const EV_START: u8 = 1;
const EV_END: u8 = 2;
const EV_ABORT: u8 = 4;
const EV_STARTTLS: u8 = 8;

/// One SMTP session (RFC 5321), with PIPELINING (RFC 2920), CHUNKING (RFC 3030), SIZE
/// (RFC 1870), 8BITMIME, SMTPUTF8 (RFC 6531), ENHANCEDSTATUSCODES (RFC 2034) and STARTTLS
/// (RFC 3207; the caller runs TLS, the session only its commands and its reset).
///
/// The caller owns the connection: it lends the output buffer, feeds input with
/// [`handle_input`](Self::handle_input), drains [`poll_event`](Self::poll_event), and writes
/// what the output buffer holds once per batch of input (RFC 2920 §3.1).
#[derive(Debug)]
pub struct Session {
    settings: Arc<Settings>,
    state: State,
    security: Security,
    /// The client may relay (see [`Client::relay`]).
    relay: bool,
    greeted: bool,
    /// The client has sent a recognized SMTP verb; until then non-SMTP sniffing is strict.
    spoke_smtp: bool,
    /// Shutting down: close as soon as no transaction is in progress.
    draining: bool,
    errors: u32,
    /// Recipients refused in this session (relay denied, unknown user), for the tarpit.
    invalid_rcpts: u32,
    /// A reply held by the tarpit (allocated only then).
    held: Vec<u8>,
    /// A command line split across calls, at most `max_command_line` bytes.
    line: Vec<u8>,
    /// Skipping the rest of an overlong command line, up to its LF.
    discarding: bool,
    bdat_size: u64,
    events: u8,
    /// Set when the session ends; polled as [`Event::Close`] after the other events.
    close: Option<CloseReason>,
    /// Whether `close` was already polled.
    close_polled: bool,
    envelope: Envelope,
    /// When the current command line, data block or commit must be done by (RFC 5321
    /// §4.5.3.2); bytes of a command line do not move it, only its end does.
    deadline: Instant,
    /// When the session started: it may last `max_session_secs`.
    started: Instant,
    /// When the message in progress started, and its octets so far, for `min_data_rate`.
    message_started: Instant,
    message_octets: u64,
    stats: SessionStats,
}

impl Session {
    /// Starts a session for `client` and appends the greeting (or its first line, with
    /// `greet_delay_ms`) to `out`.
    pub fn new(settings: Arc<Settings>, client: Client, now: Instant, out: &mut Vec<u8>) -> Session {
        let mut session = Session::pending(settings, now);
        session.handle_start(now, client, out);
        session
    }

    /// A session that waits for [`handle_start`](Self::handle_start): the caller learns who
    /// the client is first (a PROXY header), or runs the implicit TLS handshake first (RFC 8314
    /// §3.3: the greeting travels inside TLS).
    pub fn pending(settings: Arc<Settings>, now: Instant) -> Session {
        let deadline = now + Duration::from_secs(settings.config.limits.command_timeout_secs);
        Session {
            settings,
            state: State::Pending,
            security: Security::Plain,
            relay: false,
            greeted: false,
            spoke_smtp: false,
            draining: false,
            errors: 0,
            invalid_rcpts: 0,
            held: Vec::new(),
            line: Vec::new(),
            discarding: false,
            bdat_size: 0,
            events: 0,
            close: None,
            close_polled: false,
            envelope: Envelope::default(),
            deadline,
            started: now,
            message_started: now,
            message_octets: 0,
            stats: SessionStats::default(),
        }
    }

    /// Starts a pending session: the client is known (and in TLS, if `client.tls`); appends
    /// the greeting, or with `greet_delay_ms` its first line (`220-`), the rest following at
    /// [`handle_timeout`](Self::handle_timeout). Ignored unless the session is pending.
    pub fn handle_start(&mut self, now: Instant, client: Client, out: &mut Vec<u8>) {
        if !matches!(self.state, State::Pending) {
            return;
        }
        self.relay = client.relay;
        if client.tls {
            self.security = Security::Tls;
        }
        self.started = now;
        let delay = self.settings.config.limits.greet_delay_ms;
        if delay > 0 {
            out.extend_from_slice(&self.settings.greeting_teaser);
            self.state = State::Greeting {
                until: now + Duration::from_millis(delay),
            };
        } else {
            self.state = State::Command;
            self.greet(out);
        }
        self.touch(now);
    }

    fn greet(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.settings.greeting);
        self.stats.count(Reply::Greeting);
    }

    /// The TLS handshake after STARTTLS is done: the session starts over as after the greeting
    /// (RFC 3207 §4.2: everything learnt from the client before TLS is forgotten, so a new
    /// EHLO is needed, and its reply no longer offers STARTTLS). Ignored unless the session
    /// awaits TLS.
    pub fn handle_tls_established(&mut self, now: Instant, out: &mut Vec<u8>) {
        if !matches!(self.state, State::AwaitTls) {
            return;
        }
        self.state = State::Command;
        self.security = Security::Tls;
        self.greeted = false;
        self.envelope.set_helo(b"", false);
        self.touch(now);
        self.drain_if_idle(out);
    }

    /// Whether the session runs inside TLS (or is waiting for its handshake to do so).
    pub fn is_tls(&self) -> bool {
        self.security == Security::Tls || matches!(self.state, State::AwaitTls)
    }

    /// The session's counters since it started or since the last [`take_stats`](Self::take_stats).
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Hands the counters over and starts them again from zero (see [`SessionStats::FOLD_AT`]).
    pub fn take_stats(&mut self) -> SessionStats {
        std::mem::take(&mut self.stats)
    }

    /// The envelope of the message in progress (valid from `MessageStart` to its end).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Consumes client bytes, appending replies to `out`; returns how many it consumed and the
    /// message content among them.
    ///
    /// It stops early when it hands out content, when an event is ready (drain
    /// [`poll_event`](Self::poll_event), then call again with the rest), when `out` holds
    /// `max_reply_backlog` bytes (write it first), when its counters are due to be folded
    /// ([`take_stats`](Self::take_stats), see [`SessionStats::FOLD_AT`]), and while a message
    /// awaits [`handle_commit`](Self::handle_commit) (consumes nothing). After the session has closed
    /// it consumes and ignores everything.
    pub fn handle_input<'a>(&mut self, now: Instant, input: &'a [u8], out: &mut Vec<u8>) -> Progress<'a> {
        let backlog = self.settings.config.limits.max_reply_backlog;
        let mut i = 0;
        let mut body = Body::default();
        let (commands, mut data) = (self.stats.commands, 0);
        while i < input.len()
            && !self.event_pending()
            && out.len() < backlog
            && body.is_empty()
            && !self.stats.should_fold()
        {
            match &mut self.state {
                State::Command => i += self.command_bytes(now, &input[i..], out),
                State::Greeting { .. } => {
                    // RFC 5321 §4.3.1 has the client wait for the greeting; a spambot that
                    // does not is refused (postscreen's pregreet test).
                    self.reply(Reply::Pregreet, out);
                    self.close(CloseReason::Pregreet);
                }
                State::Data(receiver) => {
                    let fed = receiver.feed(&input[i..]);
                    i += fed.consumed;
                    data += fed.consumed;
                    body = fed.body;
                    if fed.done {
                        self.finish_data(out);
                    } else if fed.consumed == 0 {
                        // The receiver needs the next byte to decide (`.<CR>` at the end).
                        break;
                    }
                }
                State::Chunk {
                    remaining,
                    last,
                    fate,
                } => {
                    let n = (input.len() - i).min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= n as u64;
                    if *fate == Fate::Keep {
                        // The chunk was checked against the size limit before it was read.
                        self.bdat_size += n as u64;
                        body = Body::single(&input[i..i + n]);
                    }
                    i += n;
                    data += n;
                    if *remaining == 0 {
                        let (last, fate) = (*last, *fate);
                        self.finish_chunk(last, fate, out);
                    }
                }
                State::Pending | State::AwaitCommit | State::AwaitTls | State::Tarpit { .. } => break,
                State::Closed => i = input.len(),
            }
            self.drain_if_idle(out);
        }
        self.message_octets += data as u64;
        // A deadline per command line and per data block (RFC 5321 §4.5.3.2): the octets of a
        // line that has not ended do not move it, so a client cannot hold its slot by sending
        // one byte at a time.
        if self.stats.commands != commands || data > 0 {
            self.touch(now);
        }
        Progress { consumed: i, body }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.take_event(EV_START) {
            Some(Event::MessageStart)
        } else if self.take_event(EV_END) {
            Some(Event::MessageEnd)
        } else if self.take_event(EV_ABORT) {
            Some(Event::MessageAbort)
        } else if self.take_event(EV_STARTTLS) {
            Some(Event::StartTls)
        } else if let (Some(reason), false) = (self.close, self.close_polled) {
            self.close_polled = true;
            Some(Event::Close(reason))
        } else {
            None
        }
    }

    /// Whether an event waits to be polled.
    fn event_pending(&self) -> bool {
        self.events != 0 || (self.close.is_some() && !self.close_polled)
    }

    fn take_event(&mut self, flag: u8) -> bool {
        let set = self.events & flag != 0;
        self.events &= !flag;
        set
    }

    /// Reports the storage's answer to `MessageEnd` and appends the final reply to `out`.
    /// Ignored unless a message is awaiting its commit.
    pub fn handle_commit(&mut self, now: Instant, commit: Commit<'_>, out: &mut Vec<u8>) {
        if !matches!(self.state, State::AwaitCommit) {
            return;
        }
        match commit {
            Commit::Queued(id) => {
                out.extend_from_slice(b"250 2.0.0 Ok: queued as ");
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(b"\r\n");
                self.stats.count(Reply::Queued);
                self.stats.messages += 1;
            }
            Commit::Failed => self.reply(Reply::Storage, out),
        }
        self.envelope.reset();
        self.state = State::Command;
        self.drain_if_idle(out);
        self.touch(now);
    }

    /// When the session next needs [`handle_timeout`](Self::handle_timeout); `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let limits = &self.settings.config.limits;
        let mut at = self.deadline;
        match self.state {
            State::Closed => return None,
            State::Greeting { until } | State::Tarpit { until } => at = at.min(until),
            State::Data(_) | State::Chunk { .. } if limits.min_data_rate > 0 => {
                at = at.min(self.too_slow_at());
            }
            _ => {}
        }
        if !matches!(self.state, State::Pending | State::AwaitCommit) {
            at = at.min(self.started + Duration::from_secs(limits.max_session_secs));
        }
        Some(at)
    }

    /// When a message arriving at `message_octets` so far falls under `min_data_rate`: after
    /// the grace period, once fewer octets than the rate times the time have come.
    fn too_slow_at(&self) -> Instant {
        let limits = &self.settings.config.limits;
        let earned = self.message_octets / limits.min_data_rate.max(1);
        self.message_started + Duration::from_secs(earned.max(limits.min_data_rate_grace_secs))
    }

    /// Sends the rest of a delayed greeting or a held reply when their time has come; ends the
    /// session with `421` when a deadline has passed: the command line's or data block's (RFC
    /// 5321 §4.5.3.2), `max_session_secs`, or `min_data_rate` in DATA.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<u8>) {
        match self.state {
            State::Closed => return,
            State::Greeting { until } if now >= until => {
                self.state = State::Command;
                self.greet(out);
                self.touch(now);
                return;
            }
            State::Tarpit { until } if now >= until => {
                out.extend_from_slice(&self.held);
                self.held = Vec::new();
                self.state = State::Command;
                self.touch(now);
                return;
            }
            _ => {}
        }
        let limits = &self.settings.config.limits;
        let too_long = !matches!(self.state, State::Pending | State::AwaitCommit)
            && now >= self.started + Duration::from_secs(limits.max_session_secs);
        let too_slow = matches!(self.state, State::Data(_) | State::Chunk { .. })
            && limits.min_data_rate > 0
            && now >= self.too_slow_at();
        let (reply, reason) = if too_long {
            (Reply::SessionTooLong, CloseReason::SessionTooLong)
        } else if too_slow {
            (Reply::SlowData, CloseReason::SlowData)
        } else if now < self.deadline {
            return;
        } else if matches!(self.state, State::AwaitCommit) {
            (Reply::CommitTimeout, CloseReason::CommitTimeout)
        } else if matches!(self.state, State::Pending) {
            // Nothing was sent yet, so nothing is said.
            self.close(CloseReason::Timeout);
            return;
        } else {
            (Reply::Timeout, CloseReason::Timeout)
        };
        self.reply(reply, out);
        self.close(reason);
    }

    /// Server shutdown: an idle session gets `421 4.3.2` and closes now; one inside a
    /// transaction may finish it and closes after its final reply. One waiting for its TLS
    /// handshake gets its `421` once the handshake is done, inside TLS.
    pub fn handle_shutdown(&mut self, out: &mut Vec<u8>) {
        self.draining = true;
        self.drain_if_idle(out);
    }

    fn touch(&mut self, now: Instant) {
        let limits = &self.settings.config.limits;
        let secs = match self.state {
            State::Pending
            | State::Greeting { .. }
            | State::Command
            | State::AwaitTls
            | State::Tarpit { .. } => limits.command_timeout_secs,
            State::Data(_) | State::Chunk { .. } => limits.data_timeout_secs,
            State::AwaitCommit => limits.commit_timeout_secs,
            State::Closed => return,
        };
        self.deadline = now + Duration::from_secs(secs);
    }

    /// Ends the session for `reason` (the first reason given stands).
    fn close(&mut self, reason: CloseReason) {
        if matches!(self.state, State::Closed) {
            return;
        }
        if self.envelope.bdat || matches!(self.state, State::Data(_) | State::AwaitCommit) {
            self.events |= EV_ABORT;
        }
        self.envelope.reset();
        self.state = State::Closed;
        self.close = Some(reason);
        self.line = Vec::new();
    }

    /// Appends a fixed reply, counts it, and ends the session at the error limit.
    fn reply(&mut self, reply: Reply, out: &mut Vec<u8>) {
        out.extend_from_slice(reply.fixed());
        self.stats.count(reply);
        self.count_error(reply, out);
    }

    fn count_error(&mut self, reply: Reply, out: &mut Vec<u8>) {
        if reply.is_client_error() {
            self.penalize(out);
        }
    }

    /// One more error towards `max_errors`.
    fn penalize(&mut self, out: &mut Vec<u8>) {
        self.errors += 1;
        if self.errors >= self.settings.config.limits.max_errors {
            out.extend_from_slice(Reply::TooManyErrors.fixed());
            self.stats.count(Reply::TooManyErrors);
            self.close(CloseReason::TooManyErrors);
        }
    }

    fn syntax(&mut self, usage: &'static [u8], out: &mut Vec<u8>) {
        out.extend_from_slice(b"501 5.5.4 Syntax: ");
        out.extend_from_slice(usage);
        out.extend_from_slice(b"\r\n");
        self.stats.count(Reply::Syntax);
        self.count_error(Reply::Syntax, out);
    }

    fn non_smtp(&mut self, class: NonSmtp, out: &mut Vec<u8>) {
        out.extend_from_slice(class.reply());
        self.stats.count(Reply::NonSmtp);
        self.stats.non_smtp = Some(class);
        self.close(CloseReason::NonSmtp(class));
    }

    /// Whether `tls_required` refuses this transaction command (`530 5.7.0`, RFC 3207 §4).
    fn needs_tls(&self) -> bool {
        self.settings.config.tls_required && self.security == Security::Plain
    }

    /// The 503 owed by DATA or BDAT when the envelope is incomplete (or the 530 while TLS is
    /// required).
    fn transaction_error(&self) -> Option<Reply> {
        if self.needs_tls() {
            Some(Reply::TlsRequired)
        } else if !self.greeted {
            Some(Reply::NeedHelo)
        } else if !self.envelope.mail {
            Some(Reply::NeedMail)
        } else if self.envelope.rcpt_count() == 0 {
            Some(Reply::NeedRcpt)
        } else {
            None
        }
    }

    /// Drops the transaction; a message already started is aborted.
    fn abort_transaction(&mut self) {
        if self.envelope.bdat {
            self.events |= EV_ABORT;
        }
        self.envelope.reset();
    }

    /// A draining session says goodbye as soon as no transaction is in progress: after the
    /// final reply of its transaction, or after any command outside one.
    fn drain_if_idle(&mut self, out: &mut Vec<u8>) {
        if self.draining && matches!(self.state, State::Command) && !self.envelope.mail {
            self.reply(Reply::ShuttingDown, out);
            self.close(CloseReason::Shutdown);
        }
    }
}

#[cfg(test)]
mod tests;
