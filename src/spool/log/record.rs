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
//!
//! An `Extents` payload lists where a message's `Envelope` and `Data` records lie in its
//! segment, so a reader preads them and nothing of the messages interleaved with them: runs of
//! adjacent records as pairs of LEB128 varints, (gap since the previous run's end, or since the
//! segment's start for the first; the run's length), in order, every run non-empty.

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
    /// Just before its `End`: where the message's envelope and data records are (see the
    /// module doc). Optional: segments written before it existed have none, and a message
    /// whose runs outgrow [`MAX_EXTENTS`] is written without.
    Extents = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Segment,
            2 => Kind::Envelope,
            3 => Kind::Data,
            4 => Kind::End,
            5 => Kind::Done,
            6 => Kind::Extents,
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
    /// A whole record whose CRC checks but whose kind this build does not know: one written
    /// by a newer ringmx, never a torn write (that would have to match its CRC32C by chance).
    /// What follows it may be acknowledged mail, so recovery refuses to cut the segment here.
    Unknown(u8),
}

/// The length of the header at the start of `buf` if it frames a plausible record (a kind
/// other than zero, zero padding, a length within [`MAX_PAYLOAD`]); the CRC, and whether the
/// kind is one this build knows, are checked by [`decode`].
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
    if len > MAX_PAYLOAD || buf[8] == 0 || buf[9..12] != [0, 0, 0] {
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
    let kind = Kind::from_u8(buf[8]).ok_or(Stop::Unknown(buf[8]))?;
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

/// The octets of an `End` record (its payload: the size and the data octets, u64 each).
pub const END_RECORD: u64 = (HEADER + 16) as u64;

/// The largest `Extents` payload a writer keeps for one message in flight: about two thousand
/// runs, which a 25 MiB message sent in 16 KiB chunks, each one interleaved, still fits in. It
/// bounds what a message that drips in tiny chunks between others' costs the committer; past
/// it the message is written without its extents and read by walking its span, as before.
pub const MAX_EXTENTS: usize = 16 << 10;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        // The tenth octet may hold only the top bit of a u64.
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A message's own records, noted as they are appended: adjacent ones coalesce into one run,
/// and a run is encoded once the next record lands elsewhere, so a message in flight holds a
/// few octets per run of its records, at most [`MAX_EXTENTS`].
#[derive(Debug, Default)]
pub struct ExtentList {
    encoded: Vec<u8>,
    /// Where the last encoded run ends.
    encoded_end: u64,
    /// The run still growing: its start and end.
    run: Option<(u64, u64)>,
    /// Outgrew [`MAX_EXTENTS`]: the message goes without.
    overflow: bool,
}

impl ExtentList {
    /// Notes records of `octets` at `offset`, just after every record noted before.
    pub fn add(&mut self, offset: u64, octets: u64) {
        if octets == 0 || self.overflow {
            return;
        }
        match &mut self.run {
            Some((_, end)) if *end == offset => *end += octets,
            run => {
                if let Some(done) = run.replace((offset, offset + octets)) {
                    self.close(done);
                }
            }
        }
    }

    fn close(&mut self, (start, end): (u64, u64)) {
        put_varint(&mut self.encoded, start - self.encoded_end);
        put_varint(&mut self.encoded, end - start);
        self.encoded_end = end;
        if self.encoded.len() > MAX_EXTENTS {
            self.overflow = true;
            self.encoded = Vec::new();
        }
    }

    /// The `Extents` payload of what was noted; `None` if it outgrew [`MAX_EXTENTS`] or holds
    /// nothing.
    pub fn payload(&mut self) -> Option<&[u8]> {
        if let Some(run) = self.run.take() {
            if !self.overflow {
                self.close(run);
            }
        }
        (!self.overflow && !self.encoded.is_empty()).then_some(&self.encoded[..])
    }
}

/// Reads the runs of an `Extents` payload one at a time, so a reader keeps the payload and a
/// position rather than a list.
#[derive(Debug, Default, Clone)]
pub struct ExtentCursor {
    pos: usize,
    end: u64,
}

impl ExtentCursor {
    /// The next run of `payload` (start, end); `None` after the last or where it does not parse
    /// ([`ExtentCursor::finished`] tells which).
    pub fn next(&mut self, payload: &[u8]) -> Option<(u64, u64)> {
        let mut pos = self.pos;
        let start = self.end.checked_add(get_varint(payload, &mut pos)?)?;
        let len = get_varint(payload, &mut pos)?;
        let end = start.checked_add(len).filter(|_| len > 0)?;
        (self.pos, self.end) = (pos, end);
        Some((start, end))
    }

    /// Whether every run of `payload` was read.
    pub fn finished(&self, payload: &[u8]) -> bool {
        self.pos == payload.len()
    }
}

/// Whether an `Extents` payload describes a message whose first record is at `first`, whose
/// records before it take `octets`, and which lies before `before` (the `Extents` record's own
/// offset): it parses, its first run starts at `first`, its runs add up to `octets` and end
/// before `before`. With every record in the runs checked as the message's own when read, that
/// makes the runs exactly its records: none missing, none foreign.
pub fn extents_fit(payload: &[u8], first: u64, octets: u64, before: u64) -> bool {
    let mut cursor = ExtentCursor::default();
    let (mut sum, mut last) = (0u64, None);
    while let Some((start, end)) = cursor.next(payload) {
        if last.is_none() && start != first {
            return false;
        }
        sum += end - start;
        last = Some(end);
    }
    cursor.finished(payload) && sum == octets && last.is_some_and(|end| end <= before)
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

    /// Every run read back from an extents payload.
    fn runs(payload: &[u8]) -> Option<Vec<(u64, u64)>> {
        let mut cursor = ExtentCursor::default();
        let mut out = Vec::new();
        while let Some(run) = cursor.next(payload) {
            out.push(run);
        }
        cursor.finished(payload).then_some(out)
    }

    #[test]
    fn extents_coalesce_adjacent_records_and_read_back_as_runs() {
        let mut list = ExtentList::default();
        // An envelope and a data record back to back, others' records, then three more of
        // its own in two runs, the last far into a large segment.
        for (at, len) in [(28, 100), (128, 50), (900, 30), (930, 70), (1 << 40, 1 << 20)] {
            list.add(at, len);
        }
        let payload = list.payload().unwrap().to_vec();
        let want = vec![(28, 178), (900, 1000), (1 << 40, (1 << 40) + (1 << 20))];
        assert_eq!(runs(&payload), Some(want));
        assert!(extents_fit(&payload, 28, 150 + 100 + (1 << 20), 1 << 41));
        // Another first record, other octets, or runs reaching past the extents record.
        assert!(!extents_fit(&payload, 29, 150 + 100 + (1 << 20), 1 << 41));
        assert!(!extents_fit(&payload, 28, 150 + 100 + (1 << 20) - 1, 1 << 41));
        assert!(!extents_fit(&payload, 28, 150 + 100 + (1 << 20), 1 << 40));
        // A cut payload never parses as a whole.
        for cut in 0..payload.len() {
            assert!(
                !extents_fit(&payload[..cut], 28, 150 + 100 + (1 << 20), 1 << 41),
                "cut at {cut}"
            );
        }
        // An empty run, a varint past 64 bits, a run past the end of the offsets.
        assert_eq!(runs(&[5, 0]), None);
        assert_eq!(
            runs(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 1]),
            None
        );
        assert_eq!(
            runs(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1]),
            None
        );
        assert_eq!(ExtentList::default().payload(), None);
    }

    #[test]
    fn a_message_in_more_runs_than_the_bound_goes_without_extents() {
        let mut list = ExtentList::default();
        let mut at = 1u64 << 30;
        while list.encoded.len() <= MAX_EXTENTS - 16 {
            list.add(at, 1 << 14);
            at += 1 << 15;
        }
        assert!(list.payload().is_some());
        let mut list = ExtentList::default();
        for i in 0..MAX_EXTENTS as u64 {
            list.add(i * 100, 50);
        }
        assert_eq!(list.encoded.len(), 0, "what outgrew the bound is given back");
        assert_eq!(list.payload(), None);
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
                assert!(
                    !matches!(decode(&bad), Err(Stop::Unknown(_))),
                    "a torn record of a newer kind"
                );
            }
        }
    }

    #[test]
    fn a_whole_record_of_a_kind_this_build_does_not_know_is_told_from_a_torn_one() {
        let mut buf = Vec::new();
        append(&mut buf, Kind::Data, 7, b"hello");
        buf[8] = 200;
        let crc = crc32c::crc32c(&buf[4..]);
        buf[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(payload_len(&buf), Ok(5));
        assert_eq!(decode(&buf), Err(Stop::Unknown(200)));
        // Its CRC is what tells it from damage: without it, it is corrupt.
        buf[0] ^= 1;
        assert_eq!(decode(&buf), Err(Stop::Corrupt));
        // Kind zero was never assigned: a header with it frames nothing.
        let mut zero = Vec::new();
        append(&mut zero, Kind::Data, 7, b"hello");
        zero[8] = 0;
        assert_eq!(payload_len(&zero), Err(Stop::Corrupt));
    }
}
