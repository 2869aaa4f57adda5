//! What a reply must be: each [`Expect`] judged against a parsed reply and its text, and the reply details the parser leaves out (the exact enhanced code, SIZE, a delayed greeting's first lines).

use memchr::memchr;
use ringmx_loadgen::reply::Reply;

use crate::script::{Enh, Expect};

/// The RFC 3463 enhanced status code opening the text of the reply's first line
/// (`NNN x.y.z text`), if it has one.
pub fn enhanced(reply: &[u8]) -> Option<Enh> {
    let line = &reply[..memchr(b'\n', reply).unwrap_or(reply.len())];
    let text = line.get(4..)?;
    let end = text
        .iter()
        .position(|&b| b == b' ' || b == b'\r')
        .unwrap_or(text.len());
    let mut parts = text[..end].split(|&b| b == b'.');
    let mut num = |max: usize| {
        let p = parts.next()?;
        if p.is_empty() || p.len() > max || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(p).ok()?.parse::<u16>().ok()
    };
    // RFC 3463 2: class is one digit (2, 4 or 5), subject and detail one to three.
    let (class, subject, detail) = (num(1)?, num(3)?, num(3)?);
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some(Enh(class as u8, subject, detail))
}

/// The fixed maximum message size an EHLO reply advertises (RFC 1870 4: `SIZE n`); `None`
/// without the keyword, or with no or a zero limit (no fixed maximum).
pub fn ehlo_size(reply: &[u8]) -> Option<u64> {
    reply.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut words = line.get(4..)?.split(|&b| b == b' ');
        if !words.next()?.eq_ignore_ascii_case(b"SIZE") {
            return None;
        }
        let n: u64 = std::str::from_utf8(words.next()?).ok()?.parse().ok()?;
        (n > 0).then_some(n)
    })
}

/// Octets of the complete `220-` lines at the start of `buf`: what a server holding its
/// greeting back (postscreen's pregreet test) sends before it sees the client talk.
pub fn teaser_len(buf: &[u8]) -> usize {
    let mut at = 0;
    while buf[at..].starts_with(b"220-") {
        match memchr(b'\n', &buf[at..]) {
            Some(lf) => at += lf + 1,
            None => break,
        }
    }
    at
}

/// Whether `reply` (its code, and `text`, its octets) is what `expect` asks for. `saw_452`:
/// the transaction already got a `452` to a recipient. Returns why not.
pub fn judge(expect: Expect, reply: Reply, text: &[u8], saw_452: bool) -> Result<(), &'static str> {
    let class = (reply.code / 100) as u8;
    let exact = |code: u16, enh: Enh| {
        if reply.code != code {
            Err("unexpected reply code")
        } else if enhanced(text) != Some(enh) {
            Err("unexpected enhanced status code")
        } else {
            Ok(())
        }
    };
    match expect {
        Expect::Code(code) if reply.code == code => Ok(()),
        Expect::Class(d) if class == d => Ok(()),
        Expect::FiveOrClose if class == 5 => Ok(()),
        Expect::Status(code, enh) => exact(code, enh),
        Expect::Pregreet if matches!(reply.code, 220 | 554) => Ok(()),
        Expect::Held if reply.code == 421 => Ok(()),
        Expect::OkOrFive if reply.code == 250 || class == 5 => Ok(()),
        Expect::Surplus if reply.code == 250 && saw_452 => Err("250 to a recipient after a 452"),
        Expect::Surplus if reply.code == 250 => Ok(()),
        // RFC 5321 4.5.3.1.10: "452 too many recipients"; RFC 3463 X.5.3.
        Expect::Surplus => exact(452, Enh(4, 5, 3)),
        Expect::Close => Err("a reply where the server must close"),
        _ => Err("unexpected reply code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmx_loadgen::reply::{parse_reply, Parse};

    fn reply(text: &[u8]) -> Reply {
        match parse_reply(text) {
            Parse::Complete(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn ok(expect: Expect, text: &[u8], saw_452: bool) -> bool {
        judge(expect, reply(text), text, saw_452).is_ok()
    }

    #[test]
    fn enhanced_codes_exactly() {
        assert_eq!(
            enhanced(b"554 5.7.1 <a@b>: Relay access denied\r\n"),
            Some(Enh(5, 7, 1))
        );
        assert_eq!(
            enhanced(b"250-2.0.0 first\r\n250 2.1.0 second\r\n"),
            Some(Enh(2, 0, 0))
        );
        assert_eq!(enhanced(b"452 4.5.3\r\n"), Some(Enh(4, 5, 3)));
        assert_eq!(enhanced(b"550 5.100.100 x\r\n"), Some(Enh(5, 100, 100)));
        for bad in [
            b"550 user unknown\r\n".as_slice(),
            b"550 5.1 x\r\n",
            b"550 5.1.1.1 x\r\n",
            b"550 3.1.1 x\r\n",
            b"550 5.1000.1 x\r\n",
            b"550\r\n",
        ] {
            assert_eq!(enhanced(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn size_from_ehlo() {
        let r = b"250-mx\r\n250-PIPELINING\r\n250-SIZE 10240\r\n250 8BITMIME\r\n";
        assert_eq!(ehlo_size(r), Some(10240));
        assert_eq!(ehlo_size(b"250-mx\r\n250 size 77\r\n"), Some(77));
        assert_eq!(ehlo_size(b"250-mx\r\n250 SIZE\r\n"), None, "no fixed maximum");
        assert_eq!(ehlo_size(b"250-mx\r\n250 SIZE 0\r\n"), None);
        assert_eq!(ehlo_size(b"250-mx\r\n250 PIPELINING\r\n"), None);
        assert_eq!(
            ehlo_size(b"250 SIZE 5\r\n"),
            None,
            "the greeting line is no keyword"
        );
    }

    #[test]
    fn teaser_lines() {
        assert_eq!(teaser_len(b"220-mx ESMTP\r\n554 5.5.1 no\r\n"), 14);
        assert_eq!(teaser_len(b"220-a\r\n220-b\r\n220 c\r\n"), 14);
        assert_eq!(teaser_len(b"220-incomplete"), 0);
        assert_eq!(teaser_len(b"554 5.5.1 no\r\n"), 0);
    }

    #[test]
    fn verdicts() {
        let relay = Expect::Status(554, Enh(5, 7, 1));
        assert!(ok(relay, b"554 5.7.1 <x@y>: Relay access denied\r\n", false));
        assert!(!ok(relay, b"554 5.7.0 nope\r\n", false), "must be 5.7.1");
        assert!(!ok(relay, b"554 no code\r\n", false));
        assert!(!ok(relay, b"550 5.7.1 wrong code\r\n", false));
        assert!(ok(
            Expect::Pregreet,
            b"554 5.5.1 Error: protocol error\r\n",
            false
        ));
        assert!(ok(Expect::Pregreet, b"220 mx ESMTP\r\n", false));
        assert!(!ok(Expect::Pregreet, b"250 hello\r\n", false));
        assert!(ok(Expect::Held, b"421 4.4.2 Error: timeout exceeded\r\n", false));
        assert!(!ok(Expect::Held, b"500 5.5.2 line too long\r\n", false));
        assert!(ok(Expect::OkOrFive, b"250 2.0.0 Ok\r\n", false));
        assert!(ok(Expect::OkOrFive, b"550 5.5.2 bare LF\r\n", false));
        assert!(!ok(Expect::OkOrFive, b"451 4.3.0 later\r\n", false));
        assert!(ok(Expect::Surplus, b"250 2.1.5 Ok\r\n", false));
        assert!(
            !ok(Expect::Surplus, b"250 2.1.5 Ok\r\n", true),
            "no 250 after a 452"
        );
        assert!(ok(
            Expect::Surplus,
            b"452 4.5.3 Error: too many recipients\r\n",
            false
        ));
        assert!(ok(
            Expect::Surplus,
            b"452 4.5.3 Error: too many recipients\r\n",
            true
        ));
        assert!(!ok(Expect::Surplus, b"452 4.3.1 storage\r\n", false));
        assert!(!ok(Expect::Surplus, b"550 5.1.1 unknown\r\n", false));
        assert!(!ok(Expect::Close, b"221 bye\r\n", false));
        assert!(ok(Expect::Code(250), b"250 ok\r\n", false));
        assert!(ok(Expect::Class(5), b"554 x\r\n", false));
        assert!(ok(Expect::FiveOrClose, b"554 x\r\n", false));
    }
}
