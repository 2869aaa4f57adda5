//! The text v1 header (§2.1): `PROXY TCP4|TCP6 source destination sport dport\r\n`, or `PROXY UNKNOWN …\r\n`.

use super::{starts, Origin, ProxyError, Short};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// "If the CRLF sequence is not found in the first 107 characters, the receiver should declare
/// the line invalid" (the `UNKNOWN` worst case, CRLF included).
const MAX_LINE: usize = 107;
/// The longest address `inet_ntop` writes: 15 for `255.255.255.255`, 45 (INET6_ADDRSTRLEN
/// less its NUL) for `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`.
const MAX_V4: usize = 15;
const MAX_V6: usize = 45;
/// Endings that make a valid address of any viable prefix of one (see `viable`).
const COMPLETIONS: [&[u8]; 9] = [
    b"", b"0", b":", b"::", b".0", b"0.0", b".0.0", b"0.0.0", b".0.0.0",
];

/// Parses a v1 line, or as much of it as `input` holds.
pub(super) fn parse(input: &[u8]) -> Result<(Origin, usize), Short> {
    let mut line = Line {
        text: &input[..input.len().min(MAX_LINE)],
        at: 0,
    };
    match line.parse() {
        // The first 107 octets are all there and the line goes on past them.
        Err(Short::Incomplete) if input.len() >= MAX_LINE => Err(ProxyError::TooLong.into()),
        parsed => parsed,
    }
}

/// A cursor over the first 107 octets of the connection.
struct Line<'a> {
    text: &'a [u8],
    at: usize,
}

impl Line<'_> {
    fn parse(&mut self) -> Result<(Origin, usize), Short> {
        if !starts(self.text, b"PROXY")? {
            return Err(ProxyError::NotProxy.into());
        }
        self.at = 5;
        self.expect(b" ")?;
        if self.word(b"UNKNOWN")? {
            return self.unknown();
        }
        let v6 = if self.word(b"TCP4 ")? {
            false
        } else if self.word(b"TCP6 ")? {
            true
        } else {
            return Err(ProxyError::BadV1.into());
        };
        // "The advertised protocol family dictates what format to use" for both addresses.
        let source = self.address(v6)?;
        let destination = self.address(v6)?;
        let source_port = self.port(b' ')?;
        let destination_port = self.port(b'\r')?;
        self.expect(b"\n")?;
        let origin = Origin::Proxied {
            source: SocketAddr::new(source, source_port),
            destination: SocketAddr::new(destination, destination_port),
        };
        Ok((origin, self.at))
    }

    fn rest(&self) -> &[u8] {
        self.text.get(self.at..).unwrap_or_default()
    }

    /// Steps over `word` if it is next.
    fn word(&mut self, word: &[u8]) -> Result<bool, Short> {
        let found = starts(self.rest(), word)?;
        if found {
            self.at += word.len();
        }
        Ok(found)
    }

    fn expect(&mut self, word: &[u8]) -> Result<(), Short> {
        if self.word(word)? {
            Ok(())
        } else {
            Err(ProxyError::BadV1.into())
        }
    }

    /// The rest of an `UNKNOWN` line, ignored up to its CRLF.
    fn unknown(&mut self) -> Result<(Origin, usize), Short> {
        let rest = self.rest();
        match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
            None => Err(Short::Incomplete),
            Some(end) if rest[end] == b'\r' => {
                self.at += end + 1;
                self.expect(b"\n")?;
                Ok((Origin::Local, self.at))
            }
            Some(_) => Err(ProxyError::BadV1.into()),
        }
    }

    /// An address of the family and the single space after it.
    fn address(&mut self, v6: bool) -> Result<IpAddr, Short> {
        let rest = self.rest();
        let allowed = |b: u8| {
            if v6 {
                b.is_ascii_hexdigit() || b == b':' || b == b'.'
            } else {
                b.is_ascii_digit() || b == b'.'
            }
        };
        let max = if v6 { MAX_V6 } else { MAX_V4 };
        let n = rest.iter().take(max + 1).take_while(|&&b| allowed(b)).count();
        let token = &rest[..n];
        match rest.get(n) {
            _ if n > max => Err(ProxyError::BadV1.into()),
            None if viable(token, v6) => Err(Short::Incomplete),
            Some(b' ') => {
                let address = ip(token, v6).ok_or(ProxyError::BadV1)?;
                self.at += n + 1;
                Ok(address)
            }
            _ => Err(ProxyError::BadV1.into()),
        }
    }

    /// A port and the octet after it: decimal 0-65535, "Heading zeroes are not permitted".
    fn port(&mut self, end: u8) -> Result<u16, Short> {
        let mut port: u16 = 0;
        for (i, &b) in self.rest().iter().enumerate() {
            if b == end && i > 0 {
                self.at += i + 1;
                return Ok(port);
            }
            // A digit after a leading 0 would be a heading zero.
            if !b.is_ascii_digit() || (i > 0 && port == 0) {
                return Err(ProxyError::BadV1.into());
            }
            port = port
                .checked_mul(10)
                .and_then(|p| p.checked_add(u16::from(b - b'0')))
                .ok_or(ProxyError::BadV1)?;
        }
        Err(Short::Incomplete)
    }
}

/// The address `token` spells, in the syntax of std's parsers (RFC 4291 §2.2 text for IPv6,
/// dotted IPv4 without leading zeros).
fn ip(token: &[u8], v6: bool) -> Option<IpAddr> {
    let text = std::str::from_utf8(token).ok()?;
    if v6 {
        text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// Whether some address starts with `token`, checked once per call at the end of the input
/// rather than per octet. Whatever a viable prefix ends in (a hex group, a colon, part of a
/// dotted quad), one of `COMPLETIONS` ends it validly: `::` after a group closes an
/// uncompressed address, `:` after a colon starts the `::`, `0` fills an empty group or the
/// last octet, and the dotted ones fill the missing octets of an embedded IPv4 address.
fn viable(token: &[u8], v6: bool) -> bool {
    let mut text = [0u8; MAX_V6];
    token.is_empty()
        || COMPLETIONS.iter().any(|ending| {
            let n = token.len() + ending.len();
            n <= text.len() && {
                text[..token.len()].copy_from_slice(token);
                text[token.len()..n].copy_from_slice(ending);
                ip(&text[..n], v6).is_some()
            }
        })
}
