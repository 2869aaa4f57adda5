//! Recognizes other protocols on the SMTP port (HTTP, SSH, TLS, binary data), so they get one `554 5.5.0` and a hang-up instead of a stream of `500`s.
//!
//! Binary means what no text protocol sends: NUL, control characters other than HT, CR and
//! LF, DEL, or an 8-bit first octet. A printable word that is no SMTP verb is a typo, not
//! another protocol: it gets `500 5.5.1` and the session goes on, first line or not (the
//! reference text: a misspelled or unknown verb is answered 500).

/// A class of non-SMTP traffic, answered with one `554 5.5.0` and a hang-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NonSmtp {
    /// An HTTP request line (`GET / HTTP/1.1`, `POST`, `CONNECT`, …), at any point.
    Http,
    /// An HTTP header line (`Host: x`) before the first SMTP command.
    Header,
    /// An SSH identification string (RFC 4253 §4.2), at any point.
    Ssh,
    /// A TLS handshake record on this plain port, before the first SMTP command.
    Tls,
    /// NUL, control characters or an 8-bit first octet before the first SMTP command.
    Binary,
}

impl NonSmtp {
    /// Number of classes, for counter arrays.
    pub const COUNT: usize = NonSmtp::Binary as usize + 1;
    /// Every class, in counter order.
    pub const ALL: [NonSmtp; NonSmtp::COUNT] = [
        NonSmtp::Http,
        NonSmtp::Header,
        NonSmtp::Ssh,
        NonSmtp::Tls,
        NonSmtp::Binary,
    ];

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            NonSmtp::Http => "http",
            NonSmtp::Header => "http_header",
            NonSmtp::Ssh => "ssh",
            NonSmtp::Tls => "tls",
            NonSmtp::Binary => "binary",
        }
    }

    /// The `554` that ends the session.
    pub(crate) fn reply(self) -> &'static [u8] {
        match self {
            NonSmtp::Http => b"554 5.5.0 Error: HTTP request on an SMTP port\r\n",
            NonSmtp::Header => b"554 5.5.0 Error: HTTP header on an SMTP port\r\n",
            NonSmtp::Ssh => b"554 5.5.0 Error: SSH on an SMTP port\r\n",
            NonSmtp::Tls => b"554 5.5.0 Error: TLS handshake on a plain SMTP port\r\n",
            NonSmtp::Binary => b"554 5.5.0 Error: binary data on an SMTP port\r\n",
        }
    }
}

/// Classifies the bytes of a line before the client has spoken SMTP, without waiting for its
/// end: a TLS record or binary data may never send a line end. `line_start` says whether
/// `bytes` begins the line.
pub(crate) fn sniff(line_start: bool, bytes: &[u8]) -> Option<NonSmtp> {
    if line_start {
        match bytes.first() {
            // A TLS handshake record (RFC 8446 §5.1: content type 22).
            Some(0x16) => return Some(NonSmtp::Tls),
            // No text protocol starts a line with an 8-bit octet.
            Some(&b) if b >= 0x80 => return Some(NonSmtp::Binary),
            _ => {}
        }
    }
    let binary = bytes
        .iter()
        .any(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f);
    binary.then_some(NonSmtp::Binary)
}

const HTTP_METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// Recognizes a complete line of another protocol: an HTTP request line or an SSH banner at
/// any point, and an HTTP header line (`Name: value`) before the client has spoken SMTP.
pub(crate) fn classify_line(line: &[u8], spoke_smtp: bool) -> Option<NonSmtp> {
    if HTTP_METHODS.iter().any(|m| line.starts_with(m)) {
        return Some(NonSmtp::Http);
    }
    if line.starts_with(b"SSH-") {
        return Some(NonSmtp::Ssh);
    }
    if !spoke_smtp {
        let name_end = line
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'-'));
        if name_end.is_some_and(|end| end > 0 && line[end] == b':') {
            return Some(NonSmtp::Header);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_words_are_not_binary() {
        for line in [
            &b"XYZZY"[..],
            b"FOO1",
            b"LHLO x",
            b"{\"jsonrpc\":\"2.0\"}",
            b"1234",
        ] {
            assert_eq!(sniff(true, line), None, "{}", String::from_utf8_lossy(line));
            assert_eq!(classify_line(line, false), None);
        }
    }

    #[test]
    fn binary_is_nul_controls_or_an_eight_bit_start() {
        assert_eq!(sniff(true, b"\x00abc"), Some(NonSmtp::Binary));
        assert_eq!(sniff(false, b"ab\x01c"), Some(NonSmtp::Binary));
        assert_eq!(sniff(true, b"\x7f"), Some(NonSmtp::Binary));
        assert_eq!(sniff(true, b"\xc3\xa9t\xc3\xa9"), Some(NonSmtp::Binary));
        assert_eq!(
            sniff(false, b"a\xc3\xa9"),
            None,
            "8-bit inside a line is for 500 to judge"
        );
        assert_eq!(sniff(true, b"\x16\x03\x01"), Some(NonSmtp::Tls));
        assert_eq!(sniff(true, b"EHLO x\t\r\n"), None);
    }

    #[test]
    fn other_protocols_by_their_first_line() {
        assert_eq!(classify_line(b"GET / HTTP/1.1", true), Some(NonSmtp::Http));
        assert_eq!(classify_line(b"SSH-2.0-OpenSSH_9.6", true), Some(NonSmtp::Ssh));
        assert_eq!(classify_line(b"Host: example", false), Some(NonSmtp::Header));
        assert_eq!(classify_line(b"Host: example", true), None, "after SMTP: a typo");
    }
}
