//! Traffic classes as scripts: the commands of each session and the reply each one must get.
//!
//! Every byte a session sends is rendered once at start-up into a [`Corpus`]; a session's
//! plan is a list of small `Copy` commands that point into it, so running a session
//! allocates nothing.

mod corpus;
mod rng;

pub use corpus::{BigMsg, Bytes, Corpus, RCPT_POOL, UNKNOWN_POOL};
pub use rng::Rng;

use ringmx_loadgen::reply::Caps;

use crate::vocab::{Class, Phase, Pipelining, Step, CLASSES};
use corpus::LONG_CMD_LENS;

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enh(pub u8, pub u16, pub u16);

/// What a command's reply must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this reply code.
    Code(u16),
    /// Any reply whose first digit is this.
    Class(u8),
    /// Exactly this reply code with exactly this enhanced status code.
    Status(u16, Enh),
    /// One 5xx reply or the connection closing (RFC 5321 3.8: a server may drop a
    /// session that is clearly not SMTP).
    FiveOrClose,
    /// The server closes the connection; no further reply.
    Close,
    /// EHLO sent before the banner (RFC 5321 4.3.1 has the client wait for it): `554`
    /// after any `220-` lines of a delayed greeting, then a close (postscreen's pregreet
    /// test); or the whole `220` banner, the EHLO's `250` following.
    Pregreet,
    /// A slowloris drip: the server ends it, with a `421` (RFC 5321 3.8) and then a close,
    /// or with a close alone.
    Held,
    /// The end of data of a message holding a bare-LF end-of-data variant: `250` (it was
    /// one message) or any `5xx` (bare LF refused).
    OkOrFive,
    /// A recipient past the 100 a server must take (RFC 5321 4.5.3.1.8): `250`, or
    /// `452 4.5.3` (too many recipients), and `452` for every one after the first `452`.
    Surplus,
}

impl Expect {
    pub fn describe(self) -> String {
        match self {
            Expect::Code(c) => c.to_string(),
            Expect::Class(d) => format!("{d}xx"),
            Expect::Status(c, Enh(x, y, z)) => format!("{c} {x}.{y}.{z}"),
            Expect::FiveOrClose => "5xx or close".into(),
            Expect::Close => "close".into(),
            Expect::Pregreet => "554 (after any 220- lines) then close, or the 220 banner".into(),
            Expect::Held => "421 or close".into(),
            Expect::OkOrFive => "250 or 5xx".into(),
            Expect::Surplus => "250, or 452 4.5.3 from the first 452 on".into(),
        }
    }
}

/// Bytes to send, by reference into the [`Corpus`] (or the session's [`BigMsg`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Wait only (banner, close).
    Nothing,
    Ehlo,
    Mail,
    Rcpt(u16),
    /// A recipient of `--rcpt-domain` not in the server's table.
    Unknown(u16),
    /// A recipient at `--relay-domain`.
    RelayRcpt,
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
    /// A message with a bare-LF end-of-data variant and a transaction behind it.
    Smuggle(u8),
    /// Sent one octet per `--slowloris-interval` by the worker's timer, never in a write:
    /// 0 a command line, 1 a message body, neither ever ended.
    Drip(u8),
    /// `MAIL FROM:<…> SIZE=<limit + 1>` (RFC 1870), rendered for the server's limit.
    BigMail,
    /// A message of the server's SIZE limit + 1 KiB.
    BigBody,
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

/// RFC 5321 4.5.3.1.8: the recipients a server must accept in one transaction.
pub const MUST_ACCEPT_RCPTS: usize = 100;
/// The overshoot class's recipients in one transaction.
pub const OVERSHOOT_RCPTS: usize = 150;

/// Session-independent options that shape scripts.
#[derive(Debug, Clone, Copy)]
pub struct ScriptOpts {
    pub pipelining: Pipelining,
    pub bdat: bool,
    pub messages_per_session: u32,
    pub rcpts: (u32, u32),
    pub body_count: u32,
    /// Percent of tls class sessions that try to resume (`--tls-resume-share`).
    pub tls_resume_share: u32,
}

/// Which class and variant a session runs, drawn at session start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKind {
    pub class: Class,
    pub variant: u8,
}

pub fn choose(weights: &[u32; CLASSES.len()], o: &ScriptOpts, rng: &mut Rng) -> SessionKind {
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
    let variant = match class {
        Class::Tls => u8::from(rng.below(100) < o.tls_resume_share),
        _ => rng.below(class.variants().len() as u32) as u8,
    };
    SessionKind { class, variant }
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
    if kind.class == Class::Pregreet {
        // Written at connect, not after the banner; what comes back decides the rest
        // (`pregreet_answered`).
        plan.push(cmd(Piece::Ehlo, Expect::Pregreet, Step::Pregreet, None));
        return;
    }
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

/// The pregreet class's early EHLO was answered: with the banner (`accepted`), so the
/// EHLO's `250` is still to come; or with `554`, so the close is.
pub fn pregreet_answered(accepted: bool, plan: &mut Vec<Cmd>) {
    if accepted {
        plan.push(cmd(
            Piece::Nothing,
            Expect::Code(250),
            Step::Ehlo,
            Some(Phase::Ehlo),
        ));
    } else {
        plan.push(cmd(Piece::Nothing, Expect::Close, Step::Pregreet, None));
    }
}

/// One mail transaction; `pipelined` groups MAIL..DATA (or MAIL..BDAT) in one write.
fn transaction(plan: &mut Vec<Cmd>, o: &ScriptOpts, rng: &mut Rng, pipelined: bool, bdat: bool) {
    let body = rng.below(o.body_count);
    let n = rng.range(o.rcpts.0, o.rcpts.1);
    let first = rng.below((RCPT_POOL as u32) - n + 1);
    envelope(plan, first..first + n, pipelined);
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
}

/// MAIL and RCPT for the recipients `rcpts` of the pool, each in its own write unless
/// `pipelined` (then the command after them ends the group).
fn envelope(plan: &mut Vec<Cmd>, rcpts: std::ops::Range<u32>, pipelined: bool) {
    let mut c = cmd(Piece::Mail, Expect::Code(250), Step::Mail, Some(Phase::Mail));
    c.flush = !pipelined;
    plan.push(c);
    for (k, i) in rcpts.enumerate() {
        let mut c = cmd(
            Piece::Rcpt(i as u16),
            Expect::Code(250),
            Step::Rcpt,
            Some(Phase::Rcpt),
        );
        if k >= MUST_ACCEPT_RCPTS {
            (c.expect, c.step) = (Expect::Surplus, Step::Overshoot);
        }
        c.flush = !pipelined;
        plan.push(c);
    }
}

/// MAIL, one RCPT and DATA, each expected to succeed: the start of a plain transaction.
fn open_transaction(plan: &mut Vec<Cmd>, rng: &mut Rng) {
    let r = rng.below(RCPT_POOL as u32);
    envelope(plan, r..r + 1, false);
    plan.push(cmd(Piece::Data, Expect::Code(354), Step::Data, Some(Phase::Data)));
}

/// `--messages-per-session` transactions.
fn valid(plan: &mut Vec<Cmd>, o: &ScriptOpts, rng: &mut Rng, pipelined: bool, bdat: bool) {
    for _ in 0..o.messages_per_session {
        transaction(plan, o, rng, pipelined, bdat);
    }
    end_pipelined(plan, pipelined);
}

/// RFC 2920 3.1: the message content may start a group, so the last message's end and
/// QUIT go out in one write.
fn end_pipelined(plan: &mut [Cmd], pipelined: bool) {
    if let Some(last) = plan.last_mut().filter(|_| pipelined) {
        last.flush = false;
    }
}

/// A refused recipient (`piece`, answered `code enh` at `step`), then RSET `250`.
fn refused_rcpt(plan: &mut Vec<Cmd>, piece: Piece, code: u16, enh: Enh, step: Step) {
    plan.push(cmd(Piece::Mail, Expect::Code(250), Step::Mail, Some(Phase::Mail)));
    plan.push(cmd(piece, Expect::Status(code, enh), step, None));
    plan.push(cmd(Piece::Rset, Expect::Code(250), Step::Rset, None));
}

/// Append the rest of the session once the EHLO reply told us the server's extensions.
/// The bigmsg class needs the session's [`BigMsg`] in place (the engine renders it from
/// the SIZE the reply advertised).
pub fn after_ehlo(kind: SessionKind, caps: Caps, o: &ScriptOpts, rng: &mut Rng, plan: &mut Vec<Cmd>) {
    let pipelined = match o.pipelining {
        Pipelining::On => true,
        Pipelining::Off => false,
        Pipelining::Auto => caps.pipelining,
    };
    let bdat = o.bdat && caps.chunking;
    match kind.class {
        Class::Valid | Class::Tls => valid(plan, o, rng, pipelined, bdat),
        Class::Typo => {
            let start = plan.len();
            open_transaction(plan, rng);
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
                open_transaction(plan, rng);
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
        // The server ends these sessions: no QUIT.
        Class::Slowloris => {
            if kind.variant == 1 {
                open_transaction(plan, rng);
            }
            plan.push(cmd(
                Piece::Drip(kind.variant),
                Expect::Held,
                Step::Slowloris,
                None,
            ));
            return;
        }
        Class::Pregreet => {}
        Class::Smuggle => {
            open_transaction(plan, rng);
            plan.push(cmd(
                Piece::Smuggle(kind.variant),
                Expect::OkOrFive,
                Step::Eod,
                Some(Phase::Eod),
            ));
            // A server that took a bare-LF variant as the end of data answers the MAIL,
            // RCPT and DATA behind it as well: the first of those replies lands here.
            plan.push(cmd(
                Piece::Quit,
                Expect::Code(221),
                Step::Smuggle,
                Some(Phase::Quit),
            ));
            return;
        }
        // RFC 5321 3.6.2 / RFC 3463 X.7.1: delivery not authorized.
        Class::Relay => refused_rcpt(plan, Piece::RelayRcpt, 554, Enh(5, 7, 1), Step::Relay),
        // RFC 3463 X.1.1: bad destination mailbox address.
        Class::UnknownUser => {
            let i = rng.below(UNKNOWN_POOL as u32) as u16;
            refused_rcpt(plan, Piece::Unknown(i), 550, Enh(5, 1, 1), Step::UnknownUser);
        }
        // RFC 1870 6.1 and 6.3: 552 to a MAIL announcing too much, and to a message that
        // turns out too big; RFC 3463 X.3.4: message too big for system.
        Class::Bigmsg => {
            if kind.variant == 0 {
                plan.push(cmd(
                    Piece::BigMail,
                    Expect::Status(552, Enh(5, 3, 4)),
                    Step::Bigmsg,
                    None,
                ));
            } else {
                open_transaction(plan, rng);
                plan.push(cmd(Piece::BigBody, Expect::Code(552), Step::Bigmsg, None));
            }
        }
        Class::Overshoot => {
            envelope(plan, 0..OVERSHOOT_RCPTS as u32, pipelined);
            plan.push(cmd(Piece::Data, Expect::Code(354), Step::Data, Some(Phase::Data)));
            let body = rng.below(o.body_count);
            plan.push(cmd(
                Piece::Body(body),
                Expect::Code(250),
                Step::Eod,
                Some(Phase::Eod),
            ));
            end_pipelined(plan, pipelined);
        }
        Class::Nonsmtp => unreachable!("nonsmtp sessions end before EHLO"),
    }
    plan.push(quit());
}

/// After the first EHLO, with `--tls starttls` or in the tls class: STARTTLS `220`, then
/// (after the handshake) EHLO again (RFC 3207 4.2: the server forgets what it knew). The
/// starttls class pipelines a NOOP behind STARTTLS that a correct server discards unanswered.
pub fn starttls(kind: SessionKind, plan: &mut Vec<Cmd>) {
    let (piece, step) = match kind.class {
        Class::Starttls => (Piece::StarttlsNoop, Step::Starttls),
        Class::Tls => (Piece::Starttls, Step::Tls),
        _ => (Piece::Starttls, Step::Starttls),
    };
    plan.push(cmd(piece, Expect::Code(220), step, None));
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
            tls_resume_share: 0,
        }
    }

    fn kind(class: Class, variant: u8) -> SessionKind {
        SessionKind { class, variant }
    }

    /// The whole plan of a session of `k` against a server with `caps`.
    fn plan_of(k: SessionKind, caps: Caps) -> Vec<Cmd> {
        let mut plan = vec![];
        prelude(k, &mut plan);
        after_ehlo(k, caps, &opts(), &mut Rng::new(4), &mut plan);
        plan
    }

    fn pipelining() -> Caps {
        Caps {
            pipelining: true,
            ..Caps::default()
        }
    }

    #[test]
    fn pipelined_valid_groups() {
        let mut plan = vec![];
        let kind = kind(Class::Valid, 0);
        prelude(kind, &mut plan);
        after_ehlo(kind, pipelining(), &opts(), &mut Rng::new(1), &mut plan);
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
            assert_eq!(choose(&w, &opts(), &mut rng).class, Class::Badseq);
        }
        w[Class::Valid as usize] = 1;
        let valid = (0..10_000)
            .filter(|_| choose(&w, &opts(), &mut rng).class == Class::Valid)
            .count();
        assert!((4_500..5_500).contains(&valid), "{valid}");
    }

    #[test]
    fn variants_drawn_per_class_and_resume_share() {
        let mut w = [0u32; CLASSES.len()];
        w[Class::Smuggle as usize] = 1;
        let mut rng = Rng::new(2);
        let mut seen = [0u32; 3];
        for _ in 0..3000 {
            seen[usize::from(choose(&w, &opts(), &mut rng).variant)] += 1;
        }
        assert!(seen.iter().all(|&n| (850..1150).contains(&n)), "{seen:?}");
        let mut w = [0u32; CLASSES.len()];
        w[Class::Tls as usize] = 1;
        let o = ScriptOpts {
            tls_resume_share: 30,
            ..opts()
        };
        let resumed = (0..10_000)
            .filter(|_| choose(&w, &o, &mut rng).variant == 1)
            .count();
        assert!((2_700..3_300).contains(&resumed), "{resumed}");
        assert!((0..100).all(|_| choose(&w, &opts(), &mut rng).variant == 0));
    }

    #[test]
    fn pregreet_talks_first() {
        let k = kind(Class::Pregreet, 0);
        let mut plan = vec![];
        prelude(k, &mut plan);
        assert_eq!(plan.len(), 1, "no banner wait before the EHLO");
        assert_eq!((plan[0].piece, plan[0].expect), (Piece::Ehlo, Expect::Pregreet));
        pregreet_answered(true, &mut plan);
        assert_eq!((plan[1].expect, plan[1].step), (Expect::Code(250), Step::Ehlo));
        after_ehlo(k, Caps::default(), &opts(), &mut Rng::new(1), &mut plan);
        assert_eq!(plan.last().unwrap().step, Step::Quit);
        plan.truncate(1);
        pregreet_answered(false, &mut plan);
        assert_eq!((plan[1].expect, plan[1].step), (Expect::Close, Step::Pregreet));
    }

    #[test]
    fn slowloris_ends_with_a_drip_and_no_quit() {
        let p = plan_of(kind(Class::Slowloris, 0), Caps::default());
        let last = p.last().unwrap();
        assert_eq!(
            (last.piece, last.expect, last.step),
            (Piece::Drip(0), Expect::Held, Step::Slowloris)
        );
        assert_eq!(p.len(), 3, "banner, EHLO, drip");
        let p = plan_of(kind(Class::Slowloris, 1), pipelining());
        let steps: Vec<Step> = p.iter().map(|c| c.step).collect();
        assert_eq!(
            steps,
            [
                Step::Banner,
                Step::Ehlo,
                Step::Mail,
                Step::Rcpt,
                Step::Data,
                Step::Slowloris
            ]
        );
        assert_eq!(p[5].piece, Piece::Drip(1));
    }

    #[test]
    fn smuggle_expects_one_reply_then_the_quit() {
        for v in 0..3 {
            let p = plan_of(kind(Class::Smuggle, v), pipelining());
            let n = p.len();
            assert_eq!(
                (p[n - 2].piece, p[n - 2].expect),
                (Piece::Smuggle(v), Expect::OkOrFive)
            );
            assert_eq!((p[n - 1].piece, p[n - 1].step), (Piece::Quit, Step::Smuggle));
            // Each in its own write: the QUIT goes out only after the end-of-data reply.
            assert!(p[n - 2].flush);
        }
    }

    #[test]
    fn refusals_need_exact_enhanced_codes() {
        let p = plan_of(kind(Class::Relay, 0), Caps::default());
        let rcpt = p.iter().find(|c| c.step == Step::Relay).unwrap();
        assert_eq!(
            (rcpt.piece, rcpt.expect),
            (Piece::RelayRcpt, Expect::Status(554, Enh(5, 7, 1)))
        );
        let p = plan_of(kind(Class::UnknownUser, 0), Caps::default());
        let rcpt = p.iter().find(|c| c.step == Step::UnknownUser).unwrap();
        assert!(matches!(rcpt.piece, Piece::Unknown(_)));
        assert_eq!(rcpt.expect, Expect::Status(550, Enh(5, 1, 1)));
        for p in [p, plan_of(kind(Class::Relay, 0), Caps::default())] {
            let tail: Vec<Step> = p.iter().rev().take(2).map(|c| c.step).collect();
            assert_eq!(tail, [Step::Quit, Step::Rset]);
        }
    }

    #[test]
    fn bigmsg_variants() {
        let p = plan_of(kind(Class::Bigmsg, 0), Caps::default());
        let big = p.iter().find(|c| c.step == Step::Bigmsg).unwrap();
        assert_eq!(
            (big.piece, big.expect),
            (Piece::BigMail, Expect::Status(552, Enh(5, 3, 4)))
        );
        let p = plan_of(kind(Class::Bigmsg, 1), Caps::default());
        let big = p.iter().position(|c| c.step == Step::Bigmsg).unwrap();
        assert_eq!((p[big].piece, p[big].expect), (Piece::BigBody, Expect::Code(552)));
        assert_eq!(p[big - 1].step, Step::Data);
    }

    #[test]
    fn overshoot_sends_150_recipients_in_one_group() {
        let p = plan_of(kind(Class::Overshoot, 0), pipelining());
        let rcpts: Vec<&Cmd> = p.iter().filter(|c| matches!(c.piece, Piece::Rcpt(_))).collect();
        assert_eq!(rcpts.len(), OVERSHOOT_RCPTS);
        assert!(rcpts[..100].iter().all(|c| c.expect == Expect::Code(250)));
        assert!(rcpts[100..]
            .iter()
            .all(|c| (c.expect, c.step) == (Expect::Surplus, Step::Overshoot)));
        let mut distinct: Vec<Piece> = rcpts.iter().map(|c| c.piece).collect();
        distinct.dedup();
        assert_eq!(distinct.len(), OVERSHOOT_RCPTS, "every recipient once");
        // MAIL..DATA in one write, then the message and QUIT in another.
        let flushes: Vec<Step> = p.iter().filter(|c| c.flush).map(|c| c.step).collect();
        assert_eq!(flushes, [Step::Banner, Step::Ehlo, Step::Data, Step::Quit]);
    }

    #[test]
    fn tls_class_starttls_step_is_its_own() {
        let mut plan = vec![];
        starttls(kind(Class::Tls, 0), &mut plan);
        assert_eq!((plan[0].piece, plan[0].step), (Piece::Starttls, Step::Tls));
        plan.clear();
        starttls(kind(Class::Valid, 0), &mut plan);
        assert_eq!(plan[0].step, Step::Starttls);
        let p = plan_of(kind(Class::Tls, 1), Caps::default());
        assert_eq!(p.iter().filter(|c| c.step == Step::Eod).count(), 1);
    }
}
