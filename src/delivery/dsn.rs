//! The delivery status notification for a message's failed recipients (RFC 3464 `multipart/report; report-type=delivery-status`), sent from the null sender back to the original sender.
//!
//! One per message, once every recipient is done or failed, with the original header
//! attached as `text/rfc822-headers` (up to `bounce_size_limit` octets). Never for a message
//! whose sender was `<>` (RFC 5321 §4.5.5, §6.1): that is how bounce loops are avoided.

use super::reply::Reply;
use crate::spool::format::rfc5322_date;
use std::io::{self, Read};
use std::time::SystemTime;

/// One failed recipient.
pub struct Failed<'a> {
    pub address: &'a [u8],
    pub reply: &'a Reply,
}

/// What a notification says about its message.
pub struct Report<'a> {
    /// The reporting MTA (our hostname).
    pub hostname: &'a str,
    pub id: &'a str,
    pub sender: &'a [u8],
    pub arrival: SystemTime,
    pub failed: Vec<Failed<'a>>,
}

/// The notification's text (header and body, CRLF line ends), ready to spool; `original` is
/// the stored message, of which the header is attached.
pub fn build(report: &Report<'_>, original: &mut dyn Read, header_limit: usize) -> io::Result<Vec<u8>> {
    let host = report.hostname;
    let boundary = format!("{}/{host}", report.id);
    let now = SystemTime::now();
    let mut m = String::with_capacity(2048);
    let mut line = |s: &str| {
        m.push_str(s);
        m.push_str("\r\n");
    };
    line(&format!("From: Mail Delivery System <MAILER-DAEMON@{host}>"));
    line(&format!("To: <{}>", clean(report.sender)));
    line("Subject: Undelivered Mail Returned to Sender");
    line(&format!("Date: {}", rfc5322_date(now)));
    line(&format!("Message-ID: <{}.dsn@{host}>", report.id));
    // RFC 3834 §5: an automatic reply, so vacation responders and the like leave it alone.
    line("Auto-Submitted: auto-replied");
    line("MIME-Version: 1.0");
    line(&format!(
        "Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\""
    ));
    line("");
    line("This is a MIME-encapsulated message.");
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/plain; charset=utf-8");
    line("");
    line(&format!("This is the mail system at host {host}."));
    line("");
    line("Your message could not be delivered to one or more recipients:");
    line("");
    for f in &report.failed {
        line(&format!(
            "<{}>: {}",
            clean(f.address),
            clean(f.reply.one_line().as_bytes())
        ));
    }
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: message/delivery-status");
    line("");
    // RFC 3464 §2.2: the per-message fields, then a block per recipient (§2.3).
    line(&format!("Reporting-MTA: dns; {host}"));
    line(&format!("X-Ringmx-Queue-ID: {}", report.id));
    line(&format!("Arrival-Date: {}", rfc5322_date(report.arrival)));
    for f in &report.failed {
        line("");
        line(&format!("Final-Recipient: rfc822; {}", clean(f.address)));
        line("Action: failed");
        line(&format!("Status: {}", status(f.reply)));
        line(&format!(
            "Diagnostic-Code: smtp; {}",
            clean(f.reply.one_line().as_bytes())
        ));
    }
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/rfc822-headers");
    line("");
    let mut out = m.into_bytes();
    out.extend_from_slice(&header_of(original, header_limit)?);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Ok(out)
}

/// A failure's status: its enhanced code, or 5.0.0 (4.4.7 for an expired message keeps its
/// class, as RFC 3463 §3.5 has it).
fn status(reply: &Reply) -> String {
    reply.status()
}

/// Octets fit for a header field: printable, no line ends (a downstream reply could carry a
/// stray CR), anything else a `?`.
fn clean(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The stored message's header, up to the empty line that ends it or `limit` octets (cut at a
/// line end), ending with CRLF.
fn header_of(original: &mut dyn Read, limit: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    original.take(limit as u64).read_to_end(&mut buf)?;
    let end = memchr::memmem::find(&buf, b"\r\n\r\n")
        .map(|e| e + 2)
        .or_else(|| memchr::memrchr(b'\n', &buf).map(|e| e + 1))
        .unwrap_or(0);
    buf.truncate(end);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_names_each_failed_recipient_and_attaches_the_header() {
        let reply = Reply::local(550, "5.1.1 <nobody@x.test>: no such user\rinjected");
        let expired = Reply::local(451, "4.4.7 delivery time expired");
        let report = Report {
            hostname: "mx.test",
            id: "0ABC",
            sender: b"alice@a.test",
            arrival: SystemTime::UNIX_EPOCH,
            failed: vec![
                Failed {
                    address: b"nobody@x.test",
                    reply: &reply,
                },
                Failed {
                    address: b"late@x.test",
                    reply: &expired,
                },
            ],
        };
        let original = b"Received: from x\r\nSubject: hi\r\n\r\nsecret body\r\n";
        let text = String::from_utf8(build(&report, &mut &original[..], 50_000).unwrap()).unwrap();
        assert!(text.contains("report-type=delivery-status; boundary=\"0ABC/mx.test\""));
        assert!(text.contains("\r\nReporting-MTA: dns; mx.test\r\n"));
        assert!(text
            .contains("\r\nFinal-Recipient: rfc822; nobody@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 <nobody@x.test>: no such user?injected\r\n"));
        assert!(text.contains("Final-Recipient: rfc822; late@x.test\r\nAction: failed\r\nStatus: 4.4.7\r\n"));
        assert!(text.contains(
            "text/rfc822-headers\r\n\r\nReceived: from x\r\nSubject: hi\r\n\r\n--0ABC/mx.test--\r\n"
        ));
        assert!(!text.contains("secret body"));
        assert!(!text.contains('\r') || text.matches('\r').count() == text.matches('\n').count());
    }
}
