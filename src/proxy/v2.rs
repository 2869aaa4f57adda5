//! The binary v2 header (§2.2): a 16-octet fixed part, then as many octets as its length says.

use super::{starts, Origin, ProxyError, Short};
use std::net::{IpAddr, SocketAddr};

/// The 12-octet signature; its NUL and its QUIT make it fail on every text protocol (§5, §6).
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part: signature, version and command, family and protocol, length.
const FIXED: usize = 16;

/// Parses a v2 header, or as much of it as `input` holds.
pub(super) fn parse(input: &[u8], max_v2: usize) -> Result<(Origin, usize), Short> {
    if !starts(input, SIGNATURE)? {
        return Err(ProxyError::NotProxy.into());
    }
    // The 13th octet: version 2 in the high nibble, LOCAL (0) or PROXY (1) in the low one;
    // "Receivers must drop connections presenting unexpected values here".
    let local = match input.get(12) {
        None => return Err(Short::Incomplete),
        Some(0x20) => true,
        Some(0x21) => false,
        Some(_) => return Err(ProxyError::BadV2.into()),
    };
    let Some(&family) = input.get(13) else {
        return Err(Short::Incomplete);
    };
    let addresses = if local { Block::Ignored } else { Block::of(family)? };
    let Some(&[high, low]) = input.get(14..FIXED) else {
        return Err(Short::Incomplete);
    };
    // "the length of the protocol header in bytes is always exactly 16 + this value".
    let length = usize::from(u16::from_be_bytes([high, low]));
    if length < addresses.len() {
        return Err(ProxyError::BadV2.into());
    }
    let len = FIXED + length;
    if len > max_v2 {
        return Err(ProxyError::TooLong.into());
    }
    // "The receiver must not start to parse an address before the whole address block is
    // received": the TLVs after the addresses are skipped with them.
    let Some(block) = input.get(FIXED..len) else {
        return Err(Short::Incomplete);
    };
    let origin = match addresses {
        Block::Ignored => Some(Origin::Local),
        Block::Inet => endpoints::<4>(block),
        Block::Inet6 => endpoints::<16>(block),
    };
    Ok((origin.ok_or(ProxyError::BadV2)?, len))
}

/// What a PROXY header's address block holds, from its family and protocol octet.
#[derive(Clone, Copy)]
enum Block {
    /// LOCAL, or an unspecified family or protocol: the block is skipped.
    Ignored,
    /// TCP over IPv4: two 4-octet addresses, two ports.
    Inet,
    /// TCP over IPv6: two 16-octet addresses, two ports.
    Inet6,
}

impl Block {
    fn of(family: u8) -> Result<Block, ProxyError> {
        match (family >> 4, family & 0x0f) {
            // "other values are unspecified ... and must be rejected as invalid by receivers".
            (4.., _) | (_, 3..) => Err(ProxyError::BadV2),
            (0, _) | (_, 0) => Ok(Block::Ignored),
            (1, 1) => Ok(Block::Inet),
            (2, 1) => Ok(Block::Inet6),
            // AF_UNIX or DGRAM: see the module's decisions.
            _ => Err(ProxyError::UnsupportedFamily),
        }
    }

    /// The octets the address block must hold at least.
    fn len(self) -> usize {
        match self {
            Block::Ignored => 0,
            Block::Inet => 2 * 4 + 2 * 2,
            Block::Inet6 => 2 * 16 + 2 * 2,
        }
    }
}

/// Source address, destination address, source port, destination port, in network order;
/// `None` if `block` is shorter than that (which `parse` has ruled out from the length).
fn endpoints<const N: usize>(block: &[u8]) -> Option<Origin>
where
    IpAddr: From<[u8; N]>,
{
    let (source, rest) = block.split_first_chunk::<N>()?;
    let (destination, rest) = rest.split_first_chunk::<N>()?;
    let (&[s0, s1, d0, d1], _) = rest.split_first_chunk::<4>()?;
    Some(Origin::Proxied {
        source: SocketAddr::new(IpAddr::from(*source), u16::from_be_bytes([s0, s1])),
        destination: SocketAddr::new(IpAddr::from(*destination), u16::from_be_bytes([d0, d1])),
    })
}
