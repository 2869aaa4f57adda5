//! Incremental SMTP reply parsing: cuts complete (possibly multi-line) replies out of a byte stream.
//!
//! RFC 5321 4.2: a reply is one or more lines `NNN-text` ending with a line `NNN text`
//! (or just `NNN`), all lines carrying the same code. Replies can arrive split across
//! reads, or several in one read when commands were pipelined (RFC 2920), so the parser
//! works on whatever is buffered and reports how many bytes a complete reply used.

use memchr::memchr;

/// Longest reply line accepted. RFC 5321 4.5.3.1.5 allows 512 octets; some servers send
/// longer EHLO lines, so allow generous slack before calling the stream garbage.
pub const MAX_REPLY_LINE: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// First digit of the first RFC 3463 enhanced status code found in the reply, if any.
    pub enhanced_class: Option<u8>,
    /// Bytes of the buffer this reply occupies, CRLFs included.
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    Complete(Reply),
    /// More bytes are needed.
    Incomplete,
    /// The bytes are not an SMTP reply.
    Invalid(&'static str),
}

fn line_code(line: &[u8]) -> Option<u16> {
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    // RFC 5321 4.2.1: first digit 2..5 (1yz is unused in SMTP), second 0..5.
    if !(b'2'..=b'5').contains(&line[0]) {
        return None;
    }
    Some(u16::from(line[0] - b'0') * 100 + u16::from(line[1] - b'0') * 10 + u16::from(line[2] - b'0'))
}

/// RFC 3463: `class.subject.detail`, class 2, 4 or 5, subject and detail 1-3 digits.
fn enhanced_class(text: &[u8]) -> Option<u8> {
    let class = *text.first()?;
    if !matches!(class, b'2' | b'4' | b'5') || text.get(1) != Some(&b'.') {
        return None;
    }
    let mut i = 2;
    for part in 0..2 {
        let start = i;
        while i < text.len() && text[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 3 {
            return None;
        }
        if part == 0 {
            if text.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    match text.get(i) {
        None | Some(b' ') | Some(b'\r') | Some(b'\n') => Some(class - b'0'),
        _ => None,
    }
}

/// Parse the first complete reply in `buf`.
pub fn parse_reply(buf: &[u8]) -> Parse {
    let mut pos = 0;
    let mut code = 0u16;
    let mut enhanced = None;
    loop {
        let Some(lf) = memchr(b'\n', &buf[pos..]) else {
            if buf.len() - pos > MAX_REPLY_LINE {
                return Parse::Invalid("reply line too long");
            }
            return Parse::Incomplete;
        };
        let end = pos + lf + 1;
        let mut line = &buf[pos..pos + lf];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        let Some(c) = line_code(line) else {
            return Parse::Invalid("line does not start with a reply code");
        };
        if pos == 0 {
            code = c;
        } else if c != code {
            return Parse::Invalid("reply code changes inside a multi-line reply");
        }
        if enhanced.is_none() && line.len() > 4 {
            enhanced = enhanced_class(&line[4..]);
        }
        match line.get(3) {
            None | Some(b' ') => {
                return Parse::Complete(Reply {
                    code,
                    enhanced_class: enhanced,
                    len: end,
                })
            }
            Some(b'-') => pos = end,
            Some(_) => return Parse::Invalid("fourth character is neither space nor hyphen"),
        }
    }
}

/// Service extensions from an EHLO reply (RFC 5321 4.1.1.1) that change how we talk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Caps {
    pub pipelining: bool,
    pub chunking: bool,
    pub enhancedstatuscodes: bool,
    pub starttls: bool,
}

/// Scan a complete EHLO reply for the keywords we care about.
pub fn ehlo_caps(reply: &[u8]) -> Caps {
    let mut caps = Caps::default();
    for line in reply.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() < 5 {
            continue;
        }
        let kw = line[4..].split(|&b| b == b' ').next().unwrap_or(&[]);
        if kw.eq_ignore_ascii_case(b"PIPELINING") {
            caps.pipelining = true;
        } else if kw.eq_ignore_ascii_case(b"CHUNKING") {
            caps.chunking = true;
        } else if kw.eq_ignore_ascii_case(b"ENHANCEDSTATUSCODES") {
            caps.enhancedstatuscodes = true;
        } else if kw.eq_ignore_ascii_case(b"STARTTLS") {
            caps.starttls = true;
        }
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> Reply {
        match parse_reply(buf) {
            Parse::Complete(r) => r,
            other => panic!("expected a complete reply from {buf:?}, got {other:?}"),
        }
    }

    #[test]
    fn single_line() {
        let r = complete(b"220 mx.example ESMTP\r\n");
        assert_eq!(r.code, 220);
        assert_eq!(r.enhanced_class, None);
        assert_eq!(r.len, 22);
        assert_eq!(complete(b"250\r\n").code, 250);
    }

    #[test]
    fn multi_line_ehlo_and_caps() {
        let buf = b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-chunking\r\n250 ENHANCEDSTATUSCODES\r\n";
        let r = complete(buf);
        assert_eq!(r.code, 250);
        assert_eq!(r.len, buf.len());
        let c = ehlo_caps(&buf[..r.len]);
        assert!(c.pipelining && c.chunking && c.enhancedstatuscodes);
        let c = ehlo_caps(b"250-mx.example\r\n250 8BITMIME\r\n");
        assert_eq!(c, Caps::default());
        // The greeting line's domain is not a keyword, even if it looks like one.
        assert!(!ehlo_caps(b"250 PIPELINING\r\n").pipelining);
    }

    #[test]
    fn split_across_reads() {
        let full = b"250-first\r\n250 2.0.0 second\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse_reply(&full[..cut]), Parse::Incomplete, "cut at {cut}");
        }
        let r = complete(full);
        assert_eq!(r.len, full.len());
        assert_eq!(
            r.enhanced_class,
            Some(2),
            "enhanced code is taken from the first line carrying one"
        );
    }

    #[test]
    fn several_in_one_read() {
        let buf = b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n";
        let mut pos = 0;
        let mut codes = vec![];
        while pos < buf.len() {
            let r = complete(&buf[pos..]);
            codes.push((r.code, r.enhanced_class));
            pos += r.len;
        }
        assert_eq!(codes, vec![(250, Some(2)), (250, Some(2)), (354, None)]);
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(complete(b"550 5.1.1 no such user\r\n").enhanced_class, Some(5));
        assert_eq!(complete(b"451 4.3.0 later\r\n").enhanced_class, Some(4));
        assert_eq!(complete(b"250 2.0.0\r\n").enhanced_class, Some(2));
        assert_eq!(complete(b"250 2.0.0x\r\n").enhanced_class, None);
        assert_eq!(complete(b"250 2.0\r\n").enhanced_class, None);
        assert_eq!(complete(b"250 2.1234.0 x\r\n").enhanced_class, None);
        assert_eq!(complete(b"250 3.0.0 x\r\n").enhanced_class, None);
        // A mismatching class is reported as found: the caller compares it to the code.
        assert_eq!(complete(b"250 5.5.1 odd\r\n").enhanced_class, Some(5));
    }

    #[test]
    fn bare_lf_is_tolerated() {
        let r = complete(b"250-a\n250 b\n");
        assert_eq!((r.code, r.len), (250, 12));
    }

    #[test]
    fn invalid() {
        assert!(matches!(parse_reply(b"HTTP/1.1 400 Bad\r\n"), Parse::Invalid(_)));
        assert!(matches!(parse_reply(b"250-a\r\n251 b\r\n"), Parse::Invalid(_)));
        assert!(matches!(parse_reply(b"250xa\r\n"), Parse::Invalid(_)));
        assert!(matches!(parse_reply(b"150 x\r\n"), Parse::Invalid(_)));
        let long = vec![b'2'; MAX_REPLY_LINE + 10];
        assert!(matches!(parse_reply(&long), Parse::Invalid(_)));
    }
}
