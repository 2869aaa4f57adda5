//! The PROXY protocol header a connection starts with (`--proxy`): haproxy's v1 text line and v2 binary header, and the source addresses they name (`--proxy-sources`).
//!
//! Spec: haproxy's "The PROXY protocol, Versions 1 & 2" (doc/proxy-protocol.txt). Headers
//! are written into a fixed buffer per connection, so starting a session allocates nothing.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest header written: a v1 line is at most 107 octets with its CRLF (spec 2.1); a v2
/// header for TCP over IPv6 is 16 + 36 = 52.
pub const MAX_HEADER: usize = 107;

/// The v2 signature (spec 2.2): `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The spread of client addresses when `--proxy-sources` is not given: the three IPv4
/// documentation networks (RFC 5737) and the IPv6 one's first /48 (RFC 3849), drawn from
/// network by network. IPv6 spans a /48 so that its addresses fall in many /64s, which
/// servers count as one client each.
pub const DEFAULT_SOURCES: &str = "192.0.2.0/24,198.51.100.0/24,203.0.113.0/24,2001:db8::/48";

/// One network of `--proxy-sources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub base: IpAddr,
    pub prefix: u8,
}

/// The networks PROXY source addresses are drawn from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources(pub Vec<Net>);

/// Parse a comma-separated CIDR list (`192.0.2.0/24,2001:db8::/48`; a bare address is a
/// /32 or /128). Host bits in a base address are an error, as they usually mean a typo.
pub fn parse_sources(s: &str) -> Result<Sources, String> {
    let mut out = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (addr, prefix) = match part.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (part, None),
        };
        let base: IpAddr = addr.parse().map_err(|_| format!("bad address in {part:?}"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| format!("bad prefix in {part:?}"))?,
            None => max,
        };
        if prefix > max {
            return Err(format!("prefix of {part:?} exceeds {max}"));
        }
        if host_bits(base, prefix) != 0 {
            return Err(format!("{part:?} has host bits set"));
        }
        out.push(Net { base, prefix });
    }
    if out.is_empty() {
        return Err("empty --proxy-sources".into());
    }
    Ok(Sources(out))
}

fn host_bits(ip: IpAddr, prefix: u8) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)) & (u128::from(u32::MAX) >> prefix),
        IpAddr::V6(a) => u128::from(a) & u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0),
    }
}

impl Sources {
    /// An address drawn with two random words: the network by the first, the host inside it
    /// by the second, avoiding the all-zeros and all-ones hosts where the network has more.
    pub fn pick(&self, r1: u64, r2: u64) -> IpAddr {
        let net = self.0[(((r1 >> 32) * self.0.len() as u64) >> 32) as usize];
        let bits = if net.base.is_ipv4() { 32 } else { 128 } - u32::from(net.prefix);
        if bits == 0 {
            return net.base;
        }
        let r = (u128::from(r1) << 64) | u128::from(r2);
        let size_minus_one = u128::MAX >> (128 - bits);
        let host = if bits >= 2 {
            // 1..=size-2
            1 + r % (size_minus_one - 1)
        } else {
            r & size_minus_one
        };
        match net.base {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) | host as u32)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) | host)),
        }
    }
}

/// Both ends in one family: where they differ the IPv4 one becomes IPv4-mapped IPv6
/// (RFC 4291 2.5.5.2), since a header carries one family for both (spec 2.1, 2.2).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// Spec 2.1: `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n`. Returns the octets written.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr, out: &mut [u8; MAX_HEADER]) -> usize {
    let (src, dst) = same_family(src, dst);
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    let mut w = &mut out[..];
    let total = w.len();
    // The longest line (TCP6, two 39-octet addresses, two 5-digit ports) is 104 octets.
    write!(
        w,
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .expect("a v1 line fits in 107 octets");
    total - w.len()
}

/// Spec 2.2: signature, version 2 with command PROXY (0x21), TCP over IPv4 (0x11) or
/// IPv6 (0x21), the address block's length, then source and destination addresses and
/// ports in network order. Returns the octets written (28 or 52).
pub fn encode_v2(src: SocketAddr, dst: SocketAddr, out: &mut [u8; MAX_HEADER]) -> usize {
    let (src, dst) = same_family(src, dst);
    out[..12].copy_from_slice(&V2_SIGNATURE);
    out[12] = 0x21;
    let mut at = 16;
    let mut put = |b: &[u8]| {
        out[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    };
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put(&s.octets());
            put(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            put(&s.octets());
            put(&d.octets());
        }
        _ => unreachable!("same_family made both ends one family"),
    }
    put(&src.port().to_be_bytes());
    put(&dst.port().to_be_bytes());
    out[13] = if src.is_ipv4() { 0x11 } else { 0x21 };
    let len = (at - 16) as u16;
    out[14..16].copy_from_slice(&len.to_be_bytes());
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_lines() {
        let mut b = [0; MAX_HEADER];
        let n = encode_v1(sa("192.0.2.7:40000"), sa("127.0.0.1:2525"), &mut b);
        assert_eq!(&b[..n], b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 2525\r\n");
        let n = encode_v1(sa("[2001:db8::5]:1024"), sa("[::1]:25"), &mut b);
        assert_eq!(&b[..n], b"PROXY TCP6 2001:db8::5 ::1 1024 25\r\n");
        // Mixed families: the IPv4 end is written IPv4-mapped.
        let n = encode_v1(sa("[2001:db8::5]:1024"), sa("127.0.0.1:25"), &mut b);
        assert_eq!(&b[..n], b"PROXY TCP6 2001:db8::5 ::ffff:127.0.0.1 1024 25\r\n");
        // The spec's worst case for TCP6 still fits.
        let wide = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let n = encode_v1(sa(wide), sa(wide), &mut b);
        assert_eq!(n, 104);
        assert!(b[..n].ends_with(b" 65535 65535\r\n"));
    }

    #[test]
    fn v2_ipv4_layout() {
        let mut b = [0; MAX_HEADER];
        let n = encode_v2(sa("192.0.2.7:40000"), sa("127.0.0.1:2525"), &mut b);
        assert_eq!(n, 28);
        let mut want = V2_SIGNATURE.to_vec();
        // version 2 / PROXY, AF_INET / STREAM, 12 octets of addresses.
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
        want.extend_from_slice(&[192, 0, 2, 7, 127, 0, 0, 1]);
        want.extend_from_slice(&[0x9C, 0x40, 0x09, 0xDD]);
        assert_eq!(&b[..n], &want[..]);
    }

    #[test]
    fn v2_ipv6_layout() {
        let mut b = [0; MAX_HEADER];
        let n = encode_v2(sa("[2001:db8::5]:1024"), sa("127.0.0.1:25"), &mut b);
        assert_eq!(n, 52);
        assert_eq!(&b[..12], &V2_SIGNATURE);
        // AF_INET6 / STREAM, 36 octets.
        assert_eq!(&b[12..16], &[0x21, 0x21, 0x00, 0x24]);
        let mut src = [0u8; 16];
        src[..2].copy_from_slice(&[0x20, 0x01]);
        src[2..4].copy_from_slice(&[0x0d, 0xb8]);
        src[15] = 5;
        assert_eq!(&b[16..32], &src);
        let mut dst = [0u8; 16];
        dst[10..12].copy_from_slice(&[0xff, 0xff]);
        dst[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(&b[32..48], &dst);
        assert_eq!(&b[48..52], &[0x04, 0x00, 0x00, 0x19]);
    }

    #[test]
    fn sources_parse_and_pick_inside() {
        let s = parse_sources(DEFAULT_SOURCES).unwrap();
        assert_eq!(s.0.len(), 4);
        assert!(parse_sources("192.0.2.1/24").is_err(), "host bits");
        assert!(parse_sources("192.0.2.0/33").is_err());
        assert!(parse_sources("nope").is_err());
        assert!(parse_sources("").is_err());
        assert_eq!(
            parse_sources("198.51.100.9").unwrap().0[0],
            Net {
                base: "198.51.100.9".parse().unwrap(),
                prefix: 32
            }
        );
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut seen = [0u32; 4];
        let mut v6_nets = std::collections::HashSet::new();
        for _ in 0..4000 {
            let ip = s.pick(next(), next());
            let i =
                s.0.iter()
                    .position(|n| match (n.base, ip) {
                        (IpAddr::V4(b), IpAddr::V4(a)) => u32::from(a) >> 8 == u32::from(b) >> 8,
                        (IpAddr::V6(b), IpAddr::V6(a)) => u128::from(a) >> 80 == u128::from(b) >> 80,
                        _ => false,
                    })
                    .unwrap_or_else(|| panic!("{ip} outside the sources"));
            seen[i] += 1;
            match ip {
                IpAddr::V4(a) => assert!(!matches!(a.octets()[3], 0 | 255), "{a}"),
                IpAddr::V6(a) => {
                    v6_nets.insert(u128::from(a) >> 64);
                }
            }
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert!(v6_nets.len() > 900, "IPv6 sources spread over many /64s");
        let one = parse_sources("203.0.113.5/32").unwrap();
        assert_eq!(one.pick(next(), next()), "203.0.113.5".parse::<IpAddr>().unwrap());
    }
}
