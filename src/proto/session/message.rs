//! The message side of a session: DATA and BDAT, the body through the data receiver, and the end of a message handed to the caller's commit.

use super::{Fate, Session, State, EV_ABORT, EV_END, EV_START};
use crate::proto::data::{DataReceiver, Flaw};
use crate::proto::event::CloseReason;
use crate::proto::reply::{write_u64, Reply};
use memchr::memchr;
use std::time::Instant;

impl Session {
    pub(super) fn data(&mut self, now: Instant, arg: &[u8], out: &mut Vec<u8>) {
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

    pub(super) fn bdat(&mut self, now: Instant, arg: &[u8], out: &mut Vec<u8>) {
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

    pub(super) fn finish_chunk(&mut self, last: bool, fate: Fate, out: &mut Vec<u8>) {
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

    pub(super) fn finish_data(&mut self, out: &mut Vec<u8>) {
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
}
