//! One SMTP session as a deterministic state machine: bytes and the clock in, replies and events out.

use super::address::{parse_mail_params, parse_path, ParamError, PathError};
use super::data::{Body, DataReceiver, Flaw};
use super::envelope::Envelope;
use super::event::{CloseReason, Commit, Event, Progress};
use super::reply::{write_rcpt_refusal, write_u64, write_unrecognized, Reply};
use super::settings::Settings;
use super::sniff::{classify_line, sniff, NonSmtp};
use super::stats::SessionStats;
use super::verb::{lookup, scan_octets, Verb};
use crate::policy::recipients::Verdict;
use memchr::memchr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

    /// Handles bytes in command state: cuts one line (or buffers a partial one) and returns the
    /// bytes consumed.
    fn command_bytes(&mut self, now: Instant, input: &[u8], out: &mut Vec<u8>) -> usize {
        let max = self.settings.config.limits.max_command_line;
        let lf = memchr(b'\n', input);
        let segment = &input[..lf.map_or(input.len(), |p| p + 1)];
        if !self.spoke_smtp {
            if let Some(class) = sniff(self.line.is_empty() && !self.discarding, segment) {
                self.non_smtp(class, out);
                return segment.len();
            }
        }
        if self.discarding {
            // RFC 5321 §4.5.3.1.4: the overlong line is skipped without being buffered.
            return match lf {
                Some(p) => {
                    self.discarding = false;
                    self.reply(Reply::LineTooLong, out);
                    p + 1
                }
                None => input.len(),
            };
        }
        if self.line.len() + segment.len() > max {
            self.line.clear();
            match lf {
                Some(_) => self.reply(Reply::LineTooLong, out),
                None => self.discarding = true,
            }
            return segment.len();
        }
        if lf.is_none() {
            if self.line.capacity() == 0 {
                self.line.reserve_exact(max);
            }
            self.line.extend_from_slice(segment);
            return segment.len();
        }
        if self.line.is_empty() {
            self.command_line(now, segment, out);
        } else {
            let mut line = std::mem::take(&mut self.line);
            line.extend_from_slice(segment);
            self.command_line(now, &line, out);
            line.clear();
            if !matches!(self.state, State::Closed) {
                self.line = line;
            }
        }
        segment.len()
    }

    /// Handles one complete command line, LF included.
    fn command_line(&mut self, now: Instant, line: &[u8], out: &mut Vec<u8>) {
        self.stats.commands += 1;
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.reply(Reply::EmptyLine, out);
        }
        let (control, eight_bit) = scan_octets(line);
        let (word, arg) = match memchr(b' ', line) {
            Some(sp) => (&line[..sp], &line[sp + 1..]),
            None => (line, &line[line.len()..]),
        };
        let Some(verb) = lookup(word) else {
            // No HTTP method, SSH banner or header name is an SMTP verb, so other protocols
            // are looked for only here, off the path of valid commands.
            if let Some(class) = classify_line(line, self.spoke_smtp) {
                return self.non_smtp(class, out);
            }
            if control || eight_bit {
                return self.reply(Reply::IllegalChars, out);
            }
            write_unrecognized(out, word);
            self.stats.count(Reply::Unrecognized);
            return self.count_error(Reply::Unrecognized, out);
        };
        if control {
            return self.reply(Reply::IllegalChars, out);
        }
        self.spoke_smtp = true;
        if eight_bit && !matches!(verb, Verb::Mail | Verb::Rcpt) {
            return self.reply(Reply::IllegalChars, out);
        }
        match verb {
            Verb::Helo | Verb::Ehlo => self.helo(verb == Verb::Ehlo, arg, out),
            Verb::Mail => self.mail(arg, out),
            Verb::Rcpt => self.rcpt(now, arg, out),
            Verb::Data => self.data(now, arg, out),
            Verb::Bdat => self.bdat(now, arg, out),
            Verb::Rset => {
                if !arg.is_empty() {
                    return self.syntax(b"RSET", out);
                }
                self.abort_transaction();
                self.reply(Reply::Ok, out);
            }
            Verb::Noop => self.reply(Reply::Ok, out),
            Verb::Quit => {
                if !arg.is_empty() {
                    return self.syntax(b"QUIT", out);
                }
                self.reply(Reply::Bye, out);
                self.close(CloseReason::Quit);
            }
            Verb::Vrfy => {
                if arg.is_empty() {
                    return self.syntax(b"VRFY address", out);
                }
                self.reply(Reply::Vrfy, out);
            }
            Verb::Help => self.reply(Reply::Help, out),
            Verb::StartTls => self.starttls(arg, out),
            Verb::NotOffered => self.reply(Reply::NotImplemented, out),
        }
    }

    /// RFC 3207 §4, with Postfix's replies.
    fn starttls(&mut self, arg: &[u8], out: &mut Vec<u8>) {
        if !self.settings.config.starttls {
            return self.reply(Reply::NotImplemented, out);
        }
        if !arg.is_empty() {
            return self.syntax(b"STARTTLS", out);
        }
        if self.security == Security::Tls {
            return self.reply(Reply::TlsActive, out);
        }
        if self.envelope.mail {
            return self.reply(Reply::TlsInTransaction, out);
        }
        self.reply(Reply::TlsReady, out);
        self.state = State::AwaitTls;
        self.events |= EV_STARTTLS;
        // A partial line cannot follow a complete one in the same call, but a discarded
        // overlong one could be pending: it belongs to the plaintext that is thrown away.
        self.discarding = false;
    }

    /// Whether `tls_required` refuses this transaction command (`530 5.7.0`, RFC 3207 §4).
    fn needs_tls(&self) -> bool {
        self.settings.config.tls_required && self.security == Security::Plain
    }

    fn helo(&mut self, esmtp: bool, arg: &[u8], out: &mut Vec<u8>) {
        let name = arg.trim_ascii();
        if name.is_empty() {
            return self.syntax(if esmtp { b"EHLO hostname" } else { b"HELO hostname" }, out);
        }
        // RFC 5321 §4.1.4: HELO/EHLO also resets any transaction in progress.
        self.abort_transaction();
        self.greeted = true;
        self.envelope.set_helo(name, esmtp);
        let settings = Arc::clone(&self.settings);
        let (reply, kind) = if esmtp && self.security == Security::Tls {
            (&settings.ehlo_tls, Reply::Ehlo)
        } else if esmtp {
            (&settings.ehlo, Reply::Ehlo)
        } else {
            (&settings.helo, Reply::Helo)
        };
        out.extend_from_slice(reply);
        self.stats.count(kind);
    }

    fn mail(&mut self, arg: &[u8], out: &mut Vec<u8>) {
        const USAGE: &[u8] = b"MAIL FROM:<address> [parameters]";
        if self.needs_tls() {
            return self.reply(Reply::TlsRequired, out);
        }
        if !self.greeted {
            return self.reply(Reply::NeedHelo, out);
        }
        if self.envelope.mail {
            return self.reply(Reply::NestedMail, out);
        }
        let path = match parse_path(arg, b"FROM:", true) {
            Ok(path) => path,
            Err(PathError::Syntax) => return self.syntax(USAGE, out),
            Err(PathError::Address) => return self.reply(Reply::BadSender, out),
        };
        if !path.params.is_empty() && !self.envelope.esmtp() {
            // Service extensions exist only after EHLO (RFC 5321 §4.1.1.11, §2.2.1).
            return self.reply(Reply::UnsupportedParam, out);
        }
        let params = match parse_mail_params(path.params) {
            Ok(params) => params,
            Err(ParamError::Syntax) => return self.syntax(USAGE, out),
            Err(ParamError::Unsupported) => return self.reply(Reply::UnsupportedParam, out),
        };
        // RFC 6531 §3.4: non-ASCII only in the address, and only with SMTPUTF8.
        if (path.eight_bit && !params.smtputf8) || path.params.iter().any(|&b| b >= 0x80) {
            return self.reply(Reply::IllegalChars, out);
        }
        if params
            .size
            .is_some_and(|size| size > self.settings.config.limits.max_message_size)
        {
            return self.reply(Reply::SizeExceeded, out);
        }
        self.envelope.set_mail(path.address, path.params, params);
        self.reply(Reply::MailOk, out);
    }

    fn rcpt(&mut self, now: Instant, arg: &[u8], out: &mut Vec<u8>) {
        if self.needs_tls() {
            return self.reply(Reply::TlsRequired, out);
        }
        if !self.greeted {
            return self.reply(Reply::NeedHelo, out);
        }
        if !self.envelope.mail {
            return self.reply(Reply::NeedMail, out);
        }
        if self.envelope.bdat {
            return self.reply(Reply::BadSequence, out);
        }
        let path = match parse_path(arg, b"TO:", false) {
            Ok(path) => path,
            Err(PathError::Syntax) => return self.syntax(b"RCPT TO:<address>", out),
            Err(PathError::Address) => return self.reply(Reply::BadRecipient, out),
        };
        if (path.eight_bit && !self.envelope.params.smtputf8) || path.params.iter().any(|&b| b >= 0x80) {
            return self.reply(Reply::IllegalChars, out);
        }
        if !path.params.is_empty() {
            return self.reply(Reply::UnsupportedParam, out);
        }
        let limits = &self.settings.config.limits;
        if self.envelope.rcpt_count() >= limits.max_recipients {
            // RFC 5321 §4.5.3.1.10: the client sends the rest in another transaction, so the
            // excess is not an error, up to an overshoot limit (Postfix's
            // smtpd_recipient_overshoot_limit); past it each one counts.
            self.envelope.overshoot += 1;
            let counts = self.envelope.overshoot > limits.recipient_overshoot_limit;
            out.extend_from_slice(Reply::TooManyRecipients.fixed());
            self.stats.count(Reply::TooManyRecipients);
            if counts {
                self.stats.errors += 1;
                self.penalize(out);
            }
            return;
        }
        if let Some(refusal) = self.rcpt_refusal(path.address) {
            return self.refuse_rcpt(now, refusal, path.address, out);
        }
        self.envelope.add_rcpt(path.address);
        self.reply(Reply::RcptOk, out);
    }

    /// Why a recipient is refused, if it is: a client outside `relay_networks` may send only
    /// to the accepted domains (RFC 5321 §3.6: anything else is relaying), and any client only
    /// to the users the recipients table knows there, so that nothing is accepted that would
    /// bounce later (Postfix's `smtpd_reject_unlisted_recipient`).
    fn rcpt_refusal(&self, address: &[u8]) -> Option<Reply> {
        match self.settings.recipients.check(address) {
            Verdict::Accept => None,
            Verdict::UnknownUser => Some(Reply::UnknownUser),
            Verdict::DomainNotAccepted if self.relay => None,
            Verdict::DomainNotAccepted => Some(Reply::RelayDenied),
        }
    }

    /// Answers a refused recipient; past `invalid_rcpt_limit` of them in the session the
    /// answer is held for `invalid_rcpt_delay_secs`, on the caller's timer (the session reads
    /// nothing meanwhile, so what the client pipelined behind it is answered after it, in
    /// order). The reply that reaches the error limit is not held: the session ends with it.
    fn refuse_rcpt(&mut self, now: Instant, reply: Reply, address: &[u8], out: &mut Vec<u8>) {
        let limits = &self.settings.config.limits;
        self.invalid_rcpts += 1;
        let last = self.errors + 1 >= limits.max_errors;
        let delay = limits.invalid_rcpt_delay_secs;
        if self.invalid_rcpts > limits.invalid_rcpt_limit && delay > 0 && !last {
            let until = now + Duration::from_secs(delay);
            write_rcpt_refusal(&mut self.held, reply, address);
            self.state = State::Tarpit { until };
        } else {
            write_rcpt_refusal(out, reply, address);
        }
        self.stats.count(reply);
        self.count_error(reply, out);
    }

    fn data(&mut self, now: Instant, arg: &[u8], out: &mut Vec<u8>) {
        if !arg.is_empty() {
            return self.syntax(b"DATA", out);
        }
        if let Some(reply) = self.transaction_error() {
            return self.reply(reply, out);
        }
        if self.envelope.bdat {
            return self.reply(Reply::DataAfterBdat, out);
        }
        let c = &self.settings.config;
        self.state = State::Data(DataReceiver::new(
            c.limits.max_text_line,
            c.limits.max_message_size,
            c.bare_lf,
        ));
        self.reply(Reply::StartData, out);
        self.message_begins(now);
    }

    fn message_begins(&mut self, now: Instant) {
        self.events |= EV_START;
        self.message_started = now;
        self.message_octets = 0;
    }

    fn bdat(&mut self, now: Instant, arg: &[u8], out: &mut Vec<u8>) {
        const USAGE: &[u8] = b"BDAT size [LAST]";
        let (size, rest) = match memchr(b' ', arg) {
            Some(sp) => (&arg[..sp], arg[sp + 1..].trim_ascii()),
            None => (arg, &arg[arg.len()..]),
        };
        let last = rest.eq_ignore_ascii_case(b"LAST");
        if size.is_empty()
            || size.len() > 19
            || !size.iter().all(u8::is_ascii_digit)
            || !(last || rest.is_empty())
        {
            return self.syntax(USAGE, out);
        }
        let size = size.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        let limit = self.settings.config.limits.max_message_size;
        let so_far = if self.envelope.bdat { self.bdat_size } else { 0 };
        let error = self
            .transaction_error()
            .or((so_far.saturating_add(size) > limit).then_some(Reply::MessageTooBig));
        let fate = match error {
            None => {
                if !self.envelope.bdat {
                    self.envelope.bdat = true;
                    self.bdat_size = 0;
                    self.message_begins(now);
                }
                Fate::Keep
            }
            Some(reply) if size > self.settings.config.limits.bdat_discard_limit => {
                // RFC 3030 §4.2 has a refused chunk read and dropped, but a huge one would be
                // gigabytes of reading for nothing: answer, then hang up.
                self.abort_transaction();
                self.reply(reply, out);
                return self.close(CloseReason::ChunkTooBig);
            }
            Some(Reply::MessageTooBig) => {
                // Known before a byte of the chunk is read: said at once, the chunk dropped.
                self.abort_transaction();
                self.reply(Reply::MessageTooBig, out);
                Fate::Discard
            }
            // RFC 3030 §4.2: a refused chunk is still read, and dropped, before the reply.
            Some(reply) => Fate::Refuse(reply),
        };
        self.state = State::Chunk {
            remaining: size,
            last,
            fate,
        };
        if size == 0 {
            self.finish_chunk(last, fate, out);
        }
    }

    fn finish_chunk(&mut self, last: bool, fate: Fate, out: &mut Vec<u8>) {
        self.state = State::Command;
        match fate {
            Fate::Refuse(reply) => {
                if self.envelope.bdat {
                    self.abort_transaction();
                }
                self.reply(reply, out);
            }
            Fate::Discard => {}
            Fate::Keep if last => {
                self.state = State::AwaitCommit;
                self.events |= EV_END;
            }
            Fate::Keep => {
                out.extend_from_slice(b"250 2.0.0 Ok: ");
                write_u64(out, self.bdat_size);
                out.extend_from_slice(b" octets received\r\n");
                self.stats.count(Reply::ChunkOk);
            }
        }
    }

    fn finish_data(&mut self, out: &mut Vec<u8>) {
        let State::Data(receiver) = &self.state else {
            return;
        };
        let flaw = receiver.flaw();
        self.state = State::Command;
        match flaw {
            None => {
                self.state = State::AwaitCommit;
                self.events |= EV_END;
            }
            Some(flaw) => {
                self.events |= EV_ABORT;
                self.envelope.reset();
                self.reply(
                    match flaw {
                        Flaw::TooBig => Reply::MessageTooBig,
                        Flaw::LineTooLong => Reply::TextLineTooLong,
                        Flaw::BareLf => Reply::BareLf,
                    },
                    out,
                );
            }
        }
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
mod tests {
    use super::*;
    use crate::config::ProtoConfig;
    use crate::proto::MailParams;
    use proptest::prelude::*;

    /// A client in `relay_networks`, as the tests' loopback clients are.
    const RELAY: Client = Client {
        relay: true,
        tls: false,
    };

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever arrives, in whatever pieces, the session's own buffers stay within their
        /// limits and its reply backlog stops growing once it reaches `max_reply_backlog`.
        #[test]
        fn buffers_stay_bounded(
            chunks in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..700),
                    proptest::collection::vec(proptest::sample::select(b"EHLO x\r\nMAIL FROM:<a@b>RCPT TO:<c@d>DATA.BDAT 9 LAST\n".to_vec()), 0..300),
                ],
                0..30,
            ),
            drain_output in any::<bool>(),
        ) {
            let config = ProtoConfig::default();
            let limits = config.limits.clone();
            let now = Instant::now();
            let mut out = Vec::new();
            let mut s = Session::new(Settings::new(config), RELAY, now, &mut out);
            for chunk in &chunks {
                let mut rest = &chunk[..];
                for _ in 0..10_000 {
                    let progress = s.handle_input(now, rest, &mut out);
                    let n = progress.consumed;
                    prop_assert!(progress.body.octets() <= n || progress.body.octets() <= 3);
                    rest = &rest[n..];
                    prop_assert!(s.line.len() <= limits.max_command_line);
                    prop_assert!(s.line.capacity() <= limits.max_command_line);
                    prop_assert!(out.len() <= limits.max_reply_backlog + 512);
                    let mut ended = false;
                    while let Some(event) = s.poll_event() {
                        ended |= event == Event::MessageEnd;
                    }
                    if ended {
                        s.handle_commit(now, Commit::Queued("X"), &mut out);
                    }
                    if drain_output {
                        out.clear();
                    }
                    if rest.is_empty() || (n == 0 && !ended) {
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn envelope_describes_the_message() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut s = Session::new(Settings::new(ProtoConfig::default()), RELAY, t0, &mut out);
        let input = b"EHLO client.example\r\nMAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME\r\n\
            RCPT TO:<c@d.example>\r\nRCPT TO:<e@f.example>\r\nDATA\r\n";
        assert_eq!(s.handle_input(t0, input, &mut out).consumed, input.len());
        assert_eq!(s.poll_event(), Some(Event::MessageStart));
        let env = s.envelope();
        assert_eq!(env.helo(), b"client.example");
        assert!(env.esmtp());
        assert_eq!(env.mail_from(), b"a@b.example");
        assert_eq!(env.mail_params(), b"SIZE=10 BODY=8BITMIME");
        assert_eq!(
            env.params(),
            MailParams {
                size: Some(10),
                eight_bit_mime: true,
                smtputf8: false
            }
        );
        let rcpts: Vec<&[u8]> = env.recipients().collect();
        assert_eq!(rcpts, [&b"c@d.example"[..], b"e@f.example"]);
        assert_eq!(s.handle_input(t0, b".\r\nMAIL FROM:<>\r\n", &mut out).consumed, 3);
        assert_eq!(s.poll_event(), Some(Event::MessageEnd));
        s.handle_commit(t0, Commit::Queued("Q"), &mut out);
        assert_eq!(s.handle_input(t0, b"MAIL FROM:<>\r\n", &mut out).consumed, 14);
        assert_eq!(
            s.envelope().helo(),
            b"client.example",
            "the HELO name outlives transactions"
        );
        assert_eq!(s.envelope().mail_from(), b"");
        assert_eq!(s.envelope().recipients().count(), 0);
    }

    #[test]
    fn timeouts_follow_the_state() {
        let mut config = ProtoConfig::default();
        config.limits.min_data_rate = 0;
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut s = Session::new(Settings::new(config), RELAY, t0, &mut out);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(300)));
        let t1 = t0 + Duration::from_secs(10);
        let input = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n";
        assert_eq!(s.handle_input(t1, input, &mut out).consumed, input.len());
        assert_eq!(s.poll_event(), Some(Event::MessageStart));
        assert_eq!(
            s.poll_timeout(),
            Some(t1 + Duration::from_secs(180)),
            "RFC 5321 §4.5.3.2.6"
        );
        s.handle_timeout(t1 + Duration::from_secs(179), &mut out);
        assert_eq!(s.poll_event(), None);
        out.clear();
        s.handle_timeout(t1 + Duration::from_secs(180), &mut out);
        assert_eq!(out, b"421 4.4.2 Error: timeout exceeded\r\n");
        assert_eq!(s.poll_event(), Some(Event::MessageAbort));
        assert_eq!(s.poll_event(), Some(Event::Close(CloseReason::Timeout)));
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn commit_wait_times_out_with_451() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut s = Session::new(Settings::new(ProtoConfig::default()), RELAY, t0, &mut out);
        let input =
            b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 2 LAST\r\nhiNOOP\r\n";
        let n = s.handle_input(t0, input, &mut out).consumed;
        assert_eq!(&input[n..], b"hiNOOP\r\n", "the session stops at the start event");
        assert_eq!(s.poll_event(), Some(Event::MessageStart));
        let progress = s.handle_input(t0, &input[n..], &mut out);
        assert_eq!(
            (progress.consumed, progress.body.pieces()),
            (2, &[&b"hi"[..]][..])
        );
        assert_eq!(s.poll_event(), Some(Event::MessageEnd));
        let waiting = s.handle_input(t0, &input[n + 2..], &mut out);
        assert_eq!(waiting.consumed, 0, "input after the end waits for the commit");
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(600)));
        out.clear();
        s.handle_timeout(t0 + Duration::from_secs(600), &mut out);
        assert_eq!(out, b"451 4.3.0 Error: storage did not answer in time\r\n");
        assert_eq!(s.poll_event(), Some(Event::MessageAbort));
        assert_eq!(s.poll_event(), Some(Event::Close(CloseReason::CommitTimeout)));
    }

    #[test]
    fn shutdown_waits_for_the_transaction() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut idle = Session::new(Settings::new(ProtoConfig::default()), RELAY, t0, &mut out);
        out.clear();
        idle.handle_shutdown(&mut out);
        assert_eq!(out, b"421 4.3.2 Service shutting down\r\n");
        assert_eq!(idle.poll_event(), Some(Event::Close(CloseReason::Shutdown)));

        let mut busy = Session::new(Settings::new(ProtoConfig::default()), RELAY, t0, &mut out);
        let input = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n";
        assert_eq!(busy.handle_input(t0, input, &mut out).consumed, input.len());
        assert_eq!(busy.poll_event(), Some(Event::MessageStart));
        out.clear();
        busy.handle_shutdown(&mut out);
        assert!(out.is_empty());
        let progress = busy.handle_input(t0, b"x\r\n.\r\n", &mut out);
        // The content and the end of data in one call: the content comes first.
        assert_eq!(
            (progress.consumed, progress.body.pieces()),
            (6, &[&b"x\r\n"[..]][..])
        );
        assert_eq!(busy.poll_event(), Some(Event::MessageEnd));
        busy.handle_commit(t0, Commit::Queued("ID1"), &mut out);
        assert_eq!(
            out,
            b"250 2.0.0 Ok: queued as ID1\r\n421 4.3.2 Service shutting down\r\n"
        );
        assert_eq!(busy.poll_event(), Some(Event::Close(CloseReason::Shutdown)));
        assert_eq!(busy.stats().messages, 1);

        // Inside a refused BDAT chunk: the chunk is read, answered, then the session ends.
        let mut chunk = Session::new(Settings::new(ProtoConfig::default()), RELAY, t0, &mut out);
        let input = b"EHLO x\r\nBDAT 4\r\nab";
        assert_eq!(chunk.handle_input(t0, input, &mut out).consumed, input.len());
        out.clear();
        chunk.handle_shutdown(&mut out);
        assert!(out.is_empty());
        assert_eq!(chunk.handle_input(t0, b"cdNOOP\r\n", &mut out).consumed, 2);
        assert_eq!(
            out,
            b"503 5.5.1 Error: need MAIL command\r\n421 4.3.2 Service shutting down\r\n"
        );
        assert_eq!(chunk.poll_event(), Some(Event::Close(CloseReason::Shutdown)));
    }

    fn tls_settings(required: bool) -> Arc<Settings> {
        Settings::new(ProtoConfig {
            starttls: true,
            tls_required: required,
            ..ProtoConfig::default()
        })
    }

    #[test]
    fn starttls_stops_at_its_line_and_starts_over_after_the_handshake() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut s = Session::new(tls_settings(false), RELAY, t0, &mut out);
        out.clear();
        let input = b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<a@b.example>\r\n";
        let n = s.handle_input(t0, input, &mut out).consumed;
        assert_eq!(
            &input[n..],
            b"MAIL FROM:<a@b.example>\r\n",
            "nothing after STARTTLS is taken"
        );
        let text = String::from_utf8(std::mem::take(&mut out)).unwrap();
        assert!(text.contains("250-STARTTLS\r\n"), "{text}");
        assert!(text.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{text}");
        assert_eq!(s.poll_event(), Some(Event::StartTls));
        assert_eq!(
            s.handle_input(t0, b"NOOP\r\n", &mut out).consumed,
            0,
            "waits for TLS"
        );
        s.handle_tls_established(t0, &mut out);
        assert!(out.is_empty(), "no second greeting after STARTTLS");
        assert!(s.is_tls());
        s.handle_input(t0, b"MAIL FROM:<a@b.example>\r\nEHLO x\r\nSTARTTLS\r\n", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("503 5.5.1 Error: send HELO/EHLO first\r\n"),
            "{text}"
        );
        assert!(!text.contains("STARTTLS"), "{text}");
        assert!(
            text.ends_with("554 5.5.1 Error: TLS already active\r\n"),
            "{text}"
        );
    }

    #[test]
    fn an_implicit_tls_session_greets_once_established() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut s = Session::pending(tls_settings(true), t0);
        assert_eq!(s.handle_input(t0, b"EHLO x\r\n", &mut out).consumed, 0);
        assert!(out.is_empty(), "nothing before the start");
        s.handle_start(
            t0,
            Client {
                relay: true,
                tls: true,
            },
            &mut out,
        );
        assert!(s.is_tls());
        assert_eq!(out, b"220 localhost ESMTP ringmx\r\n");
        out.clear();
        let input = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n";
        assert_eq!(s.handle_input(t0, input, &mut out).consumed, input.len());
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("STARTTLS"), "{text}");
        assert!(text.ends_with("250 2.1.0 Ok\r\n"), "tls_required is met: {text}");
    }

    #[test]
    fn tls_required_refuses_the_transaction_before_tls() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut s = Session::new(tls_settings(true), RELAY, t0, &mut out);
        out.clear();
        let input =
            b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nBDAT 1 LAST\r\nxNOOP\r\n";
        assert_eq!(s.handle_input(t0, input, &mut out).consumed, input.len());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.matches("530 5.7.0 Must issue a STARTTLS command first\r\n")
                .count(),
            4,
            "{text}"
        );
        assert!(text.ends_with("250 2.0.0 Ok\r\n"), "{text}");
    }

    /// Feeds everything, answering commits, and returns what the session said.
    fn talk(s: &mut Session, now: Instant, input: &[u8]) -> String {
        talk_until_close(s, now, input).0
    }

    /// As [`talk`], with the reason the session closed for, if it did.
    fn talk_until_close(s: &mut Session, now: Instant, mut input: &[u8]) -> (String, Option<CloseReason>) {
        let (mut out, mut closed) = (Vec::new(), None);
        loop {
            let n = s.handle_input(now, input, &mut out).consumed;
            input = &input[n..];
            let mut evented = false;
            while let Some(event) = s.poll_event() {
                evented = true;
                match event {
                    Event::MessageEnd => s.handle_commit(now, Commit::Queued("Q"), &mut out),
                    Event::Close(reason) => closed = Some(reason),
                    _ => {}
                }
            }
            if input.is_empty() || (n == 0 && !evented) {
                return (String::from_utf8(out).unwrap(), closed);
            }
        }
    }

    fn session_with(limits: impl FnOnce(&mut ProtoConfig), client: Client, t0: Instant) -> Session {
        let mut config = ProtoConfig::default();
        limits(&mut config);
        let mut out = Vec::new();
        Session::new(Settings::new(config), client, t0, &mut out)
    }

    #[test]
    fn a_command_line_has_one_deadline_whatever_its_bytes() {
        let t0 = Instant::now();
        let mut s = session_with(|_| {}, RELAY, t0);
        let deadline = t0 + Duration::from_secs(300);
        for (i, byte) in b"NOOP\r".iter().enumerate() {
            talk(&mut s, t0 + Duration::from_secs(60 * i as u64), &[*byte]);
            assert_eq!(s.poll_timeout(), Some(deadline), "a byte moved the deadline");
        }
        let t1 = t0 + Duration::from_secs(299);
        assert_eq!(talk(&mut s, t1, b"\n"), "250 2.0.0 Ok\r\n");
        assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(300)));
    }

    #[test]
    fn slow_data_and_long_sessions_are_cut_off() {
        let t0 = Instant::now();
        let mut s = session_with(|_| {}, RELAY, t0);
        talk(
            &mut s,
            t0,
            b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
        );
        // 1 KiB/s after 30 s: 40 KiB by t0 + 40 s keeps it going until then.
        talk(&mut s, t0 + Duration::from_secs(10), &[b'x'; 40 * 1024]);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(40)));
        let mut out = Vec::new();
        s.handle_timeout(t0 + Duration::from_secs(39), &mut out);
        assert!(out.is_empty());
        s.handle_timeout(t0 + Duration::from_secs(40), &mut out);
        assert_eq!(out, b"421 4.4.2 Error: data arriving too slowly\r\n");
        while let Some(event) = s.poll_event() {
            assert!(
                matches!(
                    event,
                    Event::MessageStart | Event::MessageAbort | Event::Close(CloseReason::SlowData)
                ),
                "{event:?}"
            );
        }

        let mut s = session_with(|c| c.limits.max_session_secs = 60, RELAY, t0);
        for i in 1..=5 {
            talk(&mut s, t0 + Duration::from_secs(10 * i), b"NOOP\r\n");
        }
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        let mut out = Vec::new();
        s.handle_timeout(t0 + Duration::from_secs(60), &mut out);
        assert_eq!(out, b"421 4.4.2 Error: session lasted too long\r\n");
        assert_eq!(s.poll_event(), Some(Event::Close(CloseReason::SessionTooLong)));
    }

    #[test]
    fn a_pregreeting_client_is_refused() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let settings = Settings::new(ProtoConfig {
            limits: crate::config::ProtoLimits {
                greet_delay_ms: 2000,
                ..Default::default()
            },
            ..ProtoConfig::default()
        });
        let mut patient = Session::new(settings.clone(), RELAY, t0, &mut out);
        assert_eq!(out, b"220-localhost ESMTP ringmx\r\n");
        assert_eq!(patient.poll_timeout(), Some(t0 + Duration::from_millis(2000)));
        out.clear();
        patient.handle_timeout(t0 + Duration::from_millis(2000), &mut out);
        assert_eq!(out, b"220 localhost ESMTP ringmx\r\n");
        assert_eq!(
            talk(&mut patient, t0 + Duration::from_secs(3), b"NOOP\r\n"),
            "250 2.0.0 Ok\r\n"
        );

        let mut eager = Session::new(settings, RELAY, t0, &mut out);
        let said = talk_until_close(&mut eager, t0, b"EHLO spam.example\r\n");
        let refused = "554 5.5.1 Error: protocol error\r\n";
        assert_eq!(said, (refused.to_string(), Some(CloseReason::Pregreet)));
        assert_eq!(eager.stats().replies[Reply::Greeting as usize], 0);
    }

    #[test]
    fn recipients_over_the_limit_are_refused_without_losing_the_transaction() {
        let t0 = Instant::now();
        let mut s = session_with(|_| {}, RELAY, t0);
        let mut input = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n".to_vec();
        for i in 0..150 {
            input.extend_from_slice(format!("RCPT TO:<r{i}@d.example>\r\n").as_bytes());
        }
        input.extend_from_slice(b"DATA\r\nhi\r\n.\r\n");
        let said = talk(&mut s, t0, &input);
        assert_eq!(said.matches("250 2.1.5 Ok\r\n").count(), 100);
        assert_eq!(
            said.matches("452 4.5.3 Error: too many recipients\r\n").count(),
            50
        );
        assert!(
            said.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as Q\r\n"),
            "{said}"
        );
        assert_eq!(
            s.stats().errors,
            0,
            "the excess is not an error (RFC 5321 §4.5.3.1.10)"
        );
    }

    #[test]
    fn an_oversized_bdat_is_refused_at_once_and_a_huge_one_hangs_up() {
        let t0 = Instant::now();
        let mut s = session_with(|c| c.limits.max_message_size = 1024, RELAY, t0);
        let said = talk(
            &mut s,
            t0,
            b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 2000 LAST\r\n",
        );
        assert!(
            said.ends_with("552 5.3.4 Error: message too big\r\n"),
            "said before the chunk: {said}"
        );
        assert_eq!(
            talk(&mut s, t0, &[b'z'; 2000]),
            "",
            "the chunk is read and dropped"
        );
        assert_eq!(talk(&mut s, t0, b"NOOP\r\n"), "250 2.0.0 Ok\r\n");
        let (said, closed) = talk_until_close(
            &mut s,
            t0,
            b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 99999999999 LAST\r\nNOOP\r\n",
        );
        assert!(said.ends_with("552 5.3.4 Error: message too big\r\n"), "{said}");
        assert_eq!(closed, Some(CloseReason::ChunkTooBig));
    }

    #[test]
    fn refused_recipients_are_tarpitted_past_the_limit() {
        let t0 = Instant::now();
        let outsider = Client {
            relay: false,
            tls: false,
        };
        let mut s = session_with(|_| {}, outsider, t0);
        let mut input = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n".to_vec();
        for i in 0..7 {
            input.extend_from_slice(format!("RCPT TO:<u{i}@elsewhere.example>\r\n").as_bytes());
        }
        input.extend_from_slice(b"NOOP\r\n");
        let said = talk(&mut s, t0, &input);
        // Five answered at once; the sixth is held, and nothing behind it is read.
        assert_eq!(said.matches(">: Relay access denied\r\n").count(), 5, "{said}");
        assert!(
            said.contains("554 5.7.1 <u0@elsewhere.example>: Relay access denied\r\n"),
            "{said}"
        );
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        let rest = b"RCPT TO:<u6@elsewhere.example>\r\nNOOP\r\n";
        assert_eq!(s.handle_input(t0, rest, &mut Vec::new()).consumed, 0, "waits");
        let mut out = Vec::new();
        s.handle_timeout(t0 + Duration::from_secs(5), &mut out);
        assert_eq!(out, b"554 5.7.1 <u5@elsewhere.example>: Relay access denied\r\n");
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(talk(&mut s, t1, rest), "", "the seventh is held in turn");
        let mut out = Vec::new();
        s.handle_timeout(t1 + Duration::from_secs(5), &mut out);
        assert_eq!(out, b"554 5.7.1 <u6@elsewhere.example>: Relay access denied\r\n");
        assert_eq!(
            talk(&mut s, t1 + Duration::from_secs(5), b"NOOP\r\n"),
            "250 2.0.0 Ok\r\n"
        );
    }

    #[test]
    fn a_refused_address_is_echoed_escaped() {
        let mut out = Vec::new();
        write_rcpt_refusal(&mut out, Reply::UnknownUser, b"a\xc3\xa9\r@x");
        assert_eq!(
            out,
            b"550 5.1.1 <a\\xC3\\xA9\\x0D@x>: Recipient address rejected: User unknown\r\n"
        );
    }

    #[test]
    fn counters_are_folded_before_they_could_wrap() {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut s = Session::new(Settings::new(ProtoConfig::default()), RELAY, t0, &mut out);
        let input = b"NOOP\r\n".repeat(3 * usize::from(SessionStats::FOLD_AT));
        let (mut pos, mut noops) = (0, 0u64);
        while pos < input.len() {
            let n = s.handle_input(t0, &input[pos..], &mut out).consumed;
            out.clear();
            if n == 0 {
                assert!(s.stats().should_fold(), "stopped at {pos} for no reason");
                noops += u64::from(s.take_stats().replies[Reply::Ok as usize]);
            }
            assert!(s.stats().commands <= SessionStats::FOLD_AT);
            pos += n;
        }
        noops += u64::from(s.stats().replies[Reply::Ok as usize]);
        assert_eq!(
            noops,
            3 * u64::from(SessionStats::FOLD_AT),
            "every NOOP counted once"
        );
    }
}
