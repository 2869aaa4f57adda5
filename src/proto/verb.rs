//! Recognizes SMTP verbs without allocating (the verb is upper-cased and packed into a `u64`) and checks a command line's octets.

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
    /// RFC 3207; answered 502 like the verbs below while no certificate is configured.
    StartTls,
    /// Known verbs that ringmx does not offer (EXPN, TURN, ETRN, ATRN, SEND, SOML, SAML, AUTH,
    /// BURL): answered 502 (RFC 5321 §4.2.4).
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
        STARTTLS => Verb::StartTls,
        EXPN | TURN | ETRN | ATRN | SEND | SOML | SAML | AUTH | BURL => Verb::NotOffered,
        _ => return None,
    })
}

/// Whether a command line holds control characters (other than HT) or octets above 0x7f, eight
/// bytes at a time (RFC 5321 §4.1.1: commands are printable US-ASCII).
pub fn scan_octets(line: &[u8]) -> (bool, bool) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let (mut low, mut high) = (0u64, 0u64);
    let mut chunks = line.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // A byte below 0x20 borrows in `x - 0x20…`; DEL is a zero byte of `x ^ 0x7f…`.
        low |= (x.wrapping_sub(0x20 * ONES) & !x)
            | ((x ^ (0x7f * ONES)).wrapping_sub(ONES) & !(x ^ (0x7f * ONES)));
        high |= x;
    }
    let tail = chunks.remainder();
    let eight_bit = high & HIGH != 0 || tail.iter().any(|&b| b >= 0x80);
    let control = (low & HIGH != 0 || tail.iter().any(|&b| b < 0x20 || b == 0x7f))
        // The word test cannot tell HT from other controls; HT is allowed, so look closer.
        && line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f);
    (control, eight_bit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn octet_scan_matches_the_definition(line in proptest::collection::vec(any::<u8>(), 0..40)) {
            let control = line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f);
            let eight_bit = line.iter().any(|&b| b >= 0x80);
            prop_assert_eq!(scan_octets(&line), (control, eight_bit));
        }
    }

    #[test]
    fn case_insensitive_and_exact() {
        assert_eq!(lookup(b"ehlo"), Some(Verb::Ehlo));
        assert_eq!(lookup(b"EhLo"), Some(Verb::Ehlo));
        assert_eq!(lookup(b"StartTLS"), Some(Verb::StartTls));
        assert_eq!(lookup(b"HLEO"), None);
        assert_eq!(lookup(b"EHLOX"), None);
        assert_eq!(lookup(b"EHL"), None);
        assert_eq!(lookup(b"STARTTLSX"), None);
        assert_eq!(lookup(b"E@LO"), None);
        assert_eq!(lookup(b""), None);
    }
}
