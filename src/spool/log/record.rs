//! The log's unit of storage: a framed record (CRC32C, length, kind, message number) and the binary envelope a message starts with.
//!
//! A record is a 20-octet header followed by its payload, little-endian:
//!
//! ```text
//! 0   u32  CRC32C of octets 4.. (the rest of the header and the payload)
//! 4   u32  payload length
//! 8   u8   kind
//! 9   [3]  zero
//! 12  u64  message number, local to the segment (0: the segment's own header)
//! 20  ...  payload
//! ```
//!
//! A preallocated segment reads as zeros past its last record, and an all-zero header fails
//! its CRC (CRC32C of zeros is not zero), so the first header that does not check is where the
//! log ends: either its clean end, or a torn or corrupt tail.

use super::super::{MessageMeta, TlsInfo};
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, UNIX_EPOCH};

pub const HEADER: usize = 20;

/// The largest payload a record may have: body chunks are cut to this, so a length beyond it
/// is corruption, and a scan never allocates more than this for one record.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What a segment's first record says: the format, and which segment this is.
pub const MAGIC: &[u8; 12] = b"ringmx-log-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The segment's first record: [`MAGIC`] and its sequence number.
    Segment = 1,
    /// A message begins: its envelope ([`encode_envelope`]).
    Envelope = 2,
    /// Octets of the stored message (the `Received:` header first, then the body).
    Data = 3,
    /// The message is complete: its size without the trace header (u64). The commit marker.
    End = 4,
    /// In a segment's done file: recipients of a message done (u32 indices), or, with no
    /// payload, the whole message.
    Done = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Segment,
            2 => Kind::Envelope,
            3 => Kind::Data,
            4 => Kind::End,
            5 => Kind::Done,
            _ => return None,
        })
    }
}

/// Appends one record to `out`.
pub fn append(out: &mut Vec<u8>, kind: Kind, msg: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&msg.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The size of a record with `payload` octets.
pub fn framed(payload: usize) -> usize {
    HEADER + payload
}

/// A record read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: Kind,
    pub msg: u64,
    pub payload: &'a [u8],
}

/// Why a scan stopped where it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Fewer than a header's octets left, or only zeros: the log's clean end.
    End,
    /// A header or payload that does not check: a torn write or corruption.
    Corrupt,
    /// A header that checks but whose payload is cut off by the end of the data.
    Short,
}

/// The length of the header at the start of `buf` if it frames a plausible record (a known
/// kind, zero padding, a length within [`MAX_PAYLOAD`]); the CRC is checked by [`decode`].
pub fn payload_len(buf: &[u8]) -> Result<usize, Stop> {
    if buf.len() < HEADER {
        return Err(if buf.iter().all(|&b| b == 0) {
            Stop::End
        } else {
            Stop::Corrupt
        });
    }
    if buf[..HEADER].iter().all(|&b| b == 0) {
        return Err(Stop::End);
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 octets")) as usize;
    if len > MAX_PAYLOAD || Kind::from_u8(buf[8]).is_none() || buf[9..12] != [0, 0, 0] {
        return Err(Stop::Corrupt);
    }
    Ok(len)
}

/// The message number in a record's header (checked by [`decode`] with the rest).
pub fn header_msg(header: &[u8; HEADER]) -> u64 {
    u64::from_le_bytes(header[12..20].try_into().expect("8 octets"))
}

/// Decodes the record at the start of `buf`, which must hold all of it.
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), Stop> {
    let len = payload_len(buf)?;
    if buf.len() < HEADER + len {
        return Err(Stop::Short);
    }
    let crc = u32::from_le_bytes(buf[0..4].try_into().expect("4 octets"));
    if crc32c::crc32c(&buf[4..HEADER + len]) != crc {
        return Err(Stop::Corrupt);
    }
    let kind = Kind::from_u8(buf[8]).ok_or(Stop::Corrupt)?;
    let msg = u64::from_le_bytes(buf[12..20].try_into().expect("8 octets"));
    Ok((
        Record {
            kind,
            msg,
            payload: &buf[HEADER..HEADER + len],
        },
        HEADER + len,
    ))
}

/// The payload of a segment's first record.
pub fn segment_payload(seq: u64) -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(&seq.to_le_bytes());
    p
}

/// The sequence number in a segment's first record, if it is one.
pub fn parse_segment(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(MAGIC.as_slice())?;
    Some(u64::from_le_bytes(rest.try_into().ok()?))
}

fn put_bytes16(out: &mut Vec<u8>, b: &[u8]) {
    // Every field is bounded far below 64 KiB by the protocol limits (a command line is 512
    // octets); a longer one would be a bug, and is cut rather than misframed.
    let b = &b[..b.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

const FLAG_ESMTP: u8 = 1;
const FLAG_SMTPUTF8: u8 = 2;
const FLAG_TLS: u8 = 4;
const FLAG_SNI: u8 = 8;

/// The envelope of a message as a record payload.
pub fn encode_envelope(meta: &MessageMeta, out: &mut Vec<u8>) {
    put_bytes16(out, meta.id.as_bytes());
    put_bytes16(out, &meta.helo);
    let mut flags = 0;
    if meta.esmtp {
        flags |= FLAG_ESMTP;
    }
    if meta.smtputf8 {
        flags |= FLAG_SMTPUTF8;
    }
    if let Some(tls) = &meta.tls {
        flags |= FLAG_TLS;
        if tls.sni.is_some() {
            flags |= FLAG_SNI;
        }
    }
    out.push(flags);
    match meta.client.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&meta.client.port().to_le_bytes());
    put_bytes16(out, &meta.mail_from);
    put_bytes16(out, &meta.mail_params);
    let micros = meta
        .received
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    out.extend_from_slice(&micros.to_le_bytes());
    out.extend_from_slice(&(meta.recipients.len() as u32).to_le_bytes());
    for r in &meta.recipients {
        put_bytes16(out, r);
    }
    if let Some(tls) = &meta.tls {
        put_bytes16(out, tls.version.as_bytes());
        put_bytes16(out, tls.cipher.as_bytes());
        if let Some(sni) = &tls.sni {
            put_bytes16(out, sni.as_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes16()?.to_vec()).ok()
    }
}

/// The TLS names the server writes are `'static`; read back, they are borrowed again when
/// they are one of rustls's, so a message read from the log compares equal to one received.
fn known(name: String) -> Cow<'static, str> {
    const VERSIONS: [&str; 2] = ["TLSv1.2", "TLSv1.3"];
    if let Some(v) = VERSIONS.iter().find(|v| **v == name) {
        return Cow::Borrowed(v);
    }
    rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .filter_map(|s| s.suite().as_str())
        .find(|s| *s == name)
        .map_or(Cow::Owned(name), Cow::Borrowed)
}

/// The envelope back from a record payload; `None` if it does not parse (a bug or damage
/// the CRC did not catch: the message is reported, not trusted).
pub fn decode_envelope(payload: &[u8]) -> Option<MessageMeta> {
    let mut r = Reader(payload);
    let id = r.string()?;
    let helo = r.bytes16()?.to_vec();
    let flags = r.u8()?;
    let ip = match r.u8()? {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(r.take(4)?).ok()?)),
        6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(r.take(16)?).ok()?)),
        _ => return None,
    };
    let client = SocketAddr::new(ip, r.u16()?);
    let mail_from = r.bytes16()?.to_vec();
    let mail_params = r.bytes16()?.to_vec();
    let received = UNIX_EPOCH + Duration::from_micros(r.u64()?);
    let count = r.u32()? as usize;
    // Each recipient takes at least its two length octets: a count beyond that is damage.
    if count > r.0.len() / 2 {
        return None;
    }
    let mut recipients = Vec::with_capacity(count);
    for _ in 0..count {
        recipients.push(r.bytes16()?.to_vec());
    }
    let tls = if flags & FLAG_TLS != 0 {
        let version = known(r.string()?);
        let cipher = known(r.string()?);
        let sni = if flags & FLAG_SNI != 0 {
            Some(r.string()?)
        } else {
            None
        };
        Some(TlsInfo { version, cipher, sni })
    } else {
        None
    };
    if !r.0.is_empty() {
        return None;
    }
    Some(MessageMeta {
        id,
        helo,
        esmtp: flags & FLAG_ESMTP != 0,
        smtputf8: flags & FLAG_SMTPUTF8 != 0,
        client,
        mail_from,
        mail_params,
        recipients,
        received,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(tls: bool) -> MessageMeta {
        MessageMeta {
            id: "0ABC".into(),
            helo: b"client.example".to_vec(),
            esmtp: true,
            smtputf8: false,
            client: "[2001:db8::1]:4000".parse().unwrap(),
            mail_from: b"a@b.example".to_vec(),
            mail_params: b"SIZE=10 BODY=8BITMIME".to_vec(),
            recipients: vec![b"c@d.example".to_vec(), b"e@f.example".to_vec()],
            received: UNIX_EPOCH + Duration::from_micros(1_795_919_104_123_456),
            tls: tls.then(|| TlsInfo {
                version: Cow::Borrowed("TLSv1.3"),
                cipher: Cow::Borrowed("TLS13_AES_256_GCM_SHA384"),
                sni: Some("mx.test".into()),
            }),
        }
    }

    #[test]
    fn envelopes_round_trip_with_and_without_tls() {
        for tls in [false, true] {
            let m = meta(tls);
            let mut p = Vec::new();
            encode_envelope(&m, &mut p);
            let back = decode_envelope(&p).unwrap();
            assert_eq!(format!("{back:?}"), format!("{m:?}"));
            for cut in 0..p.len() {
                assert!(decode_envelope(&p[..cut]).is_none(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn records_check_their_crc_and_a_zero_region_is_the_end() {
        let mut buf = Vec::new();
        append(&mut buf, Kind::Data, 7, b"hello");
        let (rec, used) = decode(&buf).unwrap();
        assert_eq!(
            (rec.kind, rec.msg, rec.payload, used),
            (Kind::Data, 7, &b"hello"[..], 25)
        );
        assert_eq!(decode(&buf[..24]), Err(Stop::Short));
        assert_eq!(decode(&[0; 64]), Err(Stop::End));
        assert_eq!(decode(&[0; 7]), Err(Stop::End));
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "flip of bit {bit} in octet {i} passed");
            }
        }
    }
}
