//! What the spool writes besides the message itself: the `Received:` header, the envelope JSON, and their dates.

use super::MessageMeta;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

struct Civil {
    year: i64,
    month: u32,
    day: u32,
    weekday: usize,
    hms: (u64, u64, u64),
}

fn civil(t: SystemTime) -> Civil {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let s = secs % 86_400;
    Civil {
        year,
        month,
        day,
        // 1970-01-01 was a Thursday.
        weekday: ((days + 4) % 7) as usize,
        hms: (s / 3600, s / 60 % 60, s % 60),
    }
}

/// A date in RFC 5322 §3.3 form, in UTC: `Sun, 29 Nov 2026 02:25:04 +0000`.
pub(crate) fn rfc5322_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = civil(t);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[c.weekday],
        c.day,
        MONTHS[c.month as usize - 1],
        c.year,
        c.hms.0,
        c.hms.1,
        c.hms.2
    )
}

/// A timestamp in RFC 3339 form, in UTC: `2026-11-29T02:25:04Z`.
fn rfc3339(t: SystemTime) -> String {
    let c = civil(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hms.0, c.hms.1, c.hms.2
    )
}

/// The client's address as an RFC 5321 §4.1.3 address literal.
fn address_literal(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("[{}]", a.ip()),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{}]", a.ip()),
        },
    }
}

/// The `Received:` trace header (RFC 5321 §4.4): `from` the HELO name with the client's
/// address as TCP-info, the TLS version and cipher as Postfix records them, `by` this host,
/// `with` the protocol (RFC 3848: SMTP, ESMTP, ESMTPS under TLS; RFC 6531 §3.7.3: UTF8SMTP,
/// UTF8SMTPS), the queue id, `for` the recipient when there is exactly one, and the date.
/// Folded before each clause so it stays short.
pub(super) fn received_header(meta: &MessageMeta, hostname: &str) -> Vec<u8> {
    let with = match (meta.esmtp, meta.smtputf8, meta.tls.is_some()) {
        (_, true, false) => "UTF8SMTP",
        (_, true, true) => "UTF8SMTPS",
        (true, false, false) => "ESMTP",
        (true, false, true) => "ESMTPS",
        (false, false, _) => "SMTP",
    };
    let mut h = Vec::with_capacity(256);
    h.extend_from_slice(b"Received: from ");
    h.extend_from_slice(&meta.helo);
    let _ = write!(h, " ({})", address_literal(&meta.client));
    if let Some(tls) = &meta.tls {
        let _ = write!(h, "\r\n\t(using {} with cipher {})", tls.version, tls.cipher);
    }
    let _ = write!(h, "\r\n\tby {} (ringmx) with {} id {}", hostname, with, meta.id);
    if let [rcpt] = meta.recipients.as_slice() {
        h.extend_from_slice(b"\r\n\tfor <");
        h.extend_from_slice(rcpt);
        h.push(b'>');
    }
    let _ = write!(h, ";\r\n\t{}\r\n", rfc5322_date(meta.received));
    h
}

/// Appends `bytes` as a JSON string (RFC 8259 §7). Valid UTF-8 is kept as is; each byte of an
/// invalid sequence (possible in an address only with SMTPUTF8) becomes `\u00XX`, the
/// convention of Latin-1 surrogates, so nothing is lost silently.
fn json_string(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            let _ = write!(out, "\\u{:04x}", b);
        }
    }
    out.push('"');
}

/// The envelope file: id, HELO name, client address, MAIL FROM with its parameters,
/// recipients, size of the stored message (without the trace header) and time received.
pub(super) fn envelope_json(meta: &MessageMeta, size: u64) -> String {
    let mut j = String::with_capacity(256);
    j.push_str("{\"id\":");
    json_string(&mut j, meta.id.as_bytes());
    j.push_str(",\"helo\":");
    json_string(&mut j, &meta.helo);
    j.push_str(",\"client\":");
    json_string(&mut j, meta.client.to_string().as_bytes());
    j.push_str(",\"mail_from\":");
    json_string(&mut j, &meta.mail_from);
    j.push_str(",\"mail_params\":");
    json_string(&mut j, &meta.mail_params);
    j.push_str(",\"recipients\":[");
    for (i, r) in meta.recipients.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        json_string(&mut j, r);
    }
    let _ = write!(j, "],\"size\":{size},\"received\":\"{}\"", rfc3339(meta.received));
    if let Some(tls) = &meta.tls {
        let _ = write!(
            j,
            ",\"tls\":{{\"version\":\"{}\",\"cipher\":\"{}\",\"sni\":",
            tls.version, tls.cipher
        );
        match &tls.sni {
            Some(name) => json_string(&mut j, name.as_bytes()),
            None => j.push_str("null"),
        }
        j.push('}');
    }
    j.push_str("}\n");
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::TlsInfo;
    use std::time::Duration;

    fn meta() -> MessageMeta {
        MessageMeta {
            id: "ABC".into(),
            helo: b"client.example".to_vec(),
            esmtp: true,
            smtputf8: false,
            client: "127.0.0.1:4000".parse().unwrap(),
            mail_from: b"a@b.example".to_vec(),
            mail_params: b"SIZE=10".to_vec(),
            recipients: vec![b"c@d.example".to_vec()],
            received: UNIX_EPOCH + Duration::from_secs(1_795_919_104),
            tls: None,
        }
    }

    fn tls() -> Option<TlsInfo> {
        Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            sni: Some("mx.test".into()),
        })
    }

    #[test]
    fn tls_sessions_are_recorded_as_postfix_does_and_as_esmtps() {
        let mut m = meta();
        m.tls = tls();
        let h = String::from_utf8(received_header(&m, "mx.test")).unwrap();
        assert_eq!(
            h,
            "Received: from client.example ([127.0.0.1])\r\n\t(using TLSv1.3 with cipher \
             TLS13_AES_256_GCM_SHA384)\r\n\tby mx.test (ringmx) with ESMTPS id ABC\r\n\
             \tfor <c@d.example>;\r\n\tSun, 29 Nov 2026 02:25:04 +0000\r\n"
        );
        m.smtputf8 = true;
        let h = String::from_utf8(received_header(&m, "mx.test")).unwrap();
        assert!(h.contains("with UTF8SMTPS id ABC"), "{h}");
        let j = envelope_json(&m, 1);
        assert!(
            j.ends_with(
                r#","tls":{"version":"TLSv1.3","cipher":"TLS13_AES_256_GCM_SHA384","sni":"mx.test"}}
"#
            ),
            "{j}"
        );
        m.tls.as_mut().unwrap().sni = None;
        assert!(envelope_json(&m, 1).contains(r#""sni":null}"#));
    }

    #[test]
    fn dates_in_rfc5322_and_rfc3339_form() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_919_104);
        assert_eq!(rfc5322_date(t), "Sun, 29 Nov 2026 02:25:04 +0000");
        assert_eq!(rfc3339(t), "2026-11-29T02:25:04Z");
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn received_header_names_helo_client_host_protocol_id_recipient_and_date() {
        let h = received_header(&meta(), "mx.test");
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "Received: from client.example ([127.0.0.1])\r\n\tby mx.test (ringmx) with ESMTP id ABC\r\n\
             \tfor <c@d.example>;\r\n\tSun, 29 Nov 2026 02:25:04 +0000\r\n"
        );
        let mut m = meta();
        m.recipients.push(b"e@f.example".to_vec());
        m.smtputf8 = true;
        m.client = "[::1]:25".parse().unwrap();
        let h = String::from_utf8(received_header(&m, "mx.test")).unwrap();
        assert!(h.contains("([IPv6:::1])"), "{h}");
        assert!(h.contains("with UTF8SMTP id ABC;"), "{h}");
        assert!(!h.contains("for <"), "{h}");
    }

    #[test]
    fn json_escapes_quotes_controls_and_invalid_utf8() {
        let mut m = meta();
        m.mail_from = b"\"q\\\x01\"@\xc3\xa9.example\xff".to_vec();
        let j = envelope_json(&m, 42);
        assert!(
            j.contains(r#""mail_from":"\"q\\\u0001\"@é.example\u00ff""#),
            "{j}"
        );
        assert!(
            j.contains(r#""size":42,"received":"2026-11-29T02:25:04Z"}"#),
            "{j}"
        );
        assert!(j.contains(r#""recipients":["c@d.example"]"#), "{j}");
    }
}
