//! Unit and property tests of the PROXY parser: every prefix of a valid header is `Incomplete`, the whole is `Complete` whatever follows, and a bad header fails at the first octet that gives it away.

use super::*;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The largest v2 header the spec allows, so that only the tests of the cap meet it.
const MAX_V2: usize = 16 + 65535;
const SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fn proxied(source: &str, destination: &str) -> Origin {
    Origin::Proxied {
        source: source.parse().unwrap(),
        destination: destination.parse().unwrap(),
    }
}

/// A v2 header: signature, version and command, family and protocol, length, then `block`.
fn v2(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut header = SIGNATURE.to_vec();
    header.extend_from_slice(&[ver_cmd, family]);
    header.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    header.extend_from_slice(block);
    header
}

/// The address block of a TCP origin, then `tlvs` (type, value) in §2.2's TLV format.
fn block(source: SocketAddr, destination: SocketAddr, tlvs: &[(u8, Vec<u8>)]) -> (u8, Vec<u8>) {
    let (family, mut out) = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (0x11, [s.octets(), d.octets()].concat()),
        (IpAddr::V6(s), IpAddr::V6(d)) => (0x21, [s.octets(), d.octets()].concat()),
        _ => unreachable!("one family per header"),
    };
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    for (kind, value) in tlvs {
        out.push(*kind);
        out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        out.extend_from_slice(value);
    }
    (family, out)
}

/// Every proper prefix of `header` needs more, and `header` alone or followed by SMTP is
/// the whole header.
fn assert_split_proof(header: &[u8], origin: Origin) {
    for k in 0..header.len() {
        assert_eq!(
            parse(&header[..k], MAX_V2),
            Ok(Parsed::Incomplete),
            "prefix {k} of {header:?}"
        );
    }
    let complete = Ok(Parsed::Complete {
        origin,
        len: header.len(),
    });
    assert_eq!(parse(header, MAX_V2), complete, "{header:?}");
    for after in [
        &b"EHLO client.example\r\n"[..],
        b"\r\n",
        b"\0",
        SIGNATURE,
        b"PROXY UNKNOWN\r\n",
    ] {
        assert_eq!(
            parse(&[header, after].concat(), MAX_V2),
            complete,
            "{header:?} + {after:?}"
        );
    }
}

/// `input` stays `Incomplete` up to its first `at` octets and is `error` from there on.
fn assert_fails_at(input: &[u8], at: usize, error: ProxyError) {
    assert_fails_at_with(input, at, error, MAX_V2);
}

fn assert_fails_at_with(input: &[u8], at: usize, error: ProxyError, max_v2: usize) {
    for k in 0..at {
        assert_eq!(
            parse(&input[..k], max_v2),
            Ok(Parsed::Incomplete),
            "prefix {k} of {input:?}"
        );
    }
    for k in at..=input.len() {
        assert_eq!(parse(&input[..k], max_v2), Err(error), "prefix {k} of {input:?}");
    }
}

#[test]
fn v1_tcp4_example_and_worst_case() {
    // §2.1's example, then its longest TCP4 line (56 octets).
    assert_split_proof(
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        proxied("192.168.0.1:56324", "192.168.0.11:443"),
    );
    let worst = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    assert_eq!(worst.len(), 56);
    assert_split_proof(worst, proxied("255.255.255.255:65535", "255.255.255.255:65535"));
    assert_split_proof(
        b"PROXY TCP4 0.0.0.0 10.0.0.1 0 25\r\n",
        proxied("0.0.0.0:0", "10.0.0.1:25"),
    );
}

#[test]
fn v1_tcp6_in_every_text_form() {
    for (text, ip) in [
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8::A", "2001:db8::a"),
        ("::", "::"),
        ("::1", "::1"),
        ("1::", "1::"),
        ("1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"),
        ("::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8"),
        ("0000:0000:0000:0000:0000:0000:0000:0001", "::1"),
        (
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ),
        // A v4-mapped client, as HAProxy's inet_ntop writes it; it stays IPv6.
        ("::ffff:192.0.2.1", "::ffff:c000:201"),
        ("1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"),
    ] {
        let ip: Ipv6Addr = ip.parse().unwrap();
        let line = format!("PROXY TCP6 {text} ::1 1025 25\r\n");
        let origin = Origin::Proxied {
            source: SocketAddr::new(IpAddr::V6(ip), 1025),
            destination: "[::1]:25".parse().unwrap(),
        };
        assert_split_proof(line.as_bytes(), origin);
    }
    // §2.1's longest TCP6 line: 104 octets.
    let worst = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(worst.len(), 104);
    let all = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
    assert_split_proof(worst, proxied(all, all));
}

#[test]
fn v1_unknown_is_local_whatever_follows_it() {
    for line in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff:f::f ffff:f::f 65535 65535\r\n",
        b"PROXY UNKNOWNgarbage \0\xff\r\n",
    ] {
        assert_split_proof(line, Origin::Local);
    }
    // 107 octets, CRLF included, is the longest line (§2.1); one more is too long.
    let mut longest = b"PROXY UNKNOWN ".to_vec();
    longest.resize(105, b'x');
    longest.extend_from_slice(b"\r\n");
    assert_eq!(longest.len(), 107);
    assert_split_proof(&longest, Origin::Local);
    let mut over = longest[..105].to_vec();
    over.extend_from_slice(b"x\r\n");
    assert_fails_at(&over, 107, ProxyError::TooLong);
}

#[test]
fn v1_lines_longer_than_107_are_too_long_even_if_well_formed() {
    // Two 45-octet addresses make a well-formed 108-octet line, which §2.1 does not require
    // a receiver to take: it is cut at 107 like any other.
    let a = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
    let line = format!("PROXY TCP6 {a} {a} 1 2\r\n");
    assert_eq!(line.len(), 108);
    assert_fails_at(line.as_bytes(), 107, ProxyError::TooLong);
}

#[test]
fn v1_fails_at_the_first_octet_that_gives_it_away() {
    let tcp4 = "PROXY TCP4 1.2.3.4 5.6.7.8";
    for (input, at, error) in [
        ("EHLO client.example\r\n", 1, ProxyError::NotProxy),
        ("PROXZ TCP4", 5, ProxyError::NotProxy),
        ("PROXY\r\n", 6, ProxyError::BadV1),
        ("PROXY  TCP4", 7, ProxyError::BadV1),
        ("PROXY tcp4", 7, ProxyError::BadV1),
        ("PROXY TCP5", 10, ProxyError::BadV1),
        ("PROXY TCP4  1.2.3.4", 12, ProxyError::BadV1),
        ("PROXY UNKNOWN\n", 14, ProxyError::BadV1),
        ("PROXY UNKNOWN x\ry\r\n", 17, ProxyError::BadV1),
        ("PROXY TCP4 1.2.3.256 5.6.7.8", 20, ProxyError::BadV1),
        ("PROXY TCP4 01.2.3.4 5.6.7.8", 13, ProxyError::BadV1),
        ("PROXY TCP4 1..2.3.4 5.6.7.8", 14, ProxyError::BadV1),
        ("PROXY TCP4 1.2.3.4.5 5.6.7.8", 19, ProxyError::BadV1),
        ("PROXY TCP4 1.2.3 5.6.7.8", 17, ProxyError::BadV1),
        ("PROXY TCP4 ::1 ::1", 12, ProxyError::BadV1),
        ("PROXY TCP4 1234.5.6.7", 15, ProxyError::BadV1),
        ("PROXY TCP6 1.2.3.4 ::1", 13, ProxyError::BadV1),
        ("PROXY TCP6 :::1 ::1", 14, ProxyError::BadV1),
        ("PROXY TCP6 1::2::3 ::1", 17, ProxyError::BadV1),
        ("PROXY TCP6 12345::1 ::1", 16, ProxyError::BadV1),
        ("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1", 27, ProxyError::BadV1),
        ("PROXY TCP6 ::ffff:1.2.3.4.5 ::1", 26, ProxyError::BadV1),
        ("PROXY TCP6 fe80::1%eth0 ::1", 19, ProxyError::BadV1),
        ("PROXY TCP6 2001:db8::g ::1", 22, ProxyError::BadV1),
    ] {
        assert_fails_at(input.as_bytes(), at, error);
    }
    for (ports, at) in [
        (" 01 25\r\n", 3),
        (" 0 025\r\n", 5),
        (" +1 25\r\n", 2),
        (" 65536 25\r\n", 6),
        (" 99999 25\r\n", 6),
        (" 1  25\r\n", 4),
        (" 1 25 \r\n", 6),
        (" 1 25\n", 6),
        (" 1 25\r\r\n", 7),
        (" 1 25\rEHLO", 7),
        (" 1 -25\r\n", 4),
        ("  1 25\r\n", 2),
        (" 1\t25\r\n", 3),
    ] {
        let input = format!("{tcp4}{ports}");
        assert_fails_at(input.as_bytes(), tcp4.len() + at, ProxyError::BadV1);
    }
}

#[test]
fn v2_tcp4_and_tcp6_with_and_without_tlvs() {
    let tlvs = [
        (0x01, b"smtp".to_vec()),
        (0x04, vec![0; 3]),
        (0x20, vec![0x01, 0, 0, 0, 0]),
        (0xe0, vec![]),
    ];
    for (source, destination) in [
        ("192.0.2.1:40000", "198.51.100.2:25"),
        ("[2001:db8::1]:1", "[2001:db8::2]:65535"),
    ] {
        let (source, destination) = (source.parse().unwrap(), destination.parse().unwrap());
        let origin = Origin::Proxied { source, destination };
        for tlvs in [&tlvs[..0], &tlvs[..]] {
            let (family, block) = block(source, destination, tlvs);
            assert_split_proof(&v2(0x21, family, &block), origin);
        }
    }
    // A length past the addresses whose octets are no well-formed TLV is skipped all the same.
    let (family, mut block) = block("1.2.3.4:5".parse().unwrap(), "6.7.8.9:10".parse().unwrap(), &[]);
    block.extend_from_slice(&[0xff, 0xff]);
    assert_split_proof(&v2(0x21, family, &block), proxied("1.2.3.4:5", "6.7.8.9:10"));
}

#[test]
fn v2_local_ignores_family_and_block() {
    assert_split_proof(&v2(0x20, 0x00, &[]), Origin::Local);
    let (_, block) = block(
        "1.2.3.4:5".parse().unwrap(),
        "6.7.8.9:10".parse().unwrap(),
        &[(4, vec![0])],
    );
    for family in [0x00, 0x11, 0x21, 0x12, 0x31, 0xff] {
        assert_split_proof(&v2(0x20, family, &block), Origin::Local);
        assert_split_proof(&v2(0x20, family, &[]), Origin::Local);
    }
}

#[test]
fn v2_proxy_with_unspec_is_local() {
    for family in [0x00, 0x01, 0x02, 0x10, 0x20, 0x30] {
        assert_split_proof(&v2(0x21, family, &[]), Origin::Local);
        assert_split_proof(&v2(0x21, family, &[7; 40]), Origin::Local);
    }
}

#[test]
fn v2_rejects_at_the_octet_that_gives_it_away() {
    for at in 1..=SIGNATURE.len() {
        let mut input = v2(0x21, 0x00, &[]);
        input[at - 1] ^= 0x40;
        assert_fails_at(&input, at, ProxyError::NotProxy);
    }
    for ver_cmd in [0x00, 0x10, 0x11, 0x22, 0x2f, 0x30, 0x31, 0xf1] {
        assert_fails_at(&v2(ver_cmd, 0x11, &[0; 12]), 13, ProxyError::BadV2);
    }
    for family in [0x13, 0x14, 0x40, 0x41, 0x51, 0xf1, 0x1f, 0x03] {
        assert_fails_at(&v2(0x21, family, &[0; 12]), 14, ProxyError::BadV2);
    }
    for family in [0x12, 0x22, 0x31, 0x32] {
        assert_fails_at(&v2(0x21, family, &[0; 216]), 14, ProxyError::UnsupportedFamily);
    }
    // A length shorter than the address block (§2.2: 12 for TCP4, 36 for TCP6).
    assert_fails_at(&v2(0x21, 0x11, &[0; 11]), 16, ProxyError::BadV2);
    assert_fails_at(&v2(0x21, 0x21, &[0; 35]), 16, ProxyError::BadV2);
    assert_fails_at(&v2(0x21, 0x21, &[0; 12]), 16, ProxyError::BadV2);
}

#[test]
fn v2_cap_applies_from_the_fixed_part() {
    let header = v2(0x21, 0x11, &[0; 100]);
    assert_eq!(
        parse(&header, 116),
        Ok(Parsed::Complete {
            origin: proxied("0.0.0.0:0", "0.0.0.0:0"),
            len: 116
        })
    );
    assert_fails_at_with(&header, 16, ProxyError::TooLong, 115);
    assert_fails_at_with(&v2(0x20, 0x00, &[]), 16, ProxyError::TooLong, 15);
    // The spec's own maximum, 16 + 65535, is taken when the caller allows it.
    let largest = v2(0x20, 0x00, &[0; 65535]);
    assert_eq!(
        parse(&largest, MAX_V2),
        Ok(Parsed::Complete {
            origin: Origin::Local,
            len: MAX_V2
        })
    );
    assert_eq!(parse(&largest[..MAX_V2 - 1], MAX_V2), Ok(Parsed::Incomplete));
}

#[test]
fn error_names_are_distinct_snake_case_and_in_counter_order() {
    for (i, error) in ProxyError::ALL.into_iter().enumerate() {
        assert_eq!(error as usize, i);
        let name = error.name();
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{name}"
        );
        assert!(ProxyError::ALL[..i].iter().all(|e| e.name() != name), "{name}");
    }
}

/// An IPv6 address in one of the text forms a sender may write: std's (RFC 5952), every
/// group in full, in capitals, or with its last 32 bits in dotted IPv4.
fn v6_text(ip: Ipv6Addr, form: u8) -> String {
    let groups = ip.segments().map(|g| format!("{g:x}"));
    match form {
        0 => ip.to_string(),
        1 => groups.join(":"),
        2 => ip.segments().map(|g| format!("{g:04X}")).join(":"),
        _ => {
            let [.., a, b, c, d] = ip.octets();
            format!("{}:{a}.{b}.{c}.{d}", groups[..6].join(":"))
        }
    }
}

/// Any IPv6 text RFC 4291 §2.2 allows: groups of 1 to 4 digits in either case, with or
/// without one `::`, with or without a dotted IPv4 ending, valid by construction.
fn v6_any_text() -> impl Strategy<Value = String> {
    let group = (1usize..=4, any::<u16>(), any::<bool>()).prop_map(|(width, value, upper)| {
        let digits = format!("{value:04x}")[4 - width..].to_string();
        if upper {
            digits.to_uppercase()
        } else {
            digits
        }
    });
    let groups = proptest::collection::vec(group, 8);
    (
        groups.clone(),
        groups,
        0usize..8,
        any::<bool>(),
        proptest::option::of(any::<[u8; 4]>()),
    )
        .prop_map(|(mut head, mut tail, split, compress, v4)| {
            let budget = if v4.is_some() { 6 } else { 8 };
            let v4 = v4.map(|o| Ipv4Addr::from(o).to_string());
            if compress {
                // `::` stands for one group at least.
                head.truncate(split.min(budget - 1));
                tail.truncate(budget - 1 - head.len());
                tail.extend(v4);
                format!("{}::{}", head.join(":"), tail.join(":"))
            } else {
                head.truncate(budget);
                head.extend(v4);
                head.join(":")
            }
        })
}

fn tcp_origin() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    let v4 = (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(s, d)| (IpAddr::from(s), IpAddr::from(d)));
    // Addresses with runs of zero groups, so that the text forms compress them.
    let group = prop_oneof![Just(0u16), Just(0xffff), any::<u16>()];
    let v6 = (
        proptest::array::uniform8(group.clone()),
        proptest::array::uniform8(group),
    )
        .prop_map(|(s, d)| (IpAddr::from(Ipv6Addr::from(s)), IpAddr::from(Ipv6Addr::from(d))));
    let port = prop_oneof![Just(0u16), 1u16..10, any::<u16>()];
    (prop_oneof![v4, v6], port.clone(), port)
        .prop_map(|((s, d), sp, dp)| (SocketAddr::new(s, sp), SocketAddr::new(d, dp)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// A v1 line of random addresses and ports, written in any text form, parses back to
    /// them on every split; one over 107 octets is too long from its 107th octet on.
    #[test]
    fn v1_round_trip_on_every_prefix((source, destination) in tcp_origin(), forms in (0u8..4, 0u8..4)) {
        let text = |a: SocketAddr, form| match a.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => v6_text(ip, form),
        };
        let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
        let line = format!(
            "PROXY {family} {} {} {} {}\r\n",
            text(source, forms.0),
            text(destination, forms.1),
            source.port(),
            destination.port()
        );
        if line.len() <= 107 {
            assert_split_proof(line.as_bytes(), Origin::Proxied { source, destination });
        } else {
            assert_fails_at(line.as_bytes(), 107, ProxyError::TooLong);
        }
    }

    /// Whatever its text form, an IPv6 address is never refused before its end: every prefix
    /// of the line is `Incomplete`, and the whole gives the address.
    #[test]
    fn v1_any_ipv6_text_is_split_proof(text in v6_any_text()) {
        let ip: Ipv6Addr = text.parse().unwrap();
        let line = format!("PROXY TCP6 {text} ::1 1 2\r\n");
        let origin = Origin::Proxied {
            source: SocketAddr::new(IpAddr::V6(ip), 1),
            destination: "[::1]:2".parse().unwrap(),
        };
        assert_split_proof(line.as_bytes(), origin);
    }

    /// A v2 header of random addresses, ports and TLVs parses back to them on every split.
    #[test]
    fn v2_round_trip_on_every_prefix(
        (source, destination) in tcp_origin(),
        tlvs in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..5),
    ) {
        let (family, block) = block(source, destination, &tlvs);
        assert_split_proof(&v2(0x21, family, &block), Origin::Proxied { source, destination });
    }

    /// Whatever the octets, a prefix's answer holds for the whole: `Complete` stays the same,
    /// an error stays the same error, and a header is never longer than the input.
    #[test]
    fn prefixes_agree_with_the_whole(
        start in prop_oneof![Just(&b"PROXY "[..]), Just(&b"PROXY TCP6 "[..]), Just(SIGNATURE), Just(&b""[..])],
        tail in proptest::collection::vec(prop_oneof![Just(b' '), Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'.'), Just(b':'), any::<u8>()], 0..64),
        max_v2 in 0usize..80,
    ) {
        let input = [start, &tail[..]].concat();
        let whole = parse(&input, max_v2);
        if let Ok(Parsed::Complete { len, .. }) = whole {
            prop_assert!(len <= input.len());
        }
        for k in 0..input.len() {
            match parse(&input[..k], max_v2) {
                Ok(Parsed::Incomplete) => {}
                decided => prop_assert_eq!(decided, whole, "prefix {}", k),
            }
        }
    }
}
