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
}

pub const CLASSES: [Class; 8] = [
    Class::Valid,
    Class::Typo,
    Class::Overlong,
    Class::Nonsmtp,
    Class::Badseq,
    Class::Unimpl,
    Class::Badparam,
    Class::Starttls,
];

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
        }
    }

    pub fn from_name(s: &str) -> Option<Class> {
        CLASSES.iter().copied().find(|c| c.name() == s)
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
}

pub const PHASES: [Phase; 10] = [
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
];

impl Phase {
    pub fn name(self) -> &'static str {
        [
            "connect", "tls", "banner", "ehlo", "mail", "rcpt", "data", "eod", "quit", "session",
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
}

pub const STEP_COUNT: usize = Step::Starttls as usize + 1;

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
}
