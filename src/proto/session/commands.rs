//! The command side of a session: cutting command lines out of the input and answering each verb (EHLO/HELO, MAIL, RCPT, STARTTLS and the rest) against the envelope.

use super::{Security, Session, State, EV_STARTTLS};
use crate::policy::recipients::Verdict;
use crate::proto::address::{parse_mail_params, parse_path, ParamError, PathError};
use crate::proto::event::CloseReason;
use crate::proto::reply::{write_rcpt_refusal, write_unrecognized, Reply};
use crate::proto::sniff::{classify_line, sniff};
use crate::proto::verb::{lookup, scan_octets, Verb};
use memchr::memchr;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Session {
    /// Handles bytes in command state: cuts one line (or buffers a partial one) and returns the
    /// bytes consumed.
    pub(super) fn command_bytes(&mut self, now: Instant, input: &[u8], out: &mut Vec<u8>) -> usize {
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
}
