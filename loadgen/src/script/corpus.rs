//! Every octet sessions send, rendered once before the run: commands, recipients, messages of the chosen sizes, the probes of each class.

use std::fmt::Write as _;

use ringmx_loadgen::dot_stuff;

use super::rng::{normal_quantile, Rng};
use super::Piece;
use crate::cli::Config;
use crate::vocab::SizeDist;

/// Valid recipients are `user{i}@--rcpt-domain` for i in `0..RCPT_POOL` (a server's
/// recipients table must list them all); a message with n recipients uses consecutive
/// ones, the overshoot class all of them.
pub const RCPT_POOL: usize = 150;
/// The unknown_user class's recipients: `loadgen-unknown-{i}@--rcpt-domain`, i in `0..16`.
pub const UNKNOWN_POOL: usize = 16;
pub(super) const LONG_CMD_LENS: [usize; 8] = [513, 600, 1000, 1025, 2048, 3000, 4095, 4096];
/// The slowloris command line: 510 octets, a CRLF short of RFC 5321's 512-octet limit
/// (4.5.3.1.4), so only the missing line end, never its length, is the server's problem.
const SLOW_LINE: usize = 510;
/// The slowloris message body: longer than any drip lasts at its interval.
const SLOW_BODY: usize = 64 * 1024;

/// The smuggle class's end-of-data variants (`\n.\n`, `\r\n.\n`, `\n.\r\n`): what ends the
/// text line before the dot and what follows it.
const SMUGGLE_ENDS: [(&str, &str); 3] = [("\n", "\n"), ("\r\n", "\n"), ("\n", "\r\n")];

/// Everything sessions send, rendered once.
pub struct Corpus {
    ehlo: Vec<u8>,
    mail: Vec<u8>,
    rcpts: Vec<Vec<u8>>,
    unknown: Vec<Vec<u8>>,
    relay_rcpt: Vec<u8>,
    bodies: Vec<Vec<u8>>,
    bdats: Vec<Vec<u8>>,
    typos: [Vec<u8>; 4],
    long_cmds: Vec<Vec<u8>>,
    long_body: Vec<u8>,
    nonsmtp: [Vec<u8>; 4],
    smuggle: [Vec<u8>; 3],
    drips: [Vec<u8>; 2],
}

const TEXT: &[u8] = b"the quick brown fox jumps over the lazy dog while ringmx measures every reply ";

/// Render a message of exactly `size` octets: RFC 5322 headers, then text lines of at
/// most 78 characters, every seventh starting with '.' so dot-stuffing is exercised.
pub fn render_message(size: usize, n: usize) -> Vec<u8> {
    let mut head = String::new();
    let _ = write!(
        head,
        "From: <sender@loadgen.example>\r\nTo: <user0@example.com>\r\n\
         Subject: ringmx-loadgen message {n}\r\nMessage-ID: <{n}.loadgen@example.com>\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n"
    );
    let mut out = head.into_bytes();
    out.truncate(size.saturating_sub(2));
    let mut line_no = 0usize;
    while out.len() < size {
        let remaining = size - out.len();
        let mut take = remaining.min(40 + (line_no * 7) % 39 + 2);
        if remaining - take == 1 {
            // Never leave a single octet: it could not form a CRLF-terminated line.
            take = if take > 2 { take - 1 } else { take + 1 };
        }
        let content = take - 2;
        for i in 0..content {
            let b = if i == 0 && line_no % 7 == 3 {
                b'.'
            } else {
                TEXT[(i + line_no) % TEXT.len()]
            };
            out.push(b);
        }
        out.extend_from_slice(b"\r\n");
        line_no += 1;
    }
    out
}

fn client_hello() -> Vec<u8> {
    // A minimal TLS 1.2 ClientHello record: what a client doing implicit TLS on port 25 sends.
    let mut hello = vec![0x03, 0x03];
    hello.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    hello.extend_from_slice(&[0x00, 0x00, 0x02, 0xc0, 0x2f, 0x01, 0x00, 0x00, 0x00]);
    let mut hs = vec![0x01, 0x00, 0x00, hello.len() as u8];
    hs.extend(hello);
    let mut rec = vec![0x16, 0x03, 0x01, 0x00, hs.len() as u8];
    rec.extend(hs);
    rec
}

/// The sizes of the messages rendered for `--msg-size lo:hi`. Uniform: 32 log-uniform
/// draws (8 above 1 MiB). Log-normal: ln(size) ~ N(mu, sigma) with the median at the
/// geometric mean sqrt(lo * hi) and lo, hi at -3 and +3 sigma (sigma = ln(hi / lo) / 6),
/// taken at the midpoints of equal-probability strata, so each message is equally likely
/// and the set follows the distribution from its first to its last stratum (64 messages,
/// 16 above 4 MiB), clamped to lo..=hi.
pub fn message_sizes(lo: usize, hi: usize, dist: SizeDist, rng: &mut Rng) -> Vec<usize> {
    if lo == hi {
        return vec![lo];
    }
    let (l, h) = (lo as f64, hi as f64);
    let sizes: Vec<f64> = match dist {
        SizeDist::Uniform => {
            let count = if hi > (1 << 20) { 8 } else { 32 };
            (0..count)
                .map(|_| {
                    let f = f64::from(rng.below(1 << 20)) / f64::from(1u32 << 20);
                    l * (h / l).powf(f)
                })
                .collect()
        }
        SizeDist::Lognormal => {
            let count = if hi > (4 << 20) { 16 } else { 64 };
            let (mu, sigma) = ((l.ln() + h.ln()) / 2.0, (h / l).ln() / 6.0);
            (0..count)
                .map(|k| (mu + sigma * normal_quantile((k as f64 + 0.5) / count as f64)).exp())
                .collect()
        }
    };
    sizes
        .into_iter()
        .map(|s| (s.round() as usize).clamp(lo, hi))
        .collect()
}

/// The smuggle class's body: a short message whose text ends with bare-LF end-of-data
/// variant `v`, then a whole second transaction, then the real `<CRLF>.<CRLF>` (RFC 5321
/// 4.1.1.4: only that ends the data). Sent as is: no dot-stuffing, or the variant's dot
/// would be doubled.
fn smuggle_body(v: usize, rcpt_domain: &str) -> Vec<u8> {
    let (before, after) = SMUGGLE_ENDS[v];
    format!(
        "From: <sender@loadgen.example>\r\nTo: <user0@{rcpt_domain}>\r\nSubject: smuggle probe {v}\r\n\r\n\
         the next line is a dot ended by a bare LF, then a second transaction{before}.{after}\
         MAIL FROM:<smuggled@loadgen.example>\r\nRCPT TO:<user1@{rcpt_domain}>\r\nDATA\r\n\
         Subject: smuggled\r\n\r\nthis must not be a message of its own\r\n.\r\n"
    )
    .into_bytes()
}

impl Corpus {
    pub fn new(cfg: &Config) -> Corpus {
        let mut rng = Rng::new(cfg.seed ^ 0xB0D1E5);
        let sizes = message_sizes(cfg.msg_size.0, cfg.msg_size.1, cfg.msg_size_dist, &mut rng);
        let raws: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| render_message(size, i))
            .collect();
        let bodies = raws.iter().map(|r| dot_stuff(r)).collect();
        let bdats = raws
            .iter()
            .map(|r| {
                let mut v = format!("BDAT {} LAST\r\n", r.len()).into_bytes();
                v.extend_from_slice(r);
                v
            })
            .collect();
        let mut long_body = render_message(600, 999);
        // RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with CRLF; this one is 1202.
        long_body.extend(std::iter::repeat_n(b'x', 1200));
        long_body.extend_from_slice(b"\r\nend\r\n");
        let long_cmds = LONG_CMD_LENS
            .iter()
            .map(|&len| {
                let mut v = b"NOOP ".to_vec();
                v.resize(len - 2, b'x');
                v.extend_from_slice(b"\r\n");
                v
            })
            .collect();
        let mut binary: Vec<u8> = (0..254).map(|_| (rng.next() >> 56) as u8 | 0x80).collect();
        binary.extend_from_slice(b"\r\n");
        let mut slow_line = b"NOOP ".to_vec();
        slow_line.resize(SLOW_LINE, b'x');
        let slow_body = dot_stuff(&render_message(SLOW_BODY, 998));
        let d = &cfg.rcpt_domain;
        Corpus {
            ehlo: b"EHLO loadgen.ringmx.test\r\n".to_vec(),
            mail: b"MAIL FROM:<sender@loadgen.example>\r\n".to_vec(),
            rcpts: (0..RCPT_POOL)
                .map(|i| format!("RCPT TO:<user{i}@{d}>\r\n").into_bytes())
                .collect(),
            unknown: (0..UNKNOWN_POOL)
                .map(|i| format!("RCPT TO:<loadgen-unknown-{i}@{d}>\r\n").into_bytes())
                .collect(),
            relay_rcpt: format!("RCPT TO:<user0@{}>\r\n", cfg.relay_domain).into_bytes(),
            bodies,
            bdats,
            typos: [
                b"HLEO loadgen.ringmx.test\r\n".to_vec(),
                b"MIAL FROM:<sender@loadgen.example>\r\n".to_vec(),
                format!("RCTP TO:<user0@{d}>\r\n").into_bytes(),
                b"DTAA\r\n".to_vec(),
            ],
            long_cmds,
            long_body: dot_stuff(&long_body),
            nonsmtp: [
                b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: loadgen\r\n\r\n".to_vec(),
                b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
                client_hello(),
                binary,
            ],
            smuggle: [smuggle_body(0, d), smuggle_body(1, d), smuggle_body(2, d)],
            // The body without its final `.` line: the end of data never comes.
            drips: [slow_line, slow_body[..slow_body.len() - 3].to_vec()],
        }
    }

    pub fn bytes(&self, p: Piece) -> &[u8] {
        match p {
            // Dripped by the worker's timer and rendered per worker: not in a write.
            Piece::Nothing | Piece::Drip(_) | Piece::BigMail | Piece::BigBody => b"",
            Piece::Ehlo => &self.ehlo,
            Piece::Mail => &self.mail,
            Piece::Rcpt(i) => &self.rcpts[usize::from(i)],
            Piece::Unknown(i) => &self.unknown[usize::from(i)],
            Piece::RelayRcpt => &self.relay_rcpt,
            Piece::Data => b"DATA\r\n",
            Piece::Body(i) => &self.bodies[i as usize],
            Piece::Bdat(i) => &self.bdats[i as usize],
            Piece::Quit => b"QUIT\r\n",
            Piece::Noop => b"NOOP\r\n",
            Piece::Rset => b"RSET\r\n",
            Piece::Expn => b"EXPN postmaster\r\n",
            Piece::Turn => b"TURN\r\n",
            Piece::Typo(i) => &self.typos[usize::from(i)],
            Piece::LongCmd(i) => &self.long_cmds[usize::from(i)],
            Piece::LongBody => &self.long_body,
            Piece::Nonsmtp(i) => &self.nonsmtp[usize::from(i)],
            Piece::BadMail => b"MAIL FROM:<a@b\r\n",
            Piece::Starttls => b"STARTTLS\r\n",
            Piece::StarttlsNoop => b"STARTTLS\r\nNOOP\r\n",
            Piece::Smuggle(i) => &self.smuggle[usize::from(i)],
        }
    }

    /// What a slowloris piece sends, one octet per interval.
    pub fn drip(&self, p: Piece) -> &[u8] {
        match p {
            Piece::Drip(i) => &self.drips[usize::from(i)],
            _ => b"",
        }
    }

    pub fn body_count(&self) -> u32 {
        self.bodies.len() as u32
    }
}

/// The bigmsg class's pieces for a server advertising `SIZE limit` (RFC 1870), rendered by
/// each worker when it first sees that limit: a MAIL announcing limit + 1 octets, and a
/// message of limit + 1 KiB sent without announcing it.
pub struct BigMsg {
    pub limit: u64,
    mail: Vec<u8>,
    body: Vec<u8>,
}

impl BigMsg {
    pub fn new(limit: u64) -> BigMsg {
        let size = usize::try_from(limit).unwrap_or(usize::MAX - 2048) + 1024;
        BigMsg {
            limit,
            mail: format!("MAIL FROM:<sender@loadgen.example> SIZE={}\r\n", limit + 1).into_bytes(),
            body: dot_stuff(&render_message(size, 997)),
        }
    }
}

/// Where a piece's octets live: the shared corpus, or the session's bigmsg pieces.
#[derive(Clone, Copy)]
pub struct Bytes<'a> {
    pub corpus: &'a Corpus,
    pub big: Option<&'a BigMsg>,
}

impl<'a> Bytes<'a> {
    pub fn of(&self, p: Piece) -> &'a [u8] {
        match (p, self.big) {
            (Piece::BigMail, Some(b)) => &b.mail,
            (Piece::BigBody, Some(b)) => &b.body,
            _ => self.corpus.bytes(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn corpus(extra: &[&str]) -> Corpus {
        let mut args = vec!["ringmx-loadgen", "--target", "127.0.0.1:25"];
        args.extend_from_slice(extra);
        Corpus::new(&crate::cli::Args::parse_from(args).into_config().unwrap())
    }

    #[test]
    fn message_rendering() {
        for size in [256, 257, 300, 1024, 4099, 65536] {
            let m = render_message(size, 1);
            assert_eq!(m.len(), size);
            assert!(m.ends_with(b"\r\n"));
            for line in m.split(|&b| b == b'\n') {
                assert!(line.len() <= 80, "line too long: {}", line.len());
            }
            let stuffed = dot_stuff(&m);
            assert!(stuffed.ends_with(b"\r\n.\r\n"));
            if size >= 1024 {
                assert!(m.windows(2).any(|w| w == b"\n."), "some line starts with a dot");
                assert!(stuffed.windows(3).any(|w| w == b"\n.."), "and it gets stuffed");
            }
        }
    }

    #[test]
    fn corpus_pieces() {
        let c = corpus(&[
            "--msg-size",
            "512:4k",
            "--seed",
            "7",
            "--rcpt-domain",
            "example.org",
        ]);
        assert_eq!(c.body_count(), 32);
        for i in 0..c.body_count() {
            // The BDAT piece is the command line, then the message as it is.
            let bdat = &c.bdats[i as usize];
            let s = bdat.len() - memchr::memchr(b'\n', bdat).map_or(0, |p| p + 1);
            assert!((512..=4096).contains(&s), "{s}");
            let b = c.bytes(Piece::Bdat(i));
            assert!(b.starts_with(format!("BDAT {s} LAST\r\n").as_bytes()));
        }
        for i in 0..LONG_CMD_LENS.len() as u16 {
            let l = c.bytes(Piece::LongCmd(i)).len();
            assert!((513..=4096).contains(&l));
        }
        assert_eq!(c.bytes(Piece::Nonsmtp(2))[..3], [0x16, 0x03, 0x01]);
        let long = c.bytes(Piece::LongBody);
        assert!(long.split(|&b| b == b'\n').any(|l| l.len() > 1000));
        assert_eq!(c.bytes(Piece::Rcpt(149)), b"RCPT TO:<user149@example.org>\r\n");
        assert_eq!(
            c.bytes(Piece::Unknown(3)),
            b"RCPT TO:<loadgen-unknown-3@example.org>\r\n"
        );
        assert_eq!(
            c.bytes(Piece::RelayRcpt),
            b"RCPT TO:<user0@relay.loadgen.invalid>\r\n"
        );
    }

    #[test]
    fn smuggle_bodies_hold_one_variant_then_the_real_end() {
        let c = corpus(&[]);
        for (v, end) in [b"\n.\n".as_slice(), b"\r\n.\n", b"\n.\r\n"].iter().enumerate() {
            let b = c.bytes(Piece::Smuggle(v as u8));
            let at = b.windows(end.len()).position(|w| w == *end).unwrap();
            if v != 1 {
                assert_ne!(b[at - 1], b'\r', "variant {v}: the LF before the dot is bare");
            }
            assert!(b[at + end.len()..].starts_with(b"MAIL FROM:<smuggled@"));
            assert!(b.ends_with(b"\r\n.\r\n"));
            // The only CRLF.CRLF is the last one.
            assert_eq!(
                b.windows(5).filter(|w| w == b"\r\n.\r\n").count(),
                1,
                "variant {v}"
            );
        }
    }

    #[test]
    fn drips_never_end_their_line_or_message() {
        let c = corpus(&[]);
        let line = c.drip(Piece::Drip(0));
        assert_eq!(line.len(), 510);
        assert!(!line.contains(&b'\n'));
        let body = c.drip(Piece::Drip(1));
        assert!(body.len() > 60_000);
        assert!(!body.ends_with(b"\r\n.\r\n") && body.ends_with(b"\r\n"));
        assert_eq!(c.bytes(Piece::Drip(0)), b"", "not part of any write");
    }

    #[test]
    fn bigmsg_exceeds_the_limit() {
        let b = BigMsg::new(10_000);
        assert_eq!(b.mail, b"MAIL FROM:<sender@loadgen.example> SIZE=10001\r\n");
        assert!(b.body.len() > 11_024 && b.body.ends_with(b"\r\n.\r\n"));
        let c = corpus(&[]);
        let bytes = Bytes {
            corpus: &c,
            big: Some(&b),
        };
        assert_eq!(bytes.of(Piece::BigMail), &b.mail[..]);
        assert_eq!(bytes.of(Piece::Quit), b"QUIT\r\n");
    }

    #[test]
    fn lognormal_sizes() {
        let (lo, hi) = (1024usize, 2 << 20);
        let s = message_sizes(lo, hi, SizeDist::Lognormal, &mut Rng::new(1));
        assert_eq!(s.len(), 64);
        assert!(s.windows(2).all(|w| w[0] <= w[1]), "strata in order");
        assert!(s.iter().all(|&x| (lo..=hi).contains(&x)));
        // The median is the geometric mean; the set is symmetric in log space around it.
        let gm = ((lo * hi) as f64).sqrt();
        let median = (s[31] as f64 * s[32] as f64).sqrt();
        assert!((median / gm - 1.0).abs() < 0.01, "{median} vs {gm}");
        for k in 0..32 {
            let prod = (s[k] as f64 * s[63 - k] as f64).sqrt();
            assert!((prod / gm - 1.0).abs() < 0.01, "stratum {k}");
        }
        // sigma = ln(hi/lo)/6: the log sizes' standard deviation, less the strata's
        // truncated tails, is close to it.
        let logs: Vec<f64> = s.iter().map(|&x| (x as f64).ln()).collect();
        let mean = logs.iter().sum::<f64>() / 64.0;
        let sd = (logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / 64.0).sqrt();
        let sigma = ((hi / lo) as f64).ln() / 6.0;
        assert!((sd / sigma - 1.0).abs() < 0.05, "sd {sd} sigma {sigma}");
        // About 68% of messages within one sigma of the median.
        let within = s
            .iter()
            .filter(|&&x| ((x as f64).ln() - gm.ln()).abs() <= sigma)
            .count();
        assert!((42..=45).contains(&within), "{within}");
        assert_eq!(
            message_sizes(lo, lo, SizeDist::Lognormal, &mut Rng::new(1)),
            vec![lo]
        );
        let big = message_sizes(lo, 64 << 20, SizeDist::Lognormal, &mut Rng::new(1));
        assert_eq!(big.len(), 16);
    }
}
