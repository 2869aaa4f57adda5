//! Fuzzes the recipients file: a table that loads accepts exactly what its lines list (their addresses, every user of their `@domain` lines, and postmaster), and a file refused is refused at its first line that does not parse, which fails alone while the lines before it load.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmx::policy::recipients::{LoadError, Recipients, Verdict};
use std::collections::HashSet;

/// The accepted domains the first octet picks from (its bits), in the spellings an operator
/// writes: mixed case, UTF-8, an A-label, an address literal, a duplicate in another case.
const POOL: [&str; 8] = [
    "example.org",
    "Example.NET",
    "bücher.example",
    "x.test",
    "[192.0.2.1]",
    "xn--bcher-kva.example",
    "a-b.c0",
    "EXAMPLE.org",
];

fuzz_target!(|data: &[u8]| {
    let Some((&knob, file)) = data.split_first() else {
        return;
    };
    let domains: Vec<String> = (POOL.iter().enumerate())
        .filter(|(i, _)| knob & (1 << i) != 0)
        .map(|(_, d)| d.to_string())
        .collect();
    match Recipients::from_bytes(&domains, file) {
        Ok(table) => loaded(&domains, file, &table),
        Err(e) => refused(&domains, file, &e),
    }
});

/// The addresses the lines of `text` list, as the file's format describes them: one per line,
/// surrounding whitespace trimmed, blank and `#` lines skipped, a comment after whitespace.
fn listed(text: &str) -> Vec<(&str, &str)> {
    (text.lines())
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let address = line.split(char::is_whitespace).next().unwrap();
            address.rsplit_once('@').expect("a listed address has an `@`")
        })
        .collect()
}

/// The file's rules written the obvious way: the listed users and the `@domain` lines of the
/// accepted domains (lowercased), and the verdict on an address.
struct Reference<'a> {
    domains: HashSet<String>,
    users: HashSet<(&'a str, String)>,
    every_user: HashSet<String>,
}

impl<'a> Reference<'a> {
    fn new(domains: &[String], lines: &[(&'a str, &'a str)]) -> Reference<'a> {
        let domains: HashSet<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
        let accepted = lines
            .iter()
            .filter(|(_, d)| domains.contains(&d.to_ascii_lowercase()));
        let (every, users): (Vec<_>, Vec<_>) = accepted.partition(|(l, _)| l.is_empty());
        Reference {
            users: users.iter().map(|(l, d)| (*l, d.to_ascii_lowercase())).collect(),
            every_user: every.iter().map(|(_, d)| d.to_ascii_lowercase()).collect(),
            domains,
        }
    }

    fn verdict(&self, probe: &str) -> Verdict {
        let Some((local, domain)) = probe.rsplit_once('@') else {
            return if probe.eq_ignore_ascii_case("postmaster") {
                Verdict::Accept
            } else {
                Verdict::DomainNotAccepted
            };
        };
        let domain = domain.to_ascii_lowercase();
        if !self.domains.contains(&domain) {
            return Verdict::DomainNotAccepted;
        }
        // RFC 5321 §4.5.1: postmaster, in any case, at every accepted domain.
        if local.eq_ignore_ascii_case("postmaster") {
            return Verdict::Accept;
        }
        // RFC 5321 §4.5.3.1.1 and §4.5.3.1.3: no such user can exist.
        if local.is_empty() || local.len() > 64 || probe.len() > 254 {
            return Verdict::UnknownUser;
        }
        if self.every_user.contains(&domain) || self.users.contains(&(local, domain)) {
            Verdict::Accept
        } else {
            Verdict::UnknownUser
        }
    }
}

fn loaded(domains: &[String], file: &[u8], table: &Recipients) {
    let text = std::str::from_utf8(file).expect("a table loaded from octets that are not UTF-8");
    let lines = listed(text);
    let reference = Reference::new(domains, &lines);
    assert_eq!(table.len(), reference.users.len(), "addresses stored");
    let mut probes = vec![
        "postmaster".to_string(),
        "PostMaster".to_string(),
        "nobody".to_string(),
    ];
    for (local, domain) in &lines {
        for d in [domain.to_string(), domain.to_ascii_uppercase()] {
            probes.push(format!("{local}@{d}"));
            probes.push(format!("{}@{d}", local.to_ascii_uppercase()));
            probes.push(format!("{local}x@{d}"));
            probes.push(format!("postmaster@{d}"));
        }
    }
    for domain in domains {
        probes.push(format!("nobody@{domain}"));
        probes.push(format!("@{domain}"));
    }
    for probe in &probes {
        assert_eq!(
            table.check(probe.as_bytes()),
            reference.verdict(probe),
            "{probe:?}"
        );
    }
}

fn refused(domains: &[String], file: &[u8], e: &LoadError) {
    // The domains of the pool are all valid: the error is on a line of the file.
    assert_eq!(e.file, None);
    let lines = 1 + file.iter().filter(|&&b| b == b'\n').count();
    assert!((1..=lines).contains(&e.line), "line {} of {lines}", e.line);
    let start = if e.line == 1 {
        0
    } else {
        let mut newlines = file.iter().enumerate().filter(|(_, &b)| b == b'\n');
        newlines.nth(e.line - 2).unwrap().0 + 1
    };
    let end = file[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(file.len(), |n| start + n + 1);
    if let Err(before) = Recipients::from_bytes(domains, &file[..start]) {
        panic!(
            "refused at line {}, but the lines before it fail too: {before}",
            e.line
        );
    }
    match Recipients::from_bytes(domains, &file[start..end]) {
        Ok(_) => panic!(
            "refused at line {} ({}), but that line loads alone",
            e.line, e.message
        ),
        Err(alone) => assert_eq!((alone.line, &alone.message), (1, &e.message)),
    }
}
