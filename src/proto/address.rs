//! Parses the arguments of MAIL and RCPT: the path (RFC 5321 §4.1.2) and the ESMTP parameters.

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The argument is not `FROM:<…>` / `TO:<…>` at all: a 501 5.5.4 syntax reply.
    Syntax,
    /// The address inside the brackets is malformed or too long: 501 5.1.7 / 5.1.3.
    Address,
}

/// A parsed path: the address without brackets or source route, and what follows it.
#[derive(Debug, PartialEq, Eq)]
pub struct Path<'a> {
    pub address: &'a [u8],
    /// The bytes after `>`, parameters separated by spaces.
    pub params: &'a [u8],
    /// Whether the address has octets above 0x7f (needs SMTPUTF8).
    pub eight_bit: bool,
}

/// RFC 5321 §4.5.3.1: local part 64, domain 255, whole path 256 octets (brackets included).
const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 256;

/// Parses `FROM:<path> params` (with `keyword` = `b"FROM:"`) or `TO:<path> params`. A space
/// after the colon is tolerated, as Postfix and most servers do, because common clients send it.
pub fn parse_path<'a>(arg: &'a [u8], keyword: &[u8], allow_null: bool) -> Result<Path<'a>, PathError> {
    if arg.len() < keyword.len() || !arg[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return Err(PathError::Syntax);
    }
    let mut rest = &arg[keyword.len()..];
    while let [b' ', tail @ ..] = rest {
        rest = tail;
    }
    if rest.first() != Some(&b'<') {
        return Err(PathError::Syntax);
    }
    if let Some(close) = plain_mailbox(rest) {
        let after = &rest[close + 1..];
        let params = match after {
            [] => after,
            [b' ', ..] => trim_spaces(after),
            _ => return Err(PathError::Syntax),
        };
        return Ok(Path {
            address: &rest[1..close],
            params,
            eight_bit: false,
        });
    }
    let close = path_end(rest).ok_or(PathError::Syntax)?;
    let inner = &rest[1..close];
    let after = &rest[close + 1..];
    let params = match after {
        [] => after,
        [b' ', ..] => trim_spaces(after),
        _ => return Err(PathError::Syntax),
    };
    if close + 1 > MAX_PATH {
        return Err(PathError::Address);
    }
    let eight_bit = !inner.is_ascii();
    if eight_bit && std::str::from_utf8(inner).is_err() {
        return Err(PathError::Address);
    }
    if inner.is_empty() {
        return if allow_null {
            Ok(Path {
                address: inner,
                params,
                eight_bit,
            })
        } else {
            Err(PathError::Address)
        };
    }
    let address = strip_source_route(inner).ok_or(PathError::Address)?;
    if !allow_null && address.eq_ignore_ascii_case(b"postmaster") {
        // RFC 5321 §4.1.1.3: "<Postmaster>" without a domain must be accepted by RCPT.
        return Ok(Path {
            address,
            params,
            eight_bit,
        });
    }
    check_mailbox(address)?;
    Ok(Path {
        address,
        params,
        eight_bit,
    })
}

/// The common case in one pass: `<local@domain>` with an ASCII dot-string local part and a
/// plain domain, within the length limits. Returns the index of `>`, or `None` to take the
/// general path, which handles (and judges) everything else.
fn plain_mailbox(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    let mut prev_dot = true;
    loop {
        let b = *s.get(i)?;
        if b == b'@' {
            break;
        }
        if b == b'.' {
            if prev_dot {
                return None;
            }
            prev_dot = true;
        } else if b < 0x80 && CLASS[b as usize] & ATEXT != 0 {
            prev_dot = false;
        } else {
            return None;
        }
        i += 1;
    }
    if prev_dot || i - 1 > MAX_LOCAL {
        return None;
    }
    let domain_start = i + 1;
    let (mut label, mut hyphen) = (0usize, false);
    i = domain_start;
    loop {
        let b = *s.get(i)?;
        if b == b'>' {
            break;
        }
        if b == b'.' {
            if label == 0 || hyphen {
                return None;
            }
            label = 0;
        } else if b < 0x80 && CLASS[b as usize] & LDH != 0 && (label > 0 || b != b'-') {
            hyphen = b == b'-';
            label += 1;
            if label > 63 {
                return None;
            }
        } else {
            return None;
        }
        i += 1;
    }
    (label > 0 && !hyphen && i - domain_start <= MAX_DOMAIN && i < MAX_PATH).then_some(i)
}

/// Finds the `>` that closes the path, skipping quoted strings (`<"a>b"@x>` is one address).
fn path_end(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    loop {
        i += memchr::memchr2(b'>', b'"', &s[i..])?;
        if s[i] == b'>' {
            return Some(i);
        }
        // Inside a quoted string: skip to its closing quote, past quoted pairs.
        i += 1;
        loop {
            i += memchr::memchr2(b'"', b'\\', &s[i..])?;
            if s[i] == b'"' {
                break;
            }
            i += 2;
            if i > s.len() {
                return None;
            }
        }
        i += 1;
    }
}

fn trim_spaces(mut s: &[u8]) -> &[u8] {
    while let [b' ', tail @ ..] = s {
        s = tail;
    }
    while let [head @ .., b' '] = s {
        s = head;
    }
    s
}

/// RFC 5321 §4.1.2 says a source route (`@a,@b:user@c`) must be accepted and ignored.
fn strip_source_route(inner: &[u8]) -> Option<&[u8]> {
    if inner.first() != Some(&b'@') {
        return Some(inner);
    }
    let colon = memchr::memchr(b':', inner)?;
    for hop in inner[..colon].split(|&b| b == b',') {
        let domain = hop.strip_prefix(b"@")?;
        if !is_domain(domain) {
            return None;
        }
    }
    Some(&inner[colon + 1..])
}

fn check_mailbox(address: &[u8]) -> Result<(), PathError> {
    let at = local_part_end(address).ok_or(PathError::Address)?;
    let (local, domain) = (&address[..at], &address[at + 1..]);
    if local.len() > MAX_LOCAL || domain.len() > MAX_DOMAIN {
        return Err(PathError::Address);
    }
    if !(is_domain(domain) || is_address_literal(domain)) {
        return Err(PathError::Address);
    }
    Ok(())
}

/// Validates the local part (dot-string or quoted-string) and returns the index of the `@`.
fn local_part_end(address: &[u8]) -> Option<usize> {
    if address.first() == Some(&b'"') {
        let mut i = 1;
        while i < address.len() {
            match address[i] {
                b'\\' if matches!(address.get(i + 1), Some(32..=126)) => i += 2,
                b'"' => return (address.get(i + 1) == Some(&b'@')).then_some(i + 1),
                32 | 33 | 35..=91 | 93..=126 | 0x80.. => i += 1,
                _ => return None,
            }
        }
        return None;
    }
    let at = memchr::memrchr(b'@', address)?;
    is_dot_string(&address[..at]).then_some(at)
}

/// RFC 5321 §4.1.2 Dot-string: atoms of atext joined by single dots.
fn is_dot_string(local: &[u8]) -> bool {
    let mut prev_dot = true;
    for &b in local {
        if b == b'.' {
            if prev_dot {
                return false;
            }
            prev_dot = true;
        } else if is_atext(b) {
            prev_dot = false;
        } else {
            return false;
        }
    }
    !prev_dot
}

const ATEXT: u8 = 1;
const LDH: u8 = 2;

/// Character classes, one table lookup per octet: RFC 5322 atext and RFC 5321 Let-dig-hyp, both
/// with UTF-8 octets (RFC 6531 §3.3; whether those are allowed at all is decided by the caller
/// from the SMTPUTF8 parameter).
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c >= 0x80 {
            t[b] = ATEXT | LDH;
        }
        b += 1;
    }
    let specials = b"!#$%&'*+-/=?^_`{|}~";
    let mut i = 0;
    while i < specials.len() {
        t[specials[i] as usize] |= ATEXT;
        i += 1;
    }
    t[b'-' as usize] |= LDH;
    t
};

fn is_atext(b: u8) -> bool {
    CLASS[b as usize] & ATEXT != 0
}

/// RFC 5321 §4.1.2 Domain: labels of letters, digits and hyphens, not starting or ending with
/// a hyphen; U-labels (octets above 0x7f) are allowed here and gated by SMTPUTF8.
fn is_domain(d: &[u8]) -> bool {
    if d.is_empty() || d.len() > MAX_DOMAIN {
        return false;
    }
    // Length of the current label, and whether its last octet was a hyphen.
    let (mut label, mut hyphen) = (0usize, false);
    for &b in d {
        if b == b'.' {
            if label == 0 || hyphen {
                return false;
            }
            label = 0;
        } else if CLASS[b as usize] & LDH != 0 {
            hyphen = b == b'-';
            if hyphen && label == 0 {
                return false;
            }
            label += 1;
            if label > 63 {
                return false;
            }
        } else {
            return false;
        }
    }
    label > 0 && !hyphen
}

/// RFC 5321 §4.1.3 address literal: `[` dcontent `]`, checked for its character set only.
fn is_address_literal(d: &[u8]) -> bool {
    d.len() > 2
        && d[0] == b'['
        && d[d.len() - 1] == b']'
        && d[1..d.len() - 1].iter().all(|&b| matches!(b, 33..=90 | 94..=126))
}

/// The parameters of MAIL FROM that ringmx offers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MailParams {
    /// RFC 1870 SIZE declaration.
    pub size: Option<u64>,
    /// RFC 6152 BODY=8BITMIME.
    pub eight_bit_mime: bool,
    /// RFC 6531 SMTPUTF8.
    pub smtputf8: bool,
}

/// Why a parameter list was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamError {
    /// A known parameter with a bad value or given twice: 501 5.5.4.
    Syntax,
    /// A parameter ringmx does not offer: 555 5.5.4 (RFC 5321 §4.1.1.11).
    Unsupported,
}

/// Parses the MAIL FROM parameters: SIZE, BODY and SMTPUTF8.
pub fn parse_mail_params(params: &[u8]) -> Result<MailParams, ParamError> {
    let mut out = MailParams::default();
    let (mut seen_size, mut seen_body) = (false, false);
    for param in params.split(|&b| b == b' ').filter(|p| !p.is_empty()) {
        let (key, value) = match memchr::memchr(b'=', param) {
            Some(eq) => (&param[..eq], Some(&param[eq + 1..])),
            None => (param, None),
        };
        if key.eq_ignore_ascii_case(b"SIZE") {
            let v = value.filter(|v| !v.is_empty() && v.len() <= 20 && v.iter().all(u8::is_ascii_digit));
            let v = v.ok_or(ParamError::Syntax)?;
            if seen_size {
                return Err(ParamError::Syntax);
            }
            seen_size = true;
            out.size = Some(v.iter().fold(0u64, |n, &d| {
                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            }));
        } else if key.eq_ignore_ascii_case(b"BODY") {
            let v = value.ok_or(ParamError::Syntax)?;
            if seen_body {
                return Err(ParamError::Syntax);
            }
            seen_body = true;
            out.eight_bit_mime = if v.eq_ignore_ascii_case(b"8BITMIME") {
                true
            } else if v.eq_ignore_ascii_case(b"7BIT") {
                false
            } else {
                return Err(ParamError::Syntax);
            };
        } else if key.eq_ignore_ascii_case(b"SMTPUTF8") {
            if value.is_some() || out.smtputf8 {
                return Err(ParamError::Syntax);
            }
            out.smtputf8 = true;
        } else {
            return Err(ParamError::Unsupported);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(arg: &str, null: bool) -> Result<String, PathError> {
        parse_path(arg.as_bytes(), b"FROM:", null).map(|p| String::from_utf8(p.address.to_vec()).unwrap())
    }

    #[test]
    fn paths() {
        assert_eq!(addr("FROM:<a@b.example>", true).unwrap(), "a@b.example");
        assert_eq!(addr("from: <a@b>", true).unwrap(), "a@b");
        assert_eq!(addr("FROM:<>", true).unwrap(), "");
        assert_eq!(addr("FROM:<>", false), Err(PathError::Address));
        assert_eq!(addr("FROM:<@r1,@r2:u@d>", true).unwrap(), "u@d");
        assert_eq!(addr("FROM:<\"a>b c\"@d>", true).unwrap(), "\"a>b c\"@d");
        assert_eq!(addr("FROM:<u@[192.0.2.1]>", true).unwrap(), "u@[192.0.2.1]");
        assert_eq!(addr("FROM:<Postmaster>", false).unwrap(), "Postmaster");
        assert_eq!(addr("FROM:<a@b", true), Err(PathError::Syntax));
        assert_eq!(addr("FROM:a@b", true), Err(PathError::Syntax));
        assert_eq!(addr("FROM:<a@b>x", true), Err(PathError::Syntax));
        assert_eq!(addr("TO:<a@b>", true), Err(PathError::Syntax));
        assert_eq!(addr("FROM:<a..b@c>", true), Err(PathError::Address));
        assert_eq!(addr("FROM:<a@-c>", true), Err(PathError::Address));
        assert_eq!(addr("FROM:<a@>", true), Err(PathError::Address));
        assert_eq!(addr("FROM:<a>", true), Err(PathError::Address));
        let long_local = format!("FROM:<{}@d>", "x".repeat(65));
        assert_eq!(addr(&long_local, true), Err(PathError::Address));
        let ok_local = format!("FROM:<{}@d>", "x".repeat(64));
        assert!(addr(&ok_local, true).is_ok());
        let long_path = format!("FROM:<a@{}>", vec!["x".repeat(60); 5].join("."));
        assert_eq!(addr(&long_path, true), Err(PathError::Address));
    }

    #[test]
    fn utf8_addresses_are_flagged() {
        let p = parse_path("FROM:<jörg@bücher.example> SMTPUTF8".as_bytes(), b"FROM:", true).unwrap();
        assert!(p.eight_bit);
        assert_eq!(p.params, b"SMTPUTF8");
        assert_eq!(
            parse_path(b"FROM:<j\xffrg@x>", b"FROM:", true),
            Err(PathError::Address)
        );
    }

    proptest::proptest! {
        /// The one-pass fast path accepts only what the general path accepts, and finds the
        /// same closing bracket.
        #[test]
        fn fast_path_agrees_with_the_general_path(
            local in "[a-z0-9.!#$%&'*+/=?^_`{|}~-]{0,70}",
            domain in "[a-zA-Z0-9.-]{0,70}",
            at in proptest::bool::ANY,
        ) {
            let s = format!("<{local}{}{domain}>", if at { "@" } else { "" });
            if let Some(close) = plain_mailbox(s.as_bytes()) {
                proptest::prop_assert_eq!(path_end(s.as_bytes()), Some(close));
                proptest::prop_assert!(check_mailbox(&s.as_bytes()[1..close]).is_ok(), "{}", s);
            }
        }
    }

    #[test]
    fn params() {
        let p = parse_mail_params(b"SIZE=1000 BODY=8bitmime SMTPUTF8").unwrap();
        assert_eq!(
            p,
            MailParams {
                size: Some(1000),
                eight_bit_mime: true,
                smtputf8: true
            }
        );
        assert_eq!(parse_mail_params(b"SIZE=abc"), Err(ParamError::Syntax));
        assert_eq!(parse_mail_params(b"SIZE=1 SIZE=2"), Err(ParamError::Syntax));
        assert_eq!(parse_mail_params(b"BODY=BINARYMIME"), Err(ParamError::Syntax));
        assert_eq!(parse_mail_params(b"SMTPUTF8=yes"), Err(ParamError::Syntax));
        assert_eq!(parse_mail_params(b"RET=FULL"), Err(ParamError::Unsupported));
        assert_eq!(parse_mail_params(b""), Ok(MailParams::default()));
    }
}
