//! Recognizes SMTP verbs without allocating: the verb is upper-cased and packed into a `u64`.

/// A recognized command verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    /// Known verbs that ringmx does not offer (EXPN, TURN, ETRN, ATRN, SEND, SOML, SAML, AUTH,
    /// BURL, STARTTLS while TLS is not configured): answered 502 (RFC 5321 §4.2.4).
    NotOffered,
}

/// Packs up to eight bytes into a big-endian `u64`, upper-casing ASCII letters. Returns `None`
/// for a word longer than eight bytes or containing anything but letters: no SMTP verb does.
const fn pack(word: &[u8]) -> Option<u64> {
    if word.is_empty() || word.len() > 8 {
        return None;
    }
    let mut v = 0u64;
    let mut i = 0;
    while i < word.len() {
        let b = word[i];
        if !b.is_ascii_alphabetic() {
            return None;
        }
        v = (v << 8) | (b & !0x20) as u64;
        i += 1;
    }
    Some(v)
}

const fn k(word: &[u8]) -> u64 {
    match pack(word) {
        Some(v) => v,
        None => panic!("not a verb"),
    }
}

const HELO: u64 = k(b"HELO");
const EHLO: u64 = k(b"EHLO");
const MAIL: u64 = k(b"MAIL");
const RCPT: u64 = k(b"RCPT");
const DATA: u64 = k(b"DATA");
const BDAT: u64 = k(b"BDAT");
const RSET: u64 = k(b"RSET");
const NOOP: u64 = k(b"NOOP");
const QUIT: u64 = k(b"QUIT");
const VRFY: u64 = k(b"VRFY");
const HELP: u64 = k(b"HELP");
const EXPN: u64 = k(b"EXPN");
const TURN: u64 = k(b"TURN");
const ETRN: u64 = k(b"ETRN");
const ATRN: u64 = k(b"ATRN");
const SEND: u64 = k(b"SEND");
const SOML: u64 = k(b"SOML");
const SAML: u64 = k(b"SAML");
const AUTH: u64 = k(b"AUTH");
const BURL: u64 = k(b"BURL");
const STARTTLS: u64 = k(b"STARTTLS");

/// Looks a verb up; `None` means unrecognized (500 5.5.1).
pub fn lookup(word: &[u8]) -> Option<Verb> {
    Some(match pack(word)? {
        HELO => Verb::Helo,
        EHLO => Verb::Ehlo,
        MAIL => Verb::Mail,
        RCPT => Verb::Rcpt,
        DATA => Verb::Data,
        BDAT => Verb::Bdat,
        RSET => Verb::Rset,
        NOOP => Verb::Noop,
        QUIT => Verb::Quit,
        VRFY => Verb::Vrfy,
        HELP => Verb::Help,
        EXPN | TURN | ETRN | ATRN | SEND | SOML | SAML | AUTH | BURL | STARTTLS => Verb::NotOffered,
        _ => return None,
    })
}

/// Whether a line may begin with this byte in an SMTP or a classifiable non-SMTP session: the
/// first letters of SMTP verbs, of HTTP methods and of an SSH banner, and white space. Any
/// other first byte, before the client has spoken SMTP, marks the connection as binary.
pub fn plausible_first_byte(b: u8) -> bool {
    matches!(
        b.to_ascii_uppercase(),
        b'A' | b'B'
            | b'C'
            | b'D'
            | b'E'
            | b'G'
            | b'H'
            | b'M'
            | b'N'
            | b'O'
            | b'P'
            | b'Q'
            | b'R'
            | b'S'
            | b'T'
            | b'V'
            | b' '
            | b'\t'
            | b'\r'
            | b'\n'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_insensitive_and_exact() {
        assert_eq!(lookup(b"ehlo"), Some(Verb::Ehlo));
        assert_eq!(lookup(b"EhLo"), Some(Verb::Ehlo));
        assert_eq!(lookup(b"StartTLS"), Some(Verb::NotOffered));
        assert_eq!(lookup(b"HLEO"), None);
        assert_eq!(lookup(b"EHLOX"), None);
        assert_eq!(lookup(b"EHL"), None);
        assert_eq!(lookup(b"STARTTLSX"), None);
        assert_eq!(lookup(b"E@LO"), None);
        assert_eq!(lookup(b""), None);
    }
}
