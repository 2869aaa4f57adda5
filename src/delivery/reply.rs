//! The next hop's replies parsed from its bytes: bounded in line length and line count, so a hostile or broken server cannot grow memory or pass off a malformed code.
//!
//! RFC 5321 §4.2: a reply is one or more lines `code SP text` (the last) or `code - text`
//! (the others), all with the same three-digit code whose first digit is 2 to 5 and second 0
//! to 5 (§4.2.1). A bare LF ends a line too, as real servers send it; the CR is dropped.
//! Sans-IO: [`parse`] takes what has been read and says how much one reply used.

use std::fmt;

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of each line after the code and its separator, joined with `\n`.
    pub text: String,
}

impl Reply {
    /// A reply made up here for what the next hop never said (a refused connection, a
    /// timeout, a capability it lacks), in the same shape.
    pub fn local(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            text: text.into(),
        }
    }

    /// 2, 4 or 5 (3 is an intermediate reply: 354, or 334).
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    pub fn is_positive(&self) -> bool {
        self.class() == 2
    }

    /// The enhanced status code (RFC 3463) at the start of the text, if there is one whose
    /// class matches the reply's.
    pub fn enhanced(&self) -> Option<&str> {
        let word = self.text.split([' ', '\n']).next()?;
        let mut parts = word.split('.');
        let class = parts.next()?;
        let ok = class.len() == 1
            && u16::from(class.as_bytes()[0]).wrapping_sub(u16::from(b'0')) == self.class()
            && parts.clone().count() == 2
            && parts.all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then_some(word)
    }

    /// The enhanced code, or the one the reply's class implies (RFC 3463 §3.1: X.0.0).
    pub fn status(&self) -> String {
        match self.enhanced() {
            Some(code) => code.to_string(),
            None => format!("{}.0.0", self.class()),
        }
    }

    /// The reply on one line (`550 5.1.1 no such user`), for logs, the queue listing and a
    /// notification's `Diagnostic-Code`.
    pub fn one_line(&self) -> String {
        format!("{} {}", self.code, self.text.replace('\n', " "))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// Why bytes from the next hop are not a reply; the connection is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    /// A line longer than `relay_reply_line_max`.
    LineTooLong,
    /// More lines than `relay_reply_lines_max`.
    TooManyLines,
    /// A line that does not start with a valid code and separator, or a code that changes
    /// within one reply.
    Malformed,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplyError::LineTooLong => "reply line too long",
            ReplyError::TooManyLines => "reply has too many lines",
            ReplyError::Malformed => "malformed reply",
        })
    }
}

/// Bounds of one reply.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Octets of a line, its line end included.
    pub line_max: usize,
    pub lines_max: usize,
}

/// The first reply in `input`: `Ok(Some((reply, used)))` when it is complete, `Ok(None)` when
/// more must be read (and nothing seen so far breaks a bound).
pub fn parse(input: &[u8], bounds: Bounds) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut at = 0;
    let mut code = None;
    let mut text = String::new();
    for line_no in 0.. {
        if line_no == bounds.lines_max {
            return Err(ReplyError::TooManyLines);
        }
        let rest = &input[at..];
        let Some(lf) = memchr::memchr(b'\n', rest) else {
            return if rest.len() >= bounds.line_max {
                Err(ReplyError::LineTooLong)
            } else {
                Ok(None)
            };
        };
        if lf + 1 > bounds.line_max {
            return Err(ReplyError::LineTooLong);
        }
        let line = rest[..lf].strip_suffix(b"\r").unwrap_or(&rest[..lf]);
        at += lf + 1;
        let (this, last, body) = split_line(line)?;
        if code.is_some_and(|c| c != this) {
            return Err(ReplyError::Malformed);
        }
        code = Some(this);
        if line_no > 0 {
            text.push('\n');
        }
        text.push_str(&String::from_utf8_lossy(body));
        if last {
            return Ok(Some((Reply { code: this, text }, at)));
        }
    }
    unreachable!("the loop returns")
}

/// A line's code, whether it is the last of its reply, and its text.
fn split_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let digits = line.get(..3).ok_or(ReplyError::Malformed)?;
    let ok = (b'2'..=b'5').contains(&digits[0])
        && (b'0'..=b'5').contains(&digits[1])
        && digits[2].is_ascii_digit();
    if !ok {
        return Err(ReplyError::Malformed);
    }
    let code = digits.iter().fold(0u16, |v, &d| v * 10 + u16::from(d - b'0'));
    match line.get(3) {
        // RFC 5321 §4.2: "250" alone is a last line with no text.
        None => Ok((code, true, &[])),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(ReplyError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds {
        line_max: 512,
        lines_max: 8,
    };

    #[test]
    fn single_and_multi_line_replies() {
        let (r, used) = parse(b"250 2.0.0 Ok\r\nrest", B).unwrap().unwrap();
        assert_eq!((r.code, r.text.as_str(), used), (250, "2.0.0 Ok", 14));
        assert_eq!(r.enhanced(), Some("2.0.0"));
        let (r, used) = parse(b"250-mx.test\r\n250-PIPELINING\n250 CHUNKING\r\n", B)
            .unwrap()
            .unwrap();
        assert_eq!(r.text, "mx.test\nPIPELINING\nCHUNKING");
        assert_eq!(used, 42);
        assert_eq!(parse(b"354\r\n", B).unwrap().unwrap().0.code, 354);
        assert_eq!(parse(b"250-a\r\n250 b", B).unwrap(), None);
        assert_eq!(parse(b"", B).unwrap(), None);
    }

    #[test]
    fn malformed_and_unbounded_replies_are_errors() {
        for bad in [
            &b"25 x\r\n"[..],
            b"650 x\r\n",
            b"2x0 x\r\n",
            b"250x\r\n",
            b"250-a\r\n251 b\r\n",
            b"\r\n",
        ] {
            assert_eq!(parse(bad, B), Err(ReplyError::Malformed), "{bad:?}");
        }
        assert_eq!(parse(&[b'2'; 600], B), Err(ReplyError::LineTooLong));
        let mut long = b"250 ".to_vec();
        long.extend([b'x'; 600]);
        long.extend(b"\r\n");
        assert_eq!(parse(&long, B), Err(ReplyError::LineTooLong));
        assert_eq!(parse(&b"250-x\r\n".repeat(9), B), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn enhanced_codes_must_match_the_class() {
        let r = |code, text: &str| Reply::local(code, text);
        assert_eq!(r(550, "5.1.1 no such user").enhanced(), Some("5.1.1"));
        assert_eq!(r(550, "4.1.1 wrong class").enhanced(), None);
        assert_eq!(r(451, "try later").status(), "4.0.0");
        assert_eq!(r(452, "4.2.2 full\nmore").one_line(), "452 4.2.2 full more");
    }
}
