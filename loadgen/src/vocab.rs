//! The vocabulary runs are scripted and counted in: traffic classes, script steps, latency phases, pipelining.
//!
//! Counters and histograms are arrays indexed by these enums (`as usize`), and their names
//! are the keys of summary.json, the .hgrm file names and the --mix flag.

use clap::ValueEnum;

/// A kind of session the mix chooses from (`--mix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Class {
    Valid,
    Typo,
    Overlong,
    Nonsmtp,
    Badseq,
    Unimpl,
    Badparam,
    Starttls,
    /// A command line or a DATA body one octet per `--slowloris-interval`, never finished.
    Slowloris,
    /// EHLO before the banner.
    Pregreet,
    /// A bare-LF end-of-data variant with a second transaction behind it.
    Smuggle,
    /// A recipient at a domain the server does not accept.
    Relay,
    /// A recipient of an accepted domain not in its table.
    UnknownUser,
    /// Over the advertised SIZE.
    Bigmsg,
    /// 150 recipients in one transaction.
    Overshoot,
    /// A valid transaction after STARTTLS.
    Tls,
}

pub const CLASSES: [Class; 16] = [
    Class::Valid,
    Class::Typo,
    Class::Overlong,
    Class::Nonsmtp,
    Class::Badseq,
    Class::Unimpl,
    Class::Badparam,
    Class::Starttls,
    Class::Slowloris,
    Class::Pregreet,
    Class::Smuggle,
    Class::Relay,
    Class::UnknownUser,
    Class::Bigmsg,
    Class::Overshoot,
    Class::Tls,
];

/// Most variants a class has (see [`Class::variants`]).
pub const MAX_VARIANTS: usize = 4;
/// Most outcome counters a class has (see [`Class::outcomes`]).
pub const MAX_OUTCOMES: usize = 2;

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Valid => "valid",
            Class::Typo => "typo",
            Class::Overlong => "overlong",
            Class::Nonsmtp => "nonsmtp",
            Class::Badseq => "badseq",
            Class::Unimpl => "unimpl",
            Class::Badparam => "badparam",
            Class::Starttls => "starttls",
            Class::Slowloris => "slowloris",
            Class::Pregreet => "pregreet",
            Class::Smuggle => "smuggle",
            Class::Relay => "relay",
            Class::UnknownUser => "unknown_user",
            Class::Bigmsg => "bigmsg",
            Class::Overshoot => "overshoot",
            Class::Tls => "tls",
        }
    }

    /// The class's variants, by index (a session draws one uniformly, except `tls`, whose
    /// `resume` share is `--tls-resume-share`); the keys of `classes.CLASS.variants`.
    pub fn variants(self) -> &'static [&'static str] {
        match self {
            Class::Typo => &["helo", "mail", "rcpt", "data"],
            Class::Overlong => &["line", "data-line"],
            Class::Nonsmtp => &["http", "ssh", "tls", "binary"],
            Class::Slowloris => &["command", "data"],
            Class::Smuggle => &["lf-lf", "crlf-lf", "lf-crlf"],
            Class::Bigmsg => &["size-param", "body"],
            Class::Tls => &["full", "resume"],
            _ => &["default"],
        }
    }

    /// The names of the class's outcome counters, by [`Outcome::index`]: the keys beside
    /// the class's other counters in summary.json.
    pub fn outcomes(self) -> &'static [&'static str] {
        match self {
            Class::Slowloris => &["slowloris_421", "slowloris_closed"],
            Class::Pregreet => &["pregreet_rejected", "pregreet_accepted"],
            Class::Smuggle => &["smuggle_accepted", "smuggle_rejected"],
            Class::Overshoot => &["overshoot_452", "overshoot_accepted"],
            Class::Tls => &["tls_handshakes", "tls_resumed"],
            _ => &[],
        }
    }

    pub fn from_name(s: &str) -> Option<Class> {
        CLASSES.iter().copied().find(|c| c.name() == s)
    }
}

/// Which of the correct answers a server gave a class, counted when seen (whatever the
/// session's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// slowloris: a `421` before the close.
    Slowloris421,
    /// slowloris: the close without a reply.
    SlowlorisClosed,
    /// pregreet: `554`, the greeting withheld.
    PregreetRejected,
    /// pregreet: the `220` banner and a `250` to the early EHLO.
    PregreetAccepted,
    /// smuggle: `250` to the whole body as one message.
    SmuggleAccepted,
    /// smuggle: a `5xx` at the end of data (bare LF refused).
    SmuggleRejected,
    /// overshoot: a session whose recipients past 100 got `452 4.5.3`.
    Overshoot452,
    /// overshoot: all 150 recipients got `250`.
    OvershootAccepted,
    /// tls: handshakes completed.
    TlsHandshakes,
    /// tls: of those, resumed ones.
    TlsResumed,
}

impl Outcome {
    pub fn class(self) -> Class {
        match self {
            Outcome::Slowloris421 | Outcome::SlowlorisClosed => Class::Slowloris,
            Outcome::PregreetRejected | Outcome::PregreetAccepted => Class::Pregreet,
            Outcome::SmuggleAccepted | Outcome::SmuggleRejected => Class::Smuggle,
            Outcome::Overshoot452 | Outcome::OvershootAccepted => Class::Overshoot,
            Outcome::TlsHandshakes | Outcome::TlsResumed => Class::Tls,
        }
    }

    /// Where the counter sits among its class's (`Class::outcomes`).
    pub fn index(self) -> usize {
        match self {
            Outcome::Slowloris421
            | Outcome::PregreetRejected
            | Outcome::SmuggleAccepted
            | Outcome::Overshoot452
            | Outcome::TlsHandshakes => 0,
            _ => 1,
        }
    }
}

/// Latency histograms kept per run, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Connect,
    /// First ClientHello octet to handshake complete (`--tls`).
    Tls,
    Banner,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Eod,
    Quit,
    Session,
    /// A slowloris session's life, connect to the server's close (not in `Session`).
    Held,
}

pub const PHASES: [Phase; 11] = [
    Phase::Connect,
    Phase::Tls,
    Phase::Banner,
    Phase::Ehlo,
    Phase::Mail,
    Phase::Rcpt,
    Phase::Data,
    Phase::Eod,
    Phase::Quit,
    Phase::Session,
    Phase::Held,
];

impl Phase {
    pub fn name(self) -> &'static str {
        [
            "connect", "tls", "banner", "ehlo", "mail", "rcpt", "data", "eod", "quit", "session", "held",
        ][self as usize]
    }
}

/// The step of a script a reply belongs to; mismatches are counted per class and step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Banner,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Eod,
    Bdat,
    Quit,
    TypoHelo,
    TypoMail,
    TypoRcpt,
    TypoData,
    LongLine,
    Noop,
    LongDataLine,
    NonsmtpHttp,
    NonsmtpSsh,
    NonsmtpTls,
    NonsmtpBinary,
    Close,
    RcptBeforeMail,
    DataBeforeRcpt,
    Rset,
    Expn,
    Turn,
    BadMail,
    Starttls,
    // Where the classes of the same names fail their own check.
    Slowloris,
    Pregreet,
    Smuggle,
    Relay,
    UnknownUser,
    Bigmsg,
    Overshoot,
    Tls,
}

pub const STEP_COUNT: usize = Step::Tls as usize + 1;

impl Step {
    pub fn name(self) -> &'static str {
        step_name(self as usize)
    }
}

/// Name of the step with index `i` (counters are kept in arrays indexed by step).
pub fn step_name(i: usize) -> &'static str {
    [
        "banner",
        "ehlo",
        "mail",
        "rcpt",
        "data",
        "eod",
        "bdat",
        "quit",
        "typo-helo",
        "typo-mail",
        "typo-rcpt",
        "typo-data",
        "long-line",
        "noop",
        "long-data-line",
        "nonsmtp-http",
        "nonsmtp-ssh",
        "nonsmtp-tls",
        "nonsmtp-binary",
        "close",
        "rcpt-before-mail",
        "data-before-rcpt",
        "rset",
        "expn",
        "turn",
        "bad-mail",
        "starttls",
        "slowloris",
        "pregreet",
        "smuggle",
        "relay",
        "unknown_user",
        "bigmsg",
        "overshoot",
        "tls",
    ][i]
}

/// RFC 2920 pipelining (`--pipelining`): auto = when the server advertises it.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pipelining {
    Auto,
    On,
    Off,
}

/// How sessions use TLS (`--tls`): STARTTLS after the first EHLO (RFC 3207), or TLS from
/// the first octet (RFC 8314).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Starttls,
    Implicit,
}

/// The PROXY protocol header every connection starts with (`--proxy`, haproxy's spec).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    /// The text line (spec 2.1).
    V1,
    /// The binary header (spec 2.2).
    V2,
}

/// How message sizes spread over `--msg-size MIN:MAX` (`--msg-size-dist`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeDist {
    /// Log-uniform: every octave of sizes equally likely.
    Uniform,
    /// Log-normal: median at the geometric mean, MIN and MAX at -3 and +3 sigma.
    Lognormal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_distinct() {
        let mut names: Vec<&str> = (0..STEP_COUNT).map(step_name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), STEP_COUNT);
    }

    #[test]
    fn class_steps_are_named_after_their_classes() {
        for (class, step) in [
            (Class::Slowloris, Step::Slowloris),
            (Class::Pregreet, Step::Pregreet),
            (Class::Smuggle, Step::Smuggle),
            (Class::Relay, Step::Relay),
            (Class::UnknownUser, Step::UnknownUser),
            (Class::Bigmsg, Step::Bigmsg),
            (Class::Overshoot, Step::Overshoot),
            (Class::Tls, Step::Tls),
        ] {
            assert_eq!(class.name(), step.name());
        }
        for (o, name) in [
            (Outcome::Slowloris421, "slowloris_421"),
            (Outcome::SlowlorisClosed, "slowloris_closed"),
            (Outcome::PregreetRejected, "pregreet_rejected"),
            (Outcome::PregreetAccepted, "pregreet_accepted"),
            (Outcome::SmuggleAccepted, "smuggle_accepted"),
            (Outcome::SmuggleRejected, "smuggle_rejected"),
            (Outcome::Overshoot452, "overshoot_452"),
            (Outcome::OvershootAccepted, "overshoot_accepted"),
            (Outcome::TlsHandshakes, "tls_handshakes"),
            (Outcome::TlsResumed, "tls_resumed"),
        ] {
            assert_eq!(o.class().outcomes()[o.index()], name);
        }
        for c in CLASSES {
            assert!((1..=MAX_VARIANTS).contains(&c.variants().len()), "{c:?}");
            assert!(c.outcomes().len() <= MAX_OUTCOMES, "{c:?}");
            assert_eq!(Class::from_name(c.name()), Some(c));
        }
    }
}
