//! The one interface both spool formats implement for reading messages back: list the committed ones, open one as its envelope and a stream of its octets, mark recipients done, delete.
//!
//! Delivery is built on this, not on either format. The stream is the message as the `files`
//! format stores it in `<id>.eml`: the `Received:` trace header, then the message as received
//! after dot-unstuffing.

use super::format::envelope_json;
use super::{MessageMeta, TlsInfo};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A committed message as the spool lists it.
#[derive(Debug, Clone)]
pub struct Queued {
    pub meta: MessageMeta,
    /// Octets of the message without the trace header (the `size` of the envelope JSON).
    pub size: u64,
    /// Per recipient, in envelope order: whether it is done.
    pub done: Vec<bool>,
}

impl Queued {
    /// The envelope as the `files` format's `<id>.json`.
    pub fn json(&self) -> String {
        envelope_json(&self.meta, self.size)
    }
}

/// Reading committed messages back, whatever the format.
pub trait Queue: Send + Sync {
    /// Every committed message with a recipient not yet done, in id order.
    fn list(&self) -> io::Result<Vec<Queued>>;
    /// A committed message: its envelope and its stored octets.
    fn open(&self, id: &str) -> io::Result<(Queued, Box<dyn Read + Send>)>;
    /// Its envelope only.
    fn get(&self, id: &str) -> io::Result<Queued> {
        self.open(id).map(|(q, _)| q)
    }
    /// Its stored octets only.
    fn content(&self, id: &str) -> io::Result<Box<dyn Read + Send>> {
        self.open(id).map(|(_, r)| r)
    }
    /// Recipient `recipient` (its index in the envelope) is done, durably; the message goes
    /// once all are.
    fn mark_done(&self, id: &str, recipient: usize) -> io::Result<()>;
    /// The message goes, whatever its recipients' state.
    fn delete(&self, id: &str) -> io::Result<()>;
    /// Many recipients done at once (delivery's results, as they come in): a format may
    /// make them durable together. A message no longer in the spool is skipped.
    fn mark_done_many(&self, marks: &[(String, usize)]) -> io::Result<()> {
        for (id, r) in marks {
            match self.mark_done(id, *r) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    }
}

/// The `files` format read back: `<id>.json` and `<id>.eml`, and `<id>.done` listing the
/// recipients done (one index per line), which is written only once one is.
pub struct FilesQueue {
    dir: PathBuf,
}

impl FilesQueue {
    pub fn new(dir: &Path) -> FilesQueue {
        FilesQueue {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ext}"))
    }

    fn read(&self, id: &str) -> io::Result<Queued> {
        let text = fs::read_to_string(self.path(id, "json"))?;
        let mut queued = parse_envelope(&text)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{id}.json does not parse")))?;
        // What the JSON does not say (ESMTP or not) is in the trace header, as the session
        // recorded it.
        let mut header = Vec::new();
        File::open(self.path(id, "eml"))?
            .take(1024)
            .read_to_end(&mut header)?;
        queued.meta.esmtp = !header.windows(10).any(|w| w == b" with SMTP");
        queued.meta.smtputf8 = header.windows(13).any(|w| w == b" with UTF8SMTP");
        if let Ok(done) = fs::read_to_string(self.path(id, "done")) {
            for line in done.lines() {
                if let Some(d) = line
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| queued.done.get_mut(i))
                {
                    *d = true;
                }
            }
        }
        Ok(queued)
    }

    fn remove(&self, id: &str) -> io::Result<()> {
        // The .json first: it is the commit marker, so a crash halfway leaves an orphan that
        // recovery removes, never a message with part of its files.
        for ext in ["json", "eml", "done"] {
            match fs::remove_file(self.path(id, ext)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        File::open(&self.dir)?.sync_all()
    }
}

impl Queue for FilesQueue {
    fn list(&self) -> io::Result<Vec<Queued>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.read(&id) {
                Ok(q) if q.done.iter().any(|d| !d) => out.push(q),
                Ok(_) => {}
                // Deleted since the directory was read.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn open(&self, id: &str) -> io::Result<(Queued, Box<dyn Read + Send>)> {
        let queued = self.read(id)?;
        let file = File::open(self.path(id, "eml"))?;
        Ok((queued, Box::new(BufReader::new(file))))
    }

    fn mark_done(&self, id: &str, recipient: usize) -> io::Result<()> {
        let queued = self.read(id)?;
        if recipient >= queued.done.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no such recipient"));
        }
        let mut done = queued.done;
        done[recipient] = true;
        if done.iter().all(|d| *d) {
            return self.remove(id);
        }
        let path = self.path(id, "done");
        let created = !path.exists();
        let mut f = OpenOptions::new().append(true).create(true).open(&path)?;
        writeln!(f, "{recipient}")?;
        f.sync_data()?;
        if created {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    fn delete(&self, id: &str) -> io::Result<()> {
        self.read(id)?;
        self.remove(id)
    }
}

/// The envelope JSON of the `files` format back into its fields.
fn parse_envelope(text: &str) -> Option<Queued> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    // Strings were written as UTF-8, with each octet of an invalid sequence as `\u00XX`;
    // characters below U+0100 written that way come back as those octets only if they were
    // escapes, which JSON does not keep apart: such an address reads back as its UTF-8.
    let bytes = |k: &str| -> Option<Vec<u8>> { Some(v.get(k)?.as_str()?.as_bytes().to_vec()) };
    let recipients = v
        .get("recipients")?
        .as_array()?
        .iter()
        .map(|r| r.as_str().map(|s| s.as_bytes().to_vec()))
        .collect::<Option<Vec<_>>>()?;
    let tls = match v.get("tls") {
        Some(serde_json::Value::Object(t)) => Some(TlsInfo {
            version: t.get("version")?.as_str()?.to_string().into(),
            cipher: t.get("cipher")?.as_str()?.to_string().into(),
            sni: t.get("sni").and_then(|s| s.as_str()).map(str::to_string),
        }),
        _ => None,
    };
    let done = vec![false; recipients.len()];
    Some(Queued {
        meta: MessageMeta {
            id: v.get("id")?.as_str()?.to_string(),
            helo: bytes("helo")?,
            esmtp: true,
            smtputf8: false,
            client: v.get("client")?.as_str()?.parse().ok()?,
            mail_from: bytes("mail_from")?,
            mail_params: bytes("mail_params")?,
            recipients,
            received: parse_rfc3339(v.get("received")?.as_str()?)?,
            tls,
        },
        size: v.get("size")?.as_u64()?,
        done,
    })
}

/// `2026-11-29T02:25:04Z`, as the envelope writes it, back to a time.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (H. Hinnant), the inverse of the writer's.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_reads_back_what_the_envelope_writes() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_919_104);
        assert_eq!(parse_rfc3339("2026-11-29T02:25:04Z"), Some(t));
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(951_782_400))
        );
        assert_eq!(parse_rfc3339("2026-11-29 02:25:04Z"), None);
    }
}
