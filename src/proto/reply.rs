//! Every reply the session can send, with its exact code and enhanced status code (RFC 3463).
//!
//! Codes follow RFC 5321 §4.2.3 and the distinction the reference text draws: 500 for what the
//! server cannot recognize (unknown verb, overlong line, illegal characters), 501 for a known
//! verb with bad arguments, 502 for a known verb not offered, 503 for a bad sequence.

/// The kind of a reply; each kind is counted in [`crate::proto::SessionStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Greeting,
    Helo,
    Ehlo,
    Ok,
    MailOk,
    RcptOk,
    Queued,
    ChunkOk,
    Vrfy,
    Help,
    StartData,
    Bye,
    ShuttingDown,
    TooManyErrors,
    Timeout,
    CommitTimeout,
    TooManyRecipients,
    Storage,
    Unrecognized,
    LineTooLong,
    IllegalChars,
    EmptyLine,
    Syntax,
    BadSender,
    BadRecipient,
    NotImplemented,
    NeedHelo,
    NeedMail,
    NeedRcpt,
    NestedMail,
    BadSequence,
    DataAfterBdat,
    BdatAfterData,
    SizeExceeded,
    MessageTooBig,
    TextLineTooLong,
    BareLf,
    UnsupportedParam,
    NonSmtp,
    TlsReady,
    TlsActive,
    TlsInTransaction,
    TlsRequired,
    Pregreet,
    SlowData,
    SessionTooLong,
    RelayDenied,
    UnknownUser,
    /// Sent by the caller, not a session: a connection over `max_connections`.
    TooManyConnections,
}

impl Reply {
    /// Number of reply kinds, for counter arrays.
    pub const COUNT: usize = Reply::TooManyConnections as usize + 1;
    /// Every kind, in counter order.
    pub const ALL: [Reply; Reply::COUNT] = [
        Reply::Greeting,
        Reply::Helo,
        Reply::Ehlo,
        Reply::Ok,
        Reply::MailOk,
        Reply::RcptOk,
        Reply::Queued,
        Reply::ChunkOk,
        Reply::Vrfy,
        Reply::Help,
        Reply::StartData,
        Reply::Bye,
        Reply::ShuttingDown,
        Reply::TooManyErrors,
        Reply::Timeout,
        Reply::CommitTimeout,
        Reply::TooManyRecipients,
        Reply::Storage,
        Reply::Unrecognized,
        Reply::LineTooLong,
        Reply::IllegalChars,
        Reply::EmptyLine,
        Reply::Syntax,
        Reply::BadSender,
        Reply::BadRecipient,
        Reply::NotImplemented,
        Reply::NeedHelo,
        Reply::NeedMail,
        Reply::NeedRcpt,
        Reply::NestedMail,
        Reply::BadSequence,
        Reply::DataAfterBdat,
        Reply::BdatAfterData,
        Reply::SizeExceeded,
        Reply::MessageTooBig,
        Reply::TextLineTooLong,
        Reply::BareLf,
        Reply::UnsupportedParam,
        Reply::NonSmtp,
        Reply::TlsReady,
        Reply::TlsActive,
        Reply::TlsInTransaction,
        Reply::TlsRequired,
        Reply::Pregreet,
        Reply::SlowData,
        Reply::SessionTooLong,
        Reply::RelayDenied,
        Reply::UnknownUser,
        Reply::TooManyConnections,
    ];

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Reply::Greeting => "greeting",
            Reply::Helo => "helo",
            Reply::Ehlo => "ehlo",
            Reply::Ok => "ok",
            Reply::MailOk => "mail_ok",
            Reply::RcptOk => "rcpt_ok",
            Reply::Queued => "queued",
            Reply::ChunkOk => "chunk_ok",
            Reply::Vrfy => "vrfy",
            Reply::Help => "help",
            Reply::StartData => "start_data",
            Reply::Bye => "bye",
            Reply::ShuttingDown => "shutting_down",
            Reply::TooManyErrors => "too_many_errors",
            Reply::Timeout => "timeout",
            Reply::CommitTimeout => "commit_timeout",
            Reply::TooManyRecipients => "too_many_recipients",
            Reply::Storage => "storage",
            Reply::Unrecognized => "unrecognized",
            Reply::LineTooLong => "line_too_long",
            Reply::IllegalChars => "illegal_chars",
            Reply::EmptyLine => "empty_line",
            Reply::Syntax => "syntax",
            Reply::BadSender => "bad_sender",
            Reply::BadRecipient => "bad_recipient",
            Reply::NotImplemented => "not_implemented",
            Reply::NeedHelo => "need_helo",
            Reply::NeedMail => "need_mail",
            Reply::NeedRcpt => "need_rcpt",
            Reply::NestedMail => "nested_mail",
            Reply::BadSequence => "bad_sequence",
            Reply::DataAfterBdat => "data_after_bdat",
            Reply::BdatAfterData => "bdat_after_data",
            Reply::SizeExceeded => "size_exceeded",
            Reply::MessageTooBig => "message_too_big",
            Reply::TextLineTooLong => "text_line_too_long",
            Reply::BareLf => "bare_lf",
            Reply::UnsupportedParam => "unsupported_param",
            Reply::NonSmtp => "non_smtp",
            Reply::TlsReady => "tls_ready",
            Reply::TlsActive => "tls_active",
            Reply::TlsInTransaction => "tls_in_transaction",
            Reply::TlsRequired => "tls_required",
            Reply::Pregreet => "pregreet",
            Reply::SlowData => "slow_data",
            Reply::SessionTooLong => "session_too_long",
            Reply::RelayDenied => "relay_denied",
            Reply::UnknownUser => "unknown_user",
            Reply::TooManyConnections => "too_many_connections",
        }
    }

    /// Whether the reply counts towards the session's error limit (RFC 5321 §4.2.1: 4yz and
    /// 5yz replies to commands; the 421 that ends the session and storage failures do not).
    pub fn is_client_error(self) -> bool {
        // TooManyRecipients is not among them: RFC 5321 §4.5.3.1.10 makes the excess a normal
        // event; the session counts it past `recipient_overshoot_limit` itself.
        matches!(
            self,
            Reply::Unrecognized
                | Reply::LineTooLong
                | Reply::IllegalChars
                | Reply::EmptyLine
                | Reply::Syntax
                | Reply::BadSender
                | Reply::BadRecipient
                | Reply::NotImplemented
                | Reply::NeedHelo
                | Reply::NeedMail
                | Reply::NeedRcpt
                | Reply::NestedMail
                | Reply::BadSequence
                | Reply::DataAfterBdat
                | Reply::BdatAfterData
                | Reply::SizeExceeded
                | Reply::UnsupportedParam
                | Reply::TlsActive
                | Reply::TlsInTransaction
                | Reply::TlsRequired
                | Reply::RelayDenied
                | Reply::UnknownUser
        )
    }

    /// The reply code and the enhanced status code (RFC 3463; empty when the reply has
    /// none), for metrics: `(550, "5.1.1")`.
    pub fn status(self) -> (u16, &'static str) {
        // Read from the fixed lines once: the session line asks every kind's code per session.
        static TABLE: std::sync::OnceLock<[(u16, &'static str); Reply::COUNT]> = std::sync::OnceLock::new();
        TABLE.get_or_init(|| Reply::ALL.map(Reply::read_status))[self as usize]
    }

    /// [`Reply::status`] worked out from the reply's text.
    fn read_status(self) -> (u16, &'static str) {
        match self {
            Reply::Greeting => (220, ""),
            Reply::Helo | Reply::Ehlo => (250, ""),
            Reply::Queued | Reply::ChunkOk => (250, "2.0.0"),
            Reply::Unrecognized => (500, "5.5.1"),
            Reply::Syntax => (501, "5.5.4"),
            Reply::NonSmtp => (554, "5.5.0"),
            Reply::RelayDenied => (554, "5.7.1"),
            Reply::UnknownUser => (550, "5.1.1"),
            fixed => {
                let line = fixed.fixed();
                let code = line[..3].iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
                let word = &line[4..];
                let word = &word[..word.iter().position(|&b| b == b' ').unwrap_or(0)];
                let enhanced = word.first().is_some_and(u8::is_ascii_digit) && word.contains(&b'.');
                let text = if enhanced {
                    std::str::from_utf8(word).unwrap_or("")
                } else {
                    ""
                };
                (code, text)
            }
        }
    }

    /// The reply's three-digit code (RFC 5321 §4.2), for logs.
    pub fn code(self) -> u16 {
        self.status().0
    }

    /// The complete reply line for kinds whose text never varies.
    pub fn fixed(self) -> &'static [u8] {
        match self {
            Reply::Ok => b"250 2.0.0 Ok\r\n",
            Reply::MailOk => b"250 2.1.0 Ok\r\n",
            Reply::RcptOk => b"250 2.1.5 Ok\r\n",
            Reply::Vrfy => b"252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n",
            Reply::Help => b"214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n",
            Reply::StartData => b"354 End data with <CR><LF>.<CR><LF>\r\n",
            Reply::Bye => b"221 2.0.0 Bye\r\n",
            Reply::ShuttingDown => b"421 4.3.2 Service shutting down\r\n",
            Reply::TooManyConnections => b"421 4.3.2 Too many connections, try again later\r\n",
            Reply::TooManyErrors => b"421 4.7.0 Error: too many errors\r\n",
            Reply::Timeout => b"421 4.4.2 Error: timeout exceeded\r\n",
            Reply::CommitTimeout => b"451 4.3.0 Error: storage did not answer in time\r\n",
            Reply::TooManyRecipients => b"452 4.5.3 Error: too many recipients\r\n",
            Reply::Storage => b"452 4.3.1 Insufficient system storage\r\n",
            Reply::LineTooLong => b"500 5.5.2 Error: line too long\r\n",
            Reply::IllegalChars => b"500 5.5.2 Error: illegal characters in command\r\n",
            Reply::EmptyLine => b"500 5.5.2 Error: bad syntax\r\n",
            Reply::BadSender => b"501 5.1.7 Bad sender address syntax\r\n",
            Reply::BadRecipient => b"501 5.1.3 Bad recipient address syntax\r\n",
            Reply::NotImplemented => b"502 5.5.1 Error: command not implemented\r\n",
            Reply::NeedHelo => b"503 5.5.1 Error: send HELO/EHLO first\r\n",
            Reply::NeedMail => b"503 5.5.1 Error: need MAIL command\r\n",
            Reply::NeedRcpt => b"503 5.5.1 Error: need RCPT command\r\n",
            Reply::NestedMail => b"503 5.5.1 Error: nested MAIL command\r\n",
            Reply::BadSequence => b"503 5.5.1 Error: bad sequence of commands\r\n",
            Reply::DataAfterBdat => b"503 5.5.1 Error: DATA after BDAT in one transaction\r\n",
            Reply::BdatAfterData => b"503 5.5.1 Error: BDAT is not allowed here\r\n",
            Reply::SizeExceeded => b"552 5.3.4 Message size exceeds fixed maximum message size\r\n",
            Reply::MessageTooBig => b"552 5.3.4 Error: message too big\r\n",
            Reply::TextLineTooLong => b"550 5.6.0 Error: message has a text line longer than allowed\r\n",
            Reply::BareLf => b"550 5.5.2 Error: bare <LF> received\r\n",
            Reply::UnsupportedParam => b"555 5.5.4 Unsupported parameter\r\n",
            // RFC 3207 §4 and Postfix's texts.
            Reply::TlsReady => b"220 2.0.0 Ready to start TLS\r\n",
            Reply::TlsActive => b"554 5.5.1 Error: TLS already active\r\n",
            Reply::TlsInTransaction => b"503 5.5.1 Error: MAIL transaction in progress\r\n",
            Reply::TlsRequired => b"530 5.7.0 Must issue a STARTTLS command first\r\n",
            // Postfix's postscreen and smtpd texts.
            Reply::Pregreet => b"554 5.5.1 Error: protocol error\r\n",
            Reply::SlowData => b"421 4.4.2 Error: data arriving too slowly\r\n",
            Reply::SessionTooLong => b"421 4.4.2 Error: session lasted too long\r\n",
            // The remaining kinds carry variable text and are written by `write_*` helpers.
            Reply::Greeting
            | Reply::Helo
            | Reply::Ehlo
            | Reply::Queued
            | Reply::ChunkOk
            | Reply::Unrecognized
            | Reply::Syntax
            | Reply::NonSmtp
            | Reply::RelayDenied
            | Reply::UnknownUser => unreachable!("reply {self:?} has variable text"),
        }
    }
}

/// Appends `500 5.5.1 Command unrecognized: "VERB"`, the verb escaped and cut to 32 characters
/// so that hostile input cannot shape the reply.
pub(crate) fn write_unrecognized(out: &mut Vec<u8>, verb: &[u8]) {
    out.extend_from_slice(b"500 5.5.1 Command unrecognized: \"");
    for &b in verb.iter().take(32) {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            0x21..=0x7e => out.push(b),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.extend_from_slice(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            }
        }
    }
    out.extend_from_slice(b"\"\r\n");
}

/// Appends the refusal of a recipient with Postfix's texts: `554 5.7.1 <addr>: Relay access
/// denied` or `550 5.1.1 <addr>: Recipient address rejected: User unknown`. The address is
/// the client's, so what is not printable ASCII is escaped as `\xNN` (a reply is ASCII unless
/// SMTPUTF8 says otherwise, and a CR or LF would forge reply lines).
pub(crate) fn write_rcpt_refusal(out: &mut Vec<u8>, reply: Reply, address: &[u8]) {
    let (head, tail): (&[u8], &[u8]) = match reply {
        Reply::RelayDenied => (b"554 5.7.1 <", b">: Relay access denied\r\n"),
        _ => (b"550 5.1.1 <", b">: Recipient address rejected: User unknown\r\n"),
    };
    out.extend_from_slice(head);
    for &b in address.iter().take(256) {
        match b {
            0x21..=0x7e => out.push(b),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.extend_from_slice(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            }
        }
    }
    out.extend_from_slice(tail);
}

/// Appends a decimal number without allocating.
pub(crate) fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::Reply;

    #[test]
    fn every_kind_is_listed_once_in_counter_order() {
        for (i, r) in Reply::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        let mut names: Vec<_> = Reply::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reply::COUNT);
        assert_eq!(Reply::TooManyConnections.name(), "too_many_connections");
    }

    #[test]
    fn status_is_the_code_and_enhanced_code_of_the_text() {
        for r in Reply::ALL {
            assert_eq!(r.status(), r.read_status(), "the table is in kind order: {r:?}");
        }
        assert_eq!(Reply::UnknownUser.status(), (550, "5.1.1"));
        assert_eq!(Reply::StartData.status(), (354, ""));
        assert_eq!(Reply::TooManyConnections.status(), (421, "4.3.2"));
        for r in Reply::ALL {
            let (code, enhanced) = r.status();
            assert!((200..600).contains(&code), "{r:?}");
            if let Some(class) = enhanced.bytes().next() {
                assert_eq!(u16::from(class - b'0'), code / 100, "{r:?}");
            }
        }
    }
}
