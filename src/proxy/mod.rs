//! Parses the PROXY protocol header (HAProxy's spec, versions 1 and 2) that a load balancer sends before the SMTP bytes: the connection's first octets in, the client's addresses and the header's length out.
//!
//! `parse` is stateless: the caller offers the whole prefix received so far and, on
//! `Incomplete`, offers it again once more octets have arrived. Nothing is consumed until
//! `Complete`. Every octet is checked as it arrives, so a prefix that can no longer become a
//! header is an error at once (§2.1: "abort the connection as soon as possible"), and a client
//! cannot hold the connection by dribbling octets: a v1 line is capped at 107 octets (§2.1),
//! a v2 header at the caller's `max_v2` from its 16th octet on (§2.2). The one late decision:
//! a TCP6 line whose long addresses leave its ports no room in 107 octets is refused at its
//! 107th octet, not at the address that made it so.
//!
//! Cost: a few comparisons per octet, no allocation, no panic on any input (the fuzz target
//! `proxy` checks that). A v1 line is rescanned from its start on each call, at most 107
//! octets, plus at most nine std address parses of at most 45 octets when the input ends
//! inside an address (see `v1::viable`); a v2 header costs its 16-octet fixed part and a copy
//! of its addresses, whatever its length: the TLVs after them are skipped by that length.
//!
//! Decisions where the spec leaves the receiver a choice:
//! - v2 `PROXY` with an `AF_UNSPEC` family or `UNSPEC` protocol is `Local`: §2.2 lets the
//!   receiver "accept the connection anyway and use the real endpoint addresses".
//! - v2 `PROXY` over `AF_UNIX` or `DGRAM` is `UnsupportedFamily`. §2.2 lets a receiver fall
//!   back to UNSPEC mode, which may reject; an SMTP session has no meaning over UDP, and a
//!   UNIX-socket client has no IP address, so taking the balancer's own address for it would
//!   credit the balancer's trust (relay networks) to a client it relayed.
//! - v2 `LOCAL` ignores the family octet and the address block, whatever they hold (§2.2: "discard
//!   the protocol block including the family which is ignored").
//! - v1 ports are decimal 0-65535 without leading zeros (§2.1: "Heading zeroes are not
//!   permitted"); so are TCP4's dotted quads. A TCP6 address is any RFC 4291 §2.2 text
//!   (groups of one to four hex digits in either case, one `::`), a dotted IPv4 ending
//!   included (`::ffff:192.0.2.1`), which is how `inet_ntop` writes a v4-mapped client. Both
//!   addresses must be of the line's family; they are reported as written (a v4-mapped
//!   address stays IPv6).
//! - v1 `UNKNOWN` is `Local` whatever follows it on the line (§2.1: "the receiver must ignore
//!   anything presented before the CRLF"), but a CR in it must start the CRLF and an LF must
//!   end it (§2.1: "must not tolerate a single CR or LF character to end the line").
//! - v2 TLVs are skipped unread: §2.2 lets the receiver "skip over and ignore those bytes", and
//!   nothing here uses them.

mod v1;
mod v2;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

/// What the header said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A proxied TCP connection: the real client (source) and the address it connected to
    /// (destination).
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v1 `UNKNOWN` or v2 `LOCAL` (health checks, the balancer's own connections), or v2
    /// `PROXY` with an unspecified family: keep the socket's own addresses.
    Local,
}

/// The outcome of a parse that found no error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Need more bytes (nothing is consumed; call again with the longer prefix).
    Incomplete,
    /// A complete header of `len` octets (the caller drops them; what follows is SMTP).
    Complete { origin: Origin, len: usize },
}

/// Why the start of a connection is no acceptable PROXY header; the connection is to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ProxyError {
    /// Neither `PROXY` (v1) nor the v2 signature: the client speaks something else, SMTP
    /// perhaps, to a port configured for PROXY (§2.2's last rule: "the connection must be dropped").
    NotProxy,
    /// A v1 line that breaks §2.1's grammar: a word, space, address, port or line end.
    BadV1,
    /// A v2 header with a version other than 2, a command other than LOCAL or PROXY, an
    /// undefined family or protocol, or a length shorter than its address block (§2.2).
    BadV2,
    /// A v1 line without its CRLF in 107 octets (§2.1), or a v2 header longer than `max_v2`.
    TooLong,
    /// A v2 PROXY header for a UNIX-socket or datagram connection (see the module's decisions).
    UnsupportedFamily,
}

impl ProxyError {
    /// Number of causes, for counter arrays.
    pub const COUNT: usize = ProxyError::UnsupportedFamily as usize + 1;
    /// Every cause, in counter order.
    pub const ALL: [ProxyError; ProxyError::COUNT] = [
        ProxyError::NotProxy,
        ProxyError::BadV1,
        ProxyError::BadV2,
        ProxyError::TooLong,
        ProxyError::UnsupportedFamily,
    ];

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ProxyError::NotProxy => "not_proxy",
            ProxyError::BadV1 => "bad_v1",
            ProxyError::BadV2 => "bad_v2",
            ProxyError::TooLong => "too_long",
            ProxyError::UnsupportedFamily => "unsupported_family",
        }
    }
}

/// Parses the start of a connection. `max_v2` caps the v2 header (16 + length) the caller
/// accepts (a config limit; the spec allows up to 16 + 65535). Decides as early as possible:
/// a prefix that can no longer become a valid header is an error at once.
pub fn parse(input: &[u8], max_v2: usize) -> Result<Parsed, ProxyError> {
    // §2.2 tells the versions apart by their first octets: "PROXY" or the v2 signature.
    let scanned = match input.first() {
        None => Err(Short::Incomplete),
        Some(b'P') => v1::parse(input),
        Some(b'\r') => v2::parse(input, max_v2),
        Some(_) => Err(Short::Bad(ProxyError::NotProxy)),
    };
    match scanned {
        Ok((origin, len)) => Ok(Parsed::Complete { origin, len }),
        Err(Short::Incomplete) => Ok(Parsed::Incomplete),
        Err(Short::Bad(error)) => Err(error),
    }
}

/// Why a scan stopped before the end of a header; lets the scanners use `?` for both.
enum Short {
    /// The input ended where the header may still go on.
    Incomplete,
    Bad(ProxyError),
}

impl From<ProxyError> for Short {
    fn from(error: ProxyError) -> Short {
        Short::Bad(error)
    }
}

/// Compares `input` with the start of `expected` over their common length: `Ok(true)` when
/// `expected` is all there, `Incomplete` when `input` is a shorter prefix of it.
fn starts(input: &[u8], expected: &[u8]) -> Result<bool, Short> {
    let n = input.len().min(expected.len());
    if input[..n] != expected[..n] {
        Ok(false)
    } else if n < expected.len() {
        Err(Short::Incomplete)
    } else {
        Ok(true)
    }
}
