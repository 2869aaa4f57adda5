//! Receives DATA content: finds the end of data, removes stuffing dots and checks line and size limits, across any split of the input.
//!
//! RFC 5321 §4.1.1.4 and §4.5.2. Only `<CR><LF>.<CR><LF>` ends the data: the SMTP smuggling
//! variants (`<LF>.<LF>`, `<LF>.<CR><LF>`, `<CR><LF>.<LF>`, `<CR>.<CR>`) never do. The data
//! starts right after the CRLF of the DATA command, so a first line of `.` ends an empty
//! message. LF is found with memchr; between line ends the bytes are copied in runs.

use crate::config::BareLf;
use memchr::memchr;

/// Why a message is refused once its end has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// More octets than the size limit (552 5.3.4, RFC 1870).
    TooBig,
    /// A text line over the line limit (RFC 5321 §4.5.3.1.6).
    LineTooLong,
    /// A bare LF under the `reject` policy.
    BareLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the first byte of a line.
    LineStart,
    /// Inside a line.
    Text,
    /// After a `.` at the start of a line.
    Dot,
    /// After `.<CR>` at the start of a line.
    DotCr,
}

/// The receiver's state; three bits of it survive between calls, so any split works.
#[derive(Debug, Clone)]
pub struct DataReceiver {
    state: State,
    /// The current line began after a CRLF (or at the start of data). Only such a `.` line,
    /// itself ended by CRLF, ends the data.
    after_crlf: bool,
    /// In `Text`, the last byte seen was CR (it may pair with an LF in the next call).
    pending_cr: bool,
    line_len: usize,
    size: u64,
    max_line: usize,
    max_size: u64,
    bare_lf: BareLf,
    flaw: Option<Flaw>,
}

/// What one call to [`DataReceiver::feed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed<'a> {
    /// Input bytes consumed.
    pub consumed: usize,
    /// Message content: a slice of the consumed input, or a normalized line end. Empty when
    /// the message is refused or nothing is due.
    pub body: &'a [u8],
    /// The end-of-data line was consumed.
    pub done: bool,
}

impl DataReceiver {
    pub fn new(max_line: usize, max_size: u64, bare_lf: BareLf) -> Self {
        DataReceiver {
            state: State::LineStart,
            after_crlf: true,
            pending_cr: false,
            line_len: 0,
            size: 0,
            max_line,
            max_size,
            bare_lf,
            flaw: None,
        }
    }

    /// The first limit the message broke, if any; it is then no longer handed out.
    pub fn flaw(&self) -> Option<Flaw> {
        self.flaw
    }

    fn flag(&mut self, flaw: Flaw) {
        if self.flaw.is_none() {
            self.flaw = Some(flaw);
        }
    }

    /// Accounts for `piece` as content and hands it out, unless the message is refused.
    fn piece<'a>(&mut self, consumed: usize, piece: &'a [u8]) -> Fed<'a> {
        if self.flaw.is_none() {
            self.size += piece.len() as u64;
            if self.size > self.max_size {
                self.flaw = Some(Flaw::TooBig);
            }
        }
        let body = if self.flaw.is_none() { piece } else { &[] };
        Fed {
            consumed,
            body,
            done: false,
        }
    }

    fn end_line(&mut self) {
        if self.line_len > self.max_line {
            self.flag(Flaw::LineTooLong);
        }
        self.line_len = 0;
        self.state = State::LineStart;
    }

    /// Consumes input and hands out the next piece of content without copying it: the longest
    /// run of input that needs no edit, or a normalized line end. Call again with the rest of
    /// the input until it is consumed or `done`.
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> Fed<'a> {
        let mut i = 0;
        // Start of the piece: past a stuffing dot dropped in this call.
        let mut start = 0;
        // While the message is refused nothing is handed out, so edits need not end a piece.
        let emitting = self.flaw.is_none();
        loop {
            match self.state {
                State::LineStart => {
                    if i == input.len() {
                        break;
                    }
                    if input[i] != b'.' {
                        self.state = State::Text;
                        self.pending_cr = false;
                    } else if i > start && emitting {
                        // The piece ends before the dot; the dot is looked at in the next call.
                        break;
                    } else {
                        i += 1;
                        start = i;
                        self.state = State::Dot;
                    }
                }
                State::Text => match memchr(b'\n', &input[i..]) {
                    None => {
                        if i < input.len() {
                            self.line_len += input.len() - i;
                            self.pending_cr = input[input.len() - 1] == b'\r';
                            i = input.len();
                        }
                        break;
                    }
                    Some(off) => {
                        let lf = i + off;
                        let cr = if lf > i {
                            input[lf - 1] == b'\r'
                        } else {
                            self.pending_cr
                        };
                        if cr {
                            self.after_crlf = true;
                        } else {
                            match self.bare_lf {
                                BareLf::Normalize if emitting && lf > start => {
                                    // Hand out the piece before the bare LF; the LF is
                                    // normalized in the next call.
                                    self.line_len += off;
                                    self.pending_cr = false;
                                    return self.piece(lf, &input[start..lf]);
                                }
                                BareLf::Normalize => {
                                    self.after_crlf = false;
                                    self.line_len += off + 2;
                                    self.end_line();
                                    return self.piece(lf + 1, b"\r\n");
                                }
                                BareLf::Reject => {
                                    self.after_crlf = false;
                                    self.flag(Flaw::BareLf);
                                }
                            }
                        }
                        self.line_len += off + 1;
                        i = lf + 1;
                        self.end_line();
                    }
                },
                State::Dot => {
                    if i == input.len() {
                        break;
                    }
                    match input[i] {
                        b'\r' => {
                            // Held back: `.<CR>` may be the end of data.
                            i += 1;
                            start = i;
                            self.state = State::DotCr;
                        }
                        b'\n' => {
                            // `.` ended by a bare LF: never the end of data (smuggling guard).
                            self.after_crlf = false;
                            if self.bare_lf == BareLf::Reject {
                                self.flag(Flaw::BareLf);
                            }
                            self.line_len = 3;
                            self.end_line();
                            return self.piece(i + 1, b".\r\n");
                        }
                        _ => {
                            // A stuffing dot: dropped, and not counted in the line length.
                            self.state = State::Text;
                            self.pending_cr = false;
                        }
                    }
                }
                State::DotCr => {
                    if i == input.len() {
                        break;
                    }
                    if input[i] == b'\n' {
                        if self.after_crlf {
                            return Fed {
                                consumed: i + 1,
                                body: &[],
                                done: true,
                            };
                        }
                        // `<LF>.<CR><LF>`: a lone dot line after a bare LF is content.
                        self.after_crlf = true;
                        self.line_len = 3;
                        self.end_line();
                        return self.piece(i + 1, b".\r\n");
                    }
                    // `.<CR>x`: the dot was stuffing; the CR is content, and the next byte is
                    // looked at again in Text.
                    self.state = State::Text;
                    self.pending_cr = true;
                    self.line_len = 1;
                    return self.piece(i, b"\r");
                }
            }
        }
        self.piece(i, &input[start..i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns (content, consumed, done, flaw).
    fn run(input: &[u8], step: usize, policy: BareLf) -> (Vec<u8>, usize, bool, Option<Flaw>) {
        run_with(DataReceiver::new(1000, 1 << 20, policy), input, step)
    }

    fn run_with(mut r: DataReceiver, input: &[u8], step: usize) -> (Vec<u8>, usize, bool, Option<Flaw>) {
        let mut out = Vec::new();
        let mut pos = 0;
        let mut calls = 0;
        while pos < input.len() {
            calls += 1;
            assert!(calls < 10 * input.len() + 10, "no progress");
            let end = (pos + step).min(input.len());
            let fed = r.feed(&input[pos..end]);
            out.extend_from_slice(fed.body);
            pos += fed.consumed;
            if fed.done {
                return (out, pos, true, r.flaw());
            }
        }
        (out, pos, false, r.flaw())
    }

    #[test]
    fn end_and_unstuffing_survive_every_split() {
        let input = b"Subject: x\r\n..dot\r\n.\r\nNOOP\r\n";
        for step in 1..=input.len() {
            let (out, consumed, done, flaw) = run(input, step, BareLf::Normalize);
            assert!(done, "step {step}");
            assert_eq!(consumed, input.len() - 6, "step {step}");
            assert_eq!(out, b"Subject: x\r\n.dot\r\n", "step {step}");
            assert_eq!(flaw, None);
        }
    }

    #[test]
    fn empty_message() {
        let (out, consumed, done, _) = run(b".\r\n", 1, BareLf::Normalize);
        assert!(done);
        assert_eq!(consumed, 3);
        assert!(out.is_empty());
    }

    #[test]
    fn smuggling_variants_never_end_data() {
        for body in [
            &b"a\n.\nb\r\n"[..],
            b"a\n.\r\nb\r\n",
            b"a\r\n.\nb\r\n",
            b"a\r.\rb\r\n",
            b"a\r.\r\nb\r\n",
        ] {
            for step in 1..=body.len() {
                let (_, _, done, _) = run(body, step, BareLf::Normalize);
                assert!(!done, "{body:?} ended at step {step}");
            }
        }
    }

    #[test]
    fn bare_lf_normalized_or_flagged() {
        let input = b"a\nb\n.\nc\r\n.\r\n";
        for step in 1..=input.len() {
            let (out, _, done, flaw) = run(input, step, BareLf::Normalize);
            assert!(done);
            assert_eq!(out, b"a\r\nb\r\n.\r\nc\r\n", "step {step}");
            assert_eq!(flaw, None);
            let (_, _, done, flaw) = run(input, step, BareLf::Reject);
            assert!(done);
            assert_eq!(flaw, Some(Flaw::BareLf));
        }
    }

    #[test]
    fn long_lines_and_size() {
        let mut input = vec![b'x'; 998];
        input.extend_from_slice(b"\r\n..");
        input.extend_from_slice(&[b'y'; 997]);
        input.extend_from_slice(b"\r\n.\r\n");
        let (_, _, done, flaw) = run(&input, 7, BareLf::Normalize);
        assert!(done);
        assert_eq!(flaw, None, "1000 octets with CRLF, stuffing dot not counted");
        input.insert(0, b'x');
        let (_, _, done, flaw) = run(&input, 7, BareLf::Normalize);
        assert!(done);
        assert_eq!(flaw, Some(Flaw::LineTooLong));

        let (out, _, done, flaw) = run_with(
            DataReceiver::new(1000, 10, BareLf::Normalize),
            b"0123456789\r\nabc\r\n.\r\n",
            5,
        );
        assert!(done);
        assert_eq!(flaw, Some(Flaw::TooBig));
        assert!(out.len() <= 10);
    }
}
