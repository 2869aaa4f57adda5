//! Receives DATA content: finds the end of data, removes stuffing dots and checks line and size limits, across any split of the input.
//!
//! RFC 5321 §4.1.1.4 and §4.5.2. Only `<CR><LF>.<CR><LF>` ends the data: the SMTP smuggling
//! variants (`<LF>.<LF>`, `<LF>.<CR><LF>`, `<CR><LF>.<LF>`, `<CR>.<CR>`) never do. The data
//! starts right after the CRLF of the DATA command, so a first line of `.` ends an empty
//! message. The text is scanned 64 octets at a time (AVX2, SSE2 otherwise, scalar at the
//! edges) into LF, CR and dot bit masks, which find line ends, bare LFs and stuffing dots in
//! passing; the content is handed out as slices of the caller's input (up to
//! [`MAX_PIECES`] a call), with no copy.

use crate::config::BareLf;
use memchr::memchr_iter;

/// Why a message is refused once its end has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Flaw {
    /// More octets than the size limit (552 5.3.4, RFC 1870).
    TooBig = 1,
    /// A text line over the line limit (RFC 5321 §4.5.3.1.6).
    LineTooLong = 2,
    /// A bare LF under the `reject` policy.
    BareLf = 4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the first byte of a line.
    LineStart,
    /// Inside a line.
    Text,
    /// After a `.` at the start of a line.
    Dot,
}

/// What the octets after a line-starting dot decided.
enum AfterDot {
    /// The deciding octet has not arrived.
    Wait,
    /// `.<CR><LF>` after a CRLF: the end of data, two octets on.
    Done,
    /// Go on from this offset.
    At(usize),
}

/// The state of [`DataReceiver::scan_lines`]'s block phase.
struct Blocks {
    /// Start of the current line.
    line: usize,
    /// Bytes of the current line seen in earlier calls (only while `line` is 0).
    carry: usize,
    /// The longest complete line so far, carry included.
    longest: usize,
    /// The byte before `p` is a CR (or, at 0, the last byte of the previous call was).
    pending_cr: bool,
    /// The byte before `p` is an LF: a line starts at `p`.
    after_lf: bool,
    /// A CRLF line end was passed.
    saw_lf: bool,
    /// Bytes scanned.
    p: usize,
    stop: Option<Stop>,
    /// Stuffing dots dropped in passing, and how many more may be.
    cuts: Cuts,
    max_cuts: usize,
}

/// Positions of stuffing dots the block scan dropped without stopping.
#[derive(Debug, Clone, Copy)]
struct Cuts {
    at: [usize; MAX_PIECES],
    len: usize,
}

impl Cuts {
    fn positions(&self) -> &[usize] {
        &self.at[..self.len]
    }
}

/// Scans whole 64-byte blocks that are followed by at least one more byte, with the widest
/// SIMD the CPU offers.
fn scan_blocks(hay: &[u8], b: &mut Blocks) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has just been seen to support AVX2.
            return unsafe { scan_blocks_avx2(hay, b) };
        }
        // SAFETY: SSE2 is part of the x86_64 baseline, so the feature is always present.
        unsafe { scan_blocks_sse2(hay, b) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    run_blocks(hay, b, |block| {
        let (mut lf, mut cr, mut dot) = (0u64, 0u64, 0u64);
        for (i, &c) in block.iter().enumerate() {
            lf |= u64::from(c == b'\n') << i;
            cr |= u64::from(c == b'\r') << i;
            dot |= u64::from(c == b'.') << i;
        }
        (lf, cr, dot)
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scan_blocks_avx2(hay: &[u8], b: &mut Blocks) {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_set1_epi8,
    };
    run_blocks(hay, b, |block| {
        let (mut lf, mut cr, mut dot) = (0u64, 0u64, 0u64);
        for k in 0..2 {
            // SAFETY: the unaligned load reads bytes 32k..32k+32 of the 64-byte block.
            let v = unsafe { _mm256_loadu_si256(block.as_ptr().add(32 * k).cast::<__m256i>()) };
            let mask = |c: u8| {
                u64::from(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(c as i8))) as u32)
                    << (32 * k)
            };
            lf |= mask(b'\n');
            cr |= mask(b'\r');
            dot |= mask(b'.');
        }
        (lf, cr, dot)
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn scan_blocks_sse2(hay: &[u8], b: &mut Blocks) {
    use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    run_blocks(hay, b, |block| {
        let (mut lf, mut cr, mut dot) = (0u64, 0u64, 0u64);
        for k in 0..4 {
            // SAFETY: the unaligned load reads bytes 16k..16k+16 of the 64-byte block.
            let v = unsafe { _mm_loadu_si128(block.as_ptr().add(16 * k).cast::<__m128i>()) };
            let mask = |c: u8| {
                u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8))) as u16) << (16 * k)
            };
            lf |= mask(b'\n');
            cr |= mask(b'\r');
            dot |= mask(b'.');
        }
        (lf, cr, dot)
    })
}

/// The block loop, inlined into each SIMD flavour. `masks` gives the bit masks (bit i = byte
/// i) of the LF, CR and `.` bytes of a 64-byte block. A block without a bare LF or a line
/// starting with a dot costs a few instructions, however many lines it ends.
#[inline(always)]
fn run_blocks(hay: &[u8], b: &mut Blocks, masks: impl Fn(&[u8; 64]) -> (u64, u64, u64)) {
    // Locals, written back once, so the loop runs in registers.
    let (mut p, mut line, mut carry, mut longest) = (b.p, b.line, b.carry, b.longest);
    let (mut pending_cr, mut after_lf, mut saw_lf) = (b.pending_cr, b.after_lf, b.saw_lf);
    'blocks: while p + 64 < hay.len() {
        let block: &[u8; 64] = hay[p..p + 64].try_into().expect("64 bytes");
        let (lf, cr, dot) = masks(block);
        let bare = lf & !((cr << 1) | u64::from(pending_cr));
        let dot_start = ((lf << 1) | u64::from(after_lf)) & dot;
        let mut events = bare | dot_start;
        let mut lfs = lf;
        loop {
            let before = if events == 0 {
                lfs
            } else {
                lfs & ((1u64 << events.trailing_zeros()) - 1)
            };
            if before != 0 {
                // Only the first line end of a run can close a long line: the others are
                // less than 64 octets from the previous one.
                longest = longest.max(carry + p + before.trailing_zeros() as usize + 1 - line);
                carry = 0;
                line = p + 64 - before.leading_zeros() as usize;
                saw_lf = true;
                lfs &= !before;
            }
            if events == 0 {
                break;
            }
            let at = events.trailing_zeros();
            // A dot starting a line, followed in this block by an ordinary byte, is stuffing:
            // drop it in passing; its line starts after it (RFC 5321 §4.5.2).
            let stuffing = dot_start >> at & 1 == 1
                && at < 63
                && (lf | cr) >> (at + 1) & 1 == 0
                && b.cuts.len < b.max_cuts;
            if !stuffing {
                b.stop = Some(if dot_start >> at & 1 == 1 {
                    Stop::LineStart
                } else {
                    Stop::BareLf(p + at as usize - line)
                });
                pending_cr = pending_cr && line == 0;
                break 'blocks;
            }
            b.cuts.at[b.cuts.len] = p + at as usize;
            b.cuts.len += 1;
            line = p + at as usize + 1;
            events &= events - 1;
        }
        pending_cr = cr >> 63 == 1;
        after_lf = lf >> 63 == 1;
        p += 64;
    }
    (b.p, b.line, b.carry, b.longest) = (p, line, carry, longest);
    (b.pending_cr, b.after_lf, b.saw_lf) = (pending_cr, after_lf, saw_lf);
}

/// Where [`DataReceiver::scan_lines`] stopped.
enum Stop {
    /// The input ended inside a line.
    End,
    /// At the start of a line that begins with a dot, or at the end of the input.
    LineStart,
    /// At the start of a line that ends with a bare LF, this many bytes on.
    BareLf(usize),
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
    /// Bit set of the [`Flaw`]s seen.
    flaws: u8,
}

/// Most pieces of content one call hands out.
pub const MAX_PIECES: usize = 8;

/// Message content handed out by one call, without copying: slices of the consumed input
/// (split where a stuffing dot was dropped) and normalized line ends, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body<'a> {
    pieces: [&'a [u8]; MAX_PIECES],
    len: usize,
}

impl Default for Body<'_> {
    fn default() -> Self {
        Body {
            pieces: [&[]; MAX_PIECES],
            len: 0,
        }
    }
}

impl<'a> Body<'a> {
    /// One piece.
    pub(crate) fn single(piece: &'a [u8]) -> Body<'a> {
        let mut body = Body::default();
        body.push(piece);
        body
    }

    /// The pieces, in order; none is empty.
    pub fn pieces(&self) -> &[&'a [u8]] {
        &self.pieces[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Octets in all pieces.
    pub fn octets(&self) -> usize {
        self.pieces().iter().map(|p| p.len()).sum()
    }

    fn push(&mut self, piece: &'a [u8]) {
        if !piece.is_empty() {
            self.pieces[self.len] = piece;
            self.len += 1;
        }
    }

    fn room(&self) -> usize {
        MAX_PIECES - self.len
    }
}

/// What one call to [`DataReceiver::feed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed<'a> {
    /// Input bytes consumed.
    pub consumed: usize,
    /// Message content among them. Empty when the message is refused or nothing is due.
    pub body: Body<'a>,
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
            flaws: 0,
        }
    }

    /// The limit the message broke, if any (content is then no longer handed out). When it
    /// broke several, the reply names the first of: size, line length, bare LF — a fixed
    /// order, so the reply does not depend on how the input was split.
    pub fn flaw(&self) -> Option<Flaw> {
        [Flaw::TooBig, Flaw::LineTooLong, Flaw::BareLf]
            .into_iter()
            .find(|&f| self.flaws & f as u8 != 0)
    }

    fn flag(&mut self, flaw: Flaw) {
        self.flaws |= flaw as u8;
    }

    /// Accounts for `piece` as content and hands it out, unless the message is refused. The
    /// size is counted exactly even then, so a refused message still gets the right reply.
    fn piece<'a>(&mut self, body: &mut Body<'a>, piece: &'a [u8]) {
        self.size += piece.len() as u64;
        if self.size > self.max_size {
            self.flag(Flaw::TooBig);
        }
        if self.flaws == 0 {
            body.push(piece);
        }
    }

    fn end_line(&mut self) {
        if self.line_len > self.max_line {
            self.flag(Flaw::LineTooLong);
        }
        self.line_len = 0;
        self.state = State::LineStart;
    }

    /// The fast path: walks whole CRLF-ended lines, checking each line's length, until a line
    /// starts with a dot it cannot drop in passing (up to `max_cuts` stuffing dots followed by
    /// an ordinary byte are dropped and reported as cuts), a bare LF shows up, or the input
    /// ends. Returns how far it got, why it stopped, and the cuts. Blocks of 64 bytes are classified with SIMD compares into bit masks of LF, CR
    /// and `.` positions, so a block without an event costs a handful of instructions whatever
    /// its number of lines; the tail goes through memchr.
    fn scan_lines(&mut self, hay: &[u8], max_cuts: usize) -> (usize, Stop, Cuts) {
        // Start of the current line; bytes of it seen in earlier calls (only while `line` is 0);
        // the longest complete line so far.
        let mut b = Blocks {
            line: 0,
            carry: self.line_len,
            longest: 0,
            pending_cr: self.pending_cr,
            after_lf: false,
            saw_lf: false,
            p: 0,
            stop: None,
            cuts: Cuts {
                at: [0; MAX_PIECES],
                len: 0,
            },
            max_cuts,
        };
        scan_blocks(hay, &mut b);
        let Blocks {
            mut line,
            mut carry,
            mut longest,
            mut pending_cr,
            after_lf,
            saw_lf,
            p,
            mut stop,
            cuts,
            ..
        } = b;
        if saw_lf {
            self.after_crlf = true;
        }
        if stop.is_none() && after_lf && hay[p] == b'.' {
            stop = Some(Stop::LineStart);
        }
        if stop.is_none() {
            for lf in memchr_iter(b'\n', &hay[p..]).map(|off| p + off) {
                let cr = if lf > 0 { hay[lf - 1] == b'\r' } else { pending_cr };
                if !cr {
                    stop = Some(Stop::BareLf(lf - line));
                    break;
                }
                longest = longest.max(carry + lf + 1 - line);
                carry = 0;
                pending_cr = false;
                self.after_crlf = true;
                line = lf + 1;
                if line == hay.len() || hay[line] == b'.' {
                    stop = Some(Stop::LineStart);
                    break;
                }
            }
        }
        if longest > self.max_line {
            self.flag(Flaw::LineTooLong);
        }
        let stop = stop.unwrap_or_else(|| {
            carry += hay.len() - line;
            if hay.len() > line {
                pending_cr = hay[hay.len() - 1] == b'\r';
            }
            line = hay.len();
            Stop::End
        });
        self.line_len = carry;
        self.pending_cr = pending_cr;
        (line, stop, cuts)
    }

    /// Consumes input and hands out its content without copying it: runs of input that need
    /// no edit, split where stuffing dots are dropped, and normalized line ends. Call again
    /// with the rest of the input until it is consumed or `done`. Content is handed out only
    /// with consumed input; nothing is consumed when the input is a lone `<CR>` after a
    /// line-start dot, which must be offered again with the byte after it.
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> Fed<'a> {
        let mut body = Body::default();
        let mut i = 0;
        // Start of the run of input not yet handed out (past a dropped stuffing dot).
        let mut start = 0;
        // An edit adds at most two pieces; keep room for them and for the final run.
        while body.room() >= 3 {
            match self.state {
                State::LineStart => {
                    if i == input.len() {
                        break;
                    }
                    if input[i] == b'.' {
                        self.piece(&mut body, &input[start..i]);
                        i += 1;
                        start = i;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Text;
                        self.pending_cr = false;
                    }
                }
                State::Text => {
                    let (scanned, stop, cuts) = self.scan_lines(&input[i..], body.room() - 3);
                    for cut in cuts.positions() {
                        // A stuffing dot the block scan dropped in passing.
                        self.piece(&mut body, &input[start..i + cut]);
                        start = i + cut + 1;
                    }
                    i += scanned;
                    match stop {
                        Stop::End => break,
                        Stop::LineStart => self.state = State::LineStart,
                        Stop::BareLf(off) => {
                            i = self.bare_lf_at(input, i, off, &mut start, &mut body);
                        }
                    }
                }
                State::Dot => match self.after_dot(input, i, &mut start, &mut body) {
                    AfterDot::Wait => break,
                    AfterDot::Done => {
                        return Fed {
                            consumed: i + 2,
                            body,
                            done: true,
                        }
                    }
                    AfterDot::At(next) => i = next,
                },
            }
        }
        self.piece(&mut body, &input[start..i]);
        Fed {
            consumed: i,
            body,
            done: false,
        }
    }

    /// A bare LF ends the line `off` octets into the scan at `i`: normalized to CRLF, or
    /// flagged under the `reject` policy. Returns where the next line starts.
    #[inline(always)]
    fn bare_lf_at<'a>(
        &mut self,
        input: &'a [u8],
        i: usize,
        off: usize,
        start: &mut usize,
        body: &mut Body<'a>,
    ) -> usize {
        let lf = i + off;
        self.after_crlf = false;
        match self.bare_lf {
            BareLf::Normalize => {
                self.piece(body, &input[*start..lf]);
                self.piece(body, b"\r\n");
                self.line_len += off + 2;
                *start = lf + 1;
            }
            BareLf::Reject => {
                self.flag(Flaw::BareLf);
                self.line_len += off + 1;
            }
        }
        self.end_line();
        lf + 1
    }

    /// Decides what the octet at `i`, after a dot that began a line, makes of that dot.
    #[inline(always)]
    fn after_dot<'a>(
        &mut self,
        input: &'a [u8],
        i: usize,
        start: &mut usize,
        body: &mut Body<'a>,
    ) -> AfterDot {
        let Some(&octet) = input.get(i) else {
            return AfterDot::Wait;
        };
        match octet {
            b'\r' => {
                // `.<CR>` may be the end of data: it is decided with the byte after it, so
                // both are looked at in one call (the caller keeps unconsumed input and
                // offers it again).
                let Some(&next) = input.get(i + 1) else {
                    return AfterDot::Wait;
                };
                if next != b'\n' {
                    // `.<CR>x`: the dot was stuffing; the CR is content.
                    self.state = State::Text;
                    self.pending_cr = false;
                    AfterDot::At(i)
                } else if self.after_crlf {
                    AfterDot::Done
                } else {
                    // `<LF>.<CR><LF>`: a lone dot line after a bare LF is content.
                    self.piece(body, b".\r\n");
                    self.after_crlf = true;
                    self.line_len = 3;
                    self.end_line();
                    *start = i + 2;
                    AfterDot::At(i + 2)
                }
            }
            b'\n' => {
                // `.` ended by a bare LF: never the end of data (smuggling guard).
                self.after_crlf = false;
                if self.bare_lf == BareLf::Reject {
                    self.flag(Flaw::BareLf);
                }
                self.piece(body, b".\r\n");
                self.line_len = 3;
                self.end_line();
                *start = i + 1;
                AfterDot::At(i + 1)
            }
            _ => {
                // A stuffing dot: dropped, and not counted in the line length.
                self.state = State::Text;
                self.pending_cr = false;
                AfterDot::At(i)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns (content, consumed, done, flaw).
    fn run(input: &[u8], step: usize, policy: BareLf) -> (Vec<u8>, usize, bool, Option<Flaw>) {
        run_with(DataReceiver::new(1000, 1 << 20, policy), input, step)
    }

    /// Offers `step` more bytes at a time, keeping what was not consumed, as a server does.
    fn run_with(mut r: DataReceiver, input: &[u8], step: usize) -> (Vec<u8>, usize, bool, Option<Flaw>) {
        let mut out = Vec::new();
        let (mut pos, mut end) = (0, 0);
        while pos < input.len() {
            end = end.max(pos + step).min(input.len());
            let fed = r.feed(&input[pos..end]);
            assert!(
                fed.consumed > 0 || fed.body.is_empty(),
                "content without consumption"
            );
            for piece in fed.body.pieces() {
                out.extend_from_slice(piece);
            }
            pos += fed.consumed;
            if fed.done {
                return (out, pos, true, r.flaw());
            }
            if fed.consumed == 0 {
                if end == input.len() {
                    break;
                }
                end += step;
            }
        }
        (out, pos, false, r.flaw())
    }

    fn piece() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            4 => Just(b"\r\n".to_vec()),
            1 => Just(b"\n".to_vec()),
            2 => Just(b".".to_vec()),
            1 => Just(b"\r".to_vec()),
            1 => Just(b"\r\n.\r\n".to_vec()),
            4 => (1usize..90).prop_map(|n| vec![b'x'; n]),
            1 => (900usize..1100).prop_map(|n| vec![b'y'; n]),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// The SIMD block scan (inputs of 64 bytes and more) agrees with the byte-at-a-time
        /// path on content, end, consumption and every flaw, under both bare-LF policies.
        #[test]
        fn block_scan_agrees_with_byte_at_a_time(
            pieces in proptest::collection::vec(piece(), 0..200),
            reject in proptest::bool::ANY,
            step in 1usize..300,
        ) {
            let input = pieces.concat();
            let policy = if reject { BareLf::Reject } else { BareLf::Normalize };
            // Content handed out before a flaw is found differs with the split; a flawed
            // message is discarded whole, so only a clean message's content is compared.
            let key = |(content, consumed, done, flaw): (Vec<u8>, usize, bool, Option<Flaw>)| {
                (if flaw.is_none() { content } else { Vec::new() }, consumed, done, flaw)
            };
            let whole = key(run(&input, input.len().max(1), policy));
            proptest::prop_assert_eq!(&whole, &key(run(&input, 1, policy)));
            proptest::prop_assert_eq!(&whole, &key(run(&input, step, policy)));
        }
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
