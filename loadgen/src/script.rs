//! Traffic classes as scripts: the commands of each session and the reply each one must get.
//!
//! Every byte a session sends is rendered once at start-up into a [`Corpus`]; a session's
//! plan is a list of small `Copy` commands that point into it, so running a session
//! allocates nothing.

use std::fmt::Write as _;

use ringmx_loadgen::dot_stuff;
use ringmx_loadgen::reply::Caps;

use crate::vocab::{Class, Phase, Pipelining, Step, CLASSES};

/// What a command's reply must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this reply code.
    Code(u16),
    /// Any reply whose first digit is this.
    Class(u8),
    /// One 5xx reply or the connection closing (RFC 5321 3.8: a server may drop a
    /// session that is clearly not SMTP).
    FiveOrClose,
    /// The server closes the connection; no further reply.
    Close,
}

impl Expect {
    pub fn describe(self) -> String {
        match self {
            Expect::Code(c) => c.to_string(),
            Expect::Class(d) => format!("{d}xx"),
            Expect::FiveOrClose => "5xx or close".into(),
            Expect::Close => "close".into(),
        }
    }
}

/// Bytes to send, by reference into the [`Corpus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Wait only (banner, close).
    Nothing,
    Ehlo,
    Mail,
    Rcpt(u16),
    Data,
    /// Dot-stuffed message with its `.` terminator (RFC 5321 4.5.2).
    Body(u32),
    /// `BDAT <n> LAST` and the raw message (RFC 3030 2).
    Bdat(u32),
    Quit,
    Noop,
    Rset,
    Expn,
    Turn,
    Typo(u8),
    LongCmd(u16),
    LongBody,
    Nonsmtp(u8),
    BadMail,
    Starttls,
    /// `STARTTLS` with a `NOOP` pipelined behind it in the same write (CVE-2011-0411 probe).
    StarttlsNoop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmd {
    pub piece: Piece,
    pub expect: Expect,
    pub step: Step,
    pub phase: Option<Phase>,
    /// Last command of a write: the client waits for every reply outstanding before
    /// writing more (RFC 2920 3.1: DATA, QUIT and commands of non-pipelining servers).
    pub flush: bool,
}

/// Recipients pre-rendered; a message with n recipients uses consecutive ones.
pub const RCPT_POOL: usize = 128;
const LONG_CMD_LENS: [usize; 8] = [513, 600, 1000, 1025, 2048, 3000, 4095, 4096];

/// Everything sessions send, rendered once.
pub struct Corpus {
    ehlo: Vec<u8>,
    mail: Vec<u8>,
    rcpts: Vec<Vec<u8>>,
    bodies: Vec<Vec<u8>>,
    bdats: Vec<Vec<u8>>,
    typos: [Vec<u8>; 4],
    long_cmds: Vec<Vec<u8>>,
    long_body: Vec<u8>,
    nonsmtp: [Vec<u8>; 4],
}

/// A small fast PRNG (xorshift64*): choices per session must not cost a syscall or a lock.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 scramble so nearby seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next() >> 32) * u64::from(n)) >> 32) as u32
    }

    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below(hi - lo + 1)
    }
}

const TEXT: &[u8] = b"the quick brown fox jumps over the lazy dog while ringmx measures every reply ";

/// Render a message of exactly `size` octets: RFC 5322 headers, then text lines of at
/// most 78 characters, every seventh starting with '.' so dot-stuffing is exercised.
pub fn render_message(size: usize, n: usize) -> Vec<u8> {
    let mut head = String::new();
    let _ = write!(
        head,
        "From: <sender@loadgen.example>\r\nTo: <user0@example.com>\r\n\
         Subject: ringmx-loadgen message {n}\r\nMessage-ID: <{n}.loadgen@example.com>\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n"
    );
    let mut out = head.into_bytes();
    out.truncate(size.saturating_sub(2));
    let mut line_no = 0usize;
    while out.len() < size {
        let remaining = size - out.len();
        let mut take = remaining.min(40 + (line_no * 7) % 39 + 2);
        if remaining - take == 1 {
            // Never leave a single octet: it could not form a CRLF-terminated line.
            take = if take > 2 { take - 1 } else { take + 1 };
        }
        let content = take - 2;
        for i in 0..content {
            let b = if i == 0 && line_no % 7 == 3 {
                b'.'
            } else {
                TEXT[(i + line_no) % TEXT.len()]
            };
            out.push(b);
        }
        out.extend_from_slice(b"\r\n");
        line_no += 1;
    }
    out
}

fn client_hello() -> Vec<u8> {
    // A minimal TLS 1.2 ClientHello record: what a client doing implicit TLS on port 25 sends.
    let mut hello = vec![0x03, 0x03];
    hello.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    hello.extend_from_slice(&[0x00, 0x00, 0x02, 0xc0, 0x2f, 0x01, 0x00, 0x00, 0x00]);
    let mut hs = vec![0x01, 0x00, 0x00, hello.len() as u8];
    hs.extend(hello);
    let mut rec = vec![0x16, 0x03, 0x01, 0x00, hs.len() as u8];
    rec.extend(hs);
    rec
}

impl Corpus {
    pub fn new(msg_size: (usize, usize), seed: u64) -> Corpus {
        let mut rng = Rng::new(seed ^ 0xB0D1E5);
        let count = if msg_size.0 == msg_size.1 {
            1
        } else if msg_size.1 > (1 << 20) {
            8
        } else {
            32
        };
        let (lo, hi) = (msg_size.0 as f64, msg_size.1 as f64);
        let raws: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                // Log-uniform sizes: small and large messages both get represented.
                let f = f64::from(rng.below(1 << 20)) / f64::from(1u32 << 20);
                let size = if count == 1 {
                    msg_size.0
                } else {
                    (lo * (hi / lo).powf(f)).round() as usize
                };
                render_message(size.clamp(msg_size.0, msg_size.1), i)
            })
            .collect();
        let bodies = raws.iter().map(|r| dot_stuff(r)).collect();
        let bdats = raws
            .iter()
            .map(|r| {
                let mut v = format!("BDAT {} LAST\r\n", r.len()).into_bytes();
                v.extend_from_slice(r);
                v
            })
            .collect();
        let mut long_body = render_message(600, 999);
        // RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with CRLF; this one is 1202.
        long_body.extend(std::iter::repeat_n(b'x', 1200));
        long_body.extend_from_slice(b"\r\nend\r\n");
        let long_cmds = LONG_CMD_LENS
            .iter()
            .map(|&len| {
                let mut v = b"NOOP ".to_vec();
                v.resize(len - 2, b'x');
                v.extend_from_slice(b"\r\n");
                v
            })
            .collect();
        let mut binary: Vec<u8> = (0..254).map(|_| (rng.next() >> 56) as u8 | 0x80).collect();
        binary.extend_from_slice(b"\r\n");
        Corpus {
            ehlo: b"EHLO loadgen.ringmx.test\r\n".to_vec(),
            mail: b"MAIL FROM:<sender@loadgen.example>\r\n".to_vec(),
            rcpts: (0..RCPT_POOL)
                .map(|i| format!("RCPT TO:<user{i}@example.com>\r\n").into_bytes())
                .collect(),
            bodies,
            bdats,
            typos: [
                b"HLEO loadgen.ringmx.test\r\n".to_vec(),
                b"MIAL FROM:<sender@loadgen.example>\r\n".to_vec(),
                b"RCTP TO:<user0@example.com>\r\n".to_vec(),
                b"DTAA\r\n".to_vec(),
            ],
            long_cmds,
            long_body: dot_stuff(&long_body),
            nonsmtp: [
                b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: loadgen\r\n\r\n".to_vec(),
                b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
                client_hello(),
                binary,
            ],
        }
    }

    pub fn bytes(&self, p: Piece) -> &[u8] {
        match p {
            Piece::Nothing => b"",
            Piece::Ehlo => &self.ehlo,
            Piece::Mail => &self.mail,
            Piece::Rcpt(i) => &self.rcpts[usize::from(i)],
            Piece::Data => b"DATA\r\n",
            Piece::Body(i) => &self.bodies[i as usize],
            Piece::Bdat(i) => &self.bdats[i as usize],
            Piece::Quit => b"QUIT\r\n",
            Piece::Noop => b"NOOP\r\n",
            Piece::Rset => b"RSET\r\n",
            Piece::Expn => b"EXPN postmaster\r\n",
            Piece::Turn => b"TURN\r\n",
            Piece::Typo(i) => &self.typos[usize::from(i)],
            Piece::LongCmd(i) => &self.long_cmds[usize::from(i)],
            Piece::LongBody => &self.long_body,
            Piece::Nonsmtp(i) => &self.nonsmtp[usize::from(i)],
            Piece::BadMail => b"MAIL FROM:<a@b\r\n",
            Piece::Starttls => b"STARTTLS\r\n",
            Piece::StarttlsNoop => b"STARTTLS\r\nNOOP\r\n",
        }
    }

    pub fn body_count(&self) -> u32 {
        self.bodies.len() as u32
    }
}

/// Session-independent options that shape scripts.
#[derive(Debug, Clone, Copy)]
pub struct ScriptOpts {
    pub pipelining: Pipelining,
    pub bdat: bool,
    pub messages_per_session: u32,
    pub rcpts: (u32, u32),
    pub body_count: u32,
}

/// Which class and variant a session runs, drawn at session start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKind {
    pub class: Class,
    pub variant: u8,
}

/// How many scripted variants a class has (see `prelude` and `after_ehlo`).
fn variants(class: Class) -> u32 {
    match class {
        Class::Typo => 4,
        Class::Overlong => 2,
        Class::Nonsmtp => 4,
        _ => 1,
    }
}

pub fn choose(weights: &[u32; CLASSES.len()], rng: &mut Rng) -> SessionKind {
    let total: u32 = weights.iter().sum();
    let mut r = rng.below(total);
    let mut class = Class::Valid;
    for (i, &w) in weights.iter().enumerate() {
        if r < w {
            class = CLASSES[i];
            break;
        }
        r -= w;
    }
    SessionKind {
        class,
        variant: rng.below(variants(class)) as u8,
    }
}

fn cmd(piece: Piece, expect: Expect, step: Step, phase: Option<Phase>) -> Cmd {
    Cmd {
        piece,
        expect,
        step,
        phase,
        flush: true,
    }
}

fn quit() -> Cmd {
    cmd(Piece::Quit, Expect::Code(221), Step::Quit, Some(Phase::Quit))
}

/// The banner and greeting part, before the server's extensions are known.
pub fn prelude(kind: SessionKind, plan: &mut Vec<Cmd>) {
    plan.clear();
    plan.push(cmd(
        Piece::Nothing,
        Expect::Code(220),
        Step::Banner,
        Some(Phase::Banner),
    ));
    match kind.class {
        Class::Nonsmtp => {
            let step = [
                Step::NonsmtpHttp,
                Step::NonsmtpSsh,
                Step::NonsmtpTls,
                Step::NonsmtpBinary,
            ][usize::from(kind.variant)];
            plan.push(cmd(Piece::Nonsmtp(kind.variant), Expect::FiveOrClose, step, None));
            plan.push(cmd(Piece::Nothing, Expect::Close, Step::Close, None));
            return;
        }
        Class::Typo if kind.variant == 0 => {
            plan.push(cmd(Piece::Typo(0), Expect::Code(500), Step::TypoHelo, None));
        }
        _ => {}
    }
    plan.push(cmd(Piece::Ehlo, Expect::Code(250), Step::Ehlo, Some(Phase::Ehlo)));
}

/// One mail transaction; `pipelined` groups MAIL..DATA (or MAIL..BDAT) in one write.
fn transaction(plan: &mut Vec<Cmd>, o: &ScriptOpts, rng: &mut Rng, pipelined: bool, bdat: bool) {
    let group_end = |plan: &mut Vec<Cmd>| {
        if let Some(last) = plan.last_mut() {
            last.flush = true;
        }
    };
    let body = rng.below(o.body_count);
    let n = rng.range(o.rcpts.0, o.rcpts.1);
    let first = rng.below((RCPT_POOL as u32) - n + 1);
    let mut c = cmd(Piece::Mail, Expect::Code(250), Step::Mail, Some(Phase::Mail));
    c.flush = !pipelined;
    plan.push(c);
    for i in 0..n {
        let mut c = cmd(
            Piece::Rcpt((first + i) as u16),
            Expect::Code(250),
            Step::Rcpt,
            Some(Phase::Rcpt),
        );
        c.flush = !pipelined;
        plan.push(c);
    }
    if bdat {
        // RFC 3030 4.2: BDAT may be pipelined with MAIL and RCPT; LAST ends the message.
        plan.push(cmd(
            Piece::Bdat(body),
            Expect::Code(250),
            Step::Bdat,
            Some(Phase::Eod),
        ));
    } else {
        plan.push(cmd(Piece::Data, Expect::Code(354), Step::Data, Some(Phase::Data)));
        plan.push(cmd(
            Piece::Body(body),
            Expect::Code(250),
            Step::Eod,
            Some(Phase::Eod),
        ));
    }
    group_end(plan);
}

/// MAIL, one RCPT and DATA, each expected to succeed: the start of a plain transaction.
fn open_transaction(plan: &mut Vec<Cmd>) {
    plan.push(cmd(Piece::Mail, Expect::Code(250), Step::Mail, Some(Phase::Mail)));
    plan.push(cmd(
        Piece::Rcpt(0),
        Expect::Code(250),
        Step::Rcpt,
        Some(Phase::Rcpt),
    ));
    plan.push(cmd(Piece::Data, Expect::Code(354), Step::Data, Some(Phase::Data)));
}

/// The valid class: `--messages-per-session` transactions.
fn valid(plan: &mut Vec<Cmd>, o: &ScriptOpts, rng: &mut Rng, pipelined: bool, bdat: bool) {
    for _ in 0..o.messages_per_session {
        transaction(plan, o, rng, pipelined, bdat);
    }
    if pipelined {
        // RFC 2920 3.1: the message content may start a group, so the last
        // message's end and QUIT go out in one write.
        if let Some(last) = plan.last_mut() {
            last.flush = false;
        }
    }
}

/// Append the rest of the session once the EHLO reply told us the server's extensions.
pub fn after_ehlo(kind: SessionKind, caps: Caps, o: &ScriptOpts, rng: &mut Rng, plan: &mut Vec<Cmd>) {
    let pipelined = match o.pipelining {
        Pipelining::On => true,
        Pipelining::Off => false,
        Pipelining::Auto => caps.pipelining,
    };
    let bdat = o.bdat && caps.chunking;
    match kind.class {
        Class::Valid => valid(plan, o, rng, pipelined, bdat),
        Class::Typo => {
            let start = plan.len();
            open_transaction(plan);
            let body = rng.below(o.body_count);
            plan.push(cmd(
                Piece::Body(body),
                Expect::Code(250),
                Step::Eod,
                Some(Phase::Eod),
            ));
            // The misspelled verb goes right before the command it misspells, which
            // then follows corrected (variant 0 misspelled EHLO in the prelude).
            let typo = match kind.variant {
                1 => Some((Piece::Typo(1), Step::TypoMail, 0)),
                2 => Some((Piece::Typo(2), Step::TypoRcpt, 1)),
                3 => Some((Piece::Typo(3), Step::TypoData, 2)),
                _ => None,
            };
            if let Some((piece, step, at)) = typo {
                plan.insert(start + at, cmd(piece, Expect::Code(500), step, None));
            }
        }
        Class::Overlong => {
            if kind.variant == 0 {
                let i = rng.below(LONG_CMD_LENS.len() as u32) as u16;
                plan.push(cmd(Piece::LongCmd(i), Expect::Code(500), Step::LongLine, None));
                plan.push(cmd(Piece::Noop, Expect::Code(250), Step::Noop, None));
            } else {
                open_transaction(plan);
                plan.push(cmd(Piece::LongBody, Expect::Class(5), Step::LongDataLine, None));
            }
        }
        Class::Badseq => {
            plan.push(cmd(Piece::Rcpt(0), Expect::Code(503), Step::RcptBeforeMail, None));
            plan.push(cmd(Piece::Mail, Expect::Code(250), Step::Mail, Some(Phase::Mail)));
            plan.push(cmd(Piece::Data, Expect::Code(503), Step::DataBeforeRcpt, None));
            plan.push(cmd(Piece::Rset, Expect::Code(250), Step::Rset, None));
        }
        Class::Unimpl => {
            plan.push(cmd(Piece::Expn, Expect::Code(502), Step::Expn, None));
            plan.push(cmd(Piece::Turn, Expect::Code(502), Step::Turn, None));
        }
        Class::Badparam => {
            plan.push(cmd(Piece::BadMail, Expect::Code(501), Step::BadMail, None));
            plan.push(cmd(Piece::Mail, Expect::Code(250), Step::Mail, Some(Phase::Mail)));
            plan.push(cmd(Piece::Rset, Expect::Code(250), Step::Rset, None));
        }
        // Inside TLS only EHLO (the engine checks it offers no second STARTTLS) and QUIT
        // remain. A server that ran the pipelined NOOP answers it first, so EHLO takes the
        // NOOP's reply and QUIT the EHLO's: that QUIT mismatch is the injection, counted
        // under the starttls step.
        Class::Starttls => {
            plan.push(cmd(
                Piece::Quit,
                Expect::Code(221),
                Step::Starttls,
                Some(Phase::Quit),
            ));
            return;
        }
        Class::Nonsmtp => unreachable!("nonsmtp sessions end before EHLO"),
    }
    plan.push(quit());
}

/// `--tls starttls`, after the first EHLO: STARTTLS `220`, then (after the handshake) EHLO
/// again (RFC 3207 4.2: the server forgets what it knew). The starttls class pipelines a
/// NOOP behind STARTTLS that a correct server discards unanswered.
pub fn starttls(kind: SessionKind, plan: &mut Vec<Cmd>) {
    let piece = if kind.class == Class::Starttls {
        Piece::StarttlsNoop
    } else {
        Piece::Starttls
    };
    plan.push(cmd(piece, Expect::Code(220), Step::Starttls, None));
    plan.push(cmd(Piece::Ehlo, Expect::Code(250), Step::Ehlo, Some(Phase::Ehlo)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ScriptOpts {
        ScriptOpts {
            pipelining: Pipelining::Auto,
            bdat: false,
            messages_per_session: 1,
            rcpts: (2, 2),
            body_count: 1,
        }
    }

    #[test]
    fn message_rendering() {
        for size in [256, 257, 300, 1024, 4099, 65536] {
            let m = render_message(size, 1);
            assert_eq!(m.len(), size);
            assert!(m.ends_with(b"\r\n"));
            for line in m.split(|&b| b == b'\n') {
                assert!(line.len() <= 80, "line too long: {}", line.len());
            }
            let stuffed = dot_stuff(&m);
            assert!(stuffed.ends_with(b"\r\n.\r\n"));
            if size >= 1024 {
                assert!(m.windows(2).any(|w| w == b"\n."), "some line starts with a dot");
                assert!(stuffed.windows(3).any(|w| w == b"\n.."), "and it gets stuffed");
            }
        }
    }

    #[test]
    fn corpus_pieces() {
        let c = Corpus::new((512, 4096), 7);
        assert_eq!(c.body_count(), 32);
        for i in 0..c.body_count() {
            // The BDAT piece is the command line, then the message as it is.
            let bdat = &c.bdats[i as usize];
            let s = bdat.len() - memchr::memchr(b'\n', bdat).map_or(0, |p| p + 1);
            assert!((512..=4096).contains(&s), "{s}");
            let b = c.bytes(Piece::Bdat(i));
            assert!(b.starts_with(format!("BDAT {s} LAST\r\n").as_bytes()));
        }
        for i in 0..LONG_CMD_LENS.len() as u16 {
            let l = c.bytes(Piece::LongCmd(i)).len();
            assert!((513..=4096).contains(&l));
        }
        assert_eq!(c.bytes(Piece::Nonsmtp(2))[..3], [0x16, 0x03, 0x01]);
        let long = c.bytes(Piece::LongBody);
        assert!(long.split(|&b| b == b'\n').any(|l| l.len() > 1000));
    }

    #[test]
    fn pipelined_valid_groups() {
        let mut plan = vec![];
        let kind = SessionKind {
            class: Class::Valid,
            variant: 0,
        };
        prelude(kind, &mut plan);
        let caps = Caps {
            pipelining: true,
            ..Caps::default()
        };
        after_ehlo(kind, caps, &opts(), &mut Rng::new(1), &mut plan);
        let steps: Vec<(Step, bool)> = plan.iter().map(|c| (c.step, c.flush)).collect();
        assert_eq!(
            steps,
            vec![
                (Step::Banner, true),
                (Step::Ehlo, true),
                (Step::Mail, false),
                (Step::Rcpt, false),
                (Step::Rcpt, false),
                (Step::Data, true),
                (Step::Eod, false),
                (Step::Quit, true),
            ]
        );
        // Without the extension advertised, auto means one command per write.
        prelude(kind, &mut plan);
        after_ehlo(kind, Caps::default(), &opts(), &mut Rng::new(1), &mut plan);
        assert!(plan.iter().all(|c| c.flush));
    }

    #[test]
    fn bdat_only_when_advertised() {
        let kind = SessionKind {
            class: Class::Valid,
            variant: 0,
        };
        let o = ScriptOpts { bdat: true, ..opts() };
        let mut plan = vec![];
        let caps = Caps {
            pipelining: true,
            chunking: true,
            enhancedstatuscodes: true,
            starttls: false,
        };
        after_ehlo(kind, caps, &o, &mut Rng::new(1), &mut plan);
        assert!(plan.iter().any(|c| c.step == Step::Bdat));
        assert!(!plan.iter().any(|c| c.step == Step::Data));
        plan.clear();
        after_ehlo(kind, Caps::default(), &o, &mut Rng::new(1), &mut plan);
        assert!(plan.iter().any(|c| c.step == Step::Data));
    }

    #[test]
    fn typo_variants_expect_500_then_success() {
        for variant in 0..4 {
            let kind = SessionKind {
                class: Class::Typo,
                variant,
            };
            let mut plan = vec![];
            prelude(kind, &mut plan);
            after_ehlo(kind, Caps::default(), &opts(), &mut Rng::new(3), &mut plan);
            let typo = plan.iter().position(|c| c.expect == Expect::Code(500)).unwrap();
            let next = plan[typo + 1];
            assert!(matches!(next.expect, Expect::Code(250) | Expect::Code(354)));
            assert_eq!(plan.last().unwrap().step, Step::Quit);
            assert_eq!(plan.iter().filter(|c| c.step == Step::Eod).count(), 1);
        }
    }

    #[test]
    fn choose_respects_weights() {
        let mut w = [0u32; CLASSES.len()];
        w[Class::Badseq as usize] = 1;
        let mut rng = Rng::new(9);
        for _ in 0..100 {
            assert_eq!(choose(&w, &mut rng).class, Class::Badseq);
        }
        w[Class::Valid as usize] = 1;
        let valid = (0..10_000)
            .filter(|_| choose(&w, &mut rng).class == Class::Valid)
            .count();
        assert!((4_500..5_500).contains(&valid), "{valid}");
    }
}
