//! The accepted domains and the recipients table: whether this MX takes mail for a RCPT address.
//!
//! # Configuration
//!
//! `domains = [...]` lists the domains this MX accepts mail for. `recipients = "FILE"`
//! optionally lists who, in those domains, exists:
//!
//! ```text
//! # whole-line comment
//! alice@example.org
//! Bob.Smith@Example.ORG     # a trailing comment starts at a `#` after whitespace
//! jörg@bücher.example       # SMTPUTF8 (RFC 6531): the file is UTF-8
//! @example.net              # every user of example.net
//! ```
//!
//! One address per line, surrounding whitespace trimmed, blank lines ignored. A `#` at the
//! start of a line, or after whitespace, starts a comment; a `#` inside an address is part of
//! it (`a#b@example.org` is a valid atext local part, RFC 5322 §3.2.3), which is why a trailing
//! comment needs the whitespace before it. So an address holds no whitespace and does not start
//! with `#`: `"a b"@x` and `#a@x` cannot be listed (an `@x` line covers them). A line that does
//! not parse refuses the whole file, naming the line: no `@`, an empty local part or domain, a
//! local part over 64 octets or a domain over 255 (RFC 5321 §4.5.3.1.1–2), an address over 254
//! (the 256-octet path of §4.5.3.1.3 less its brackets), a control character, a domain that is
//! not one (§4.1.2), a second word that is not a comment. A file that is not UTF-8 is refused
//! at the first bad line: 8-bit octets are allowed only as UTF-8, in the local part and the
//! domain alike (RFC 6531 §3.3), which is also all the session lets through.
//!
//! # Verdicts
//!
//! - A domain not in `domains` is [`Verdict::DomainNotAccepted`] (relaying, RFC 5321 §3.6).
//! - Without a recipients file, every user of an accepted domain is accepted.
//! - With one, a user of an accepted domain is accepted only if the file lists the address,
//!   or has an `@domain` line for its domain; else [`Verdict::UnknownUser`]. An accepted
//!   domain with no line in the file accepts only its postmaster.
//! - A file line whose domain is not in `domains` is ignored (one warning for all of them
//!   when the file is loaded), as Postfix ignores `relay_recipient_maps` entries outside
//!   `relay_domains` (its `reject_unauth_destination` refuses them first): the file may be an
//!   export that covers more domains than this MX, and the list of domains stays in one place.
//! - `postmaster@` every accepted domain, and `postmaster` without a domain, are always
//!   accepted (RFC 5321 §4.5.1), listed or not.
//!
//! # Matching
//!
//! The domain is compared case-insensitively in ASCII: both sides are ASCII-lowercased and
//! then compared byte for byte. A UTF-8 domain is not case-folded beyond ASCII and not
//! converted between U-labels and A-labels (IDNA), so `bücher.example` and
//! `xn--bcher-kva.example` are two domains: list both if clients may send either. The local
//! part is compared byte for byte as the file gives it, because only the receiving host
//! knows what it means (RFC 5321 §2.4: local parts are case-sensitive); the exception is
//! `postmaster`, case-insensitive by RFC 5321 §4.5.1. A quoted local part is compared as
//! quoted (`"a"@x` is not `a@x`).
//!
//! # Layout
//!
//! The table is built once and then only read, shared by every session as `Arc<Recipients>`; a
//! reload builds a new one. The listed users are one arena of octets, each entry the local
//! part's length, its domain's number and the local part, with no domain spelt out per address;
//! a hash table of `u32` offsets into the arena (hashbrown's `HashTable`) finds them. Per
//! address that is the local part, an octet of length, the domain's number (no octet for one
//! domain, one for up to 256), and 5 to 11 octets of table (5 per bucket, power-of-two buckets
//! at most 7/8 full): 24.6 octets for 1,000,000 addresses with 12-octet local parts, where a
//! `HashSet<Box<[u8]>>` takes 84 (`bench/benches/recipients.rs` measures both, and the load
//! time). Keys are hashed with std's `RandomState` (SipHash-1-3 with random keys): the probes
//! come from the network, and with a fixed-seed fast hash a client that knows the table could
//! send addresses that collide. SipHash costs a few nanoseconds more per hash than a fixed-seed
//! multiplicative one, where the table's cache misses cost hundreds. A lookup lowercases the
//! domain into a stack buffer and hashes twice (domain, then user); it allocates nothing.

use hashbrown::HashTable;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::path::{Path, PathBuf};

/// RFC 5321 §4.5.3.1.1: a local part is at most 64 octets.
const MAX_LOCAL: usize = 64;
/// RFC 5321 §4.5.3.1.2: a domain is at most 255 octets.
const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3: a path is at most 256 octets, its two angle brackets included.
const MAX_ADDRESS: usize = 254;

/// What the table says of a RCPT address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A recipient this MX takes mail for.
    Accept,
    /// An accepted domain without this user (Postfix: `550 5.1.1 … User unknown in relay
    /// recipient table`).
    UnknownUser,
    /// Not a domain this MX accepts mail for (Postfix: `554 5.7.1 … Relay access denied`).
    DomainNotAccepted,
}

/// One accepted domain.
struct Domain {
    /// Its number, stored with each of its users in the arena.
    id: u32,
    /// No recipients file, or an `@domain` line: every user is accepted.
    every_user: bool,
}

/// The accepted domains and their users; immutable once built.
pub struct Recipients {
    /// ASCII-lowercased domain → its entry.
    domains: HashMap<Box<[u8]>, Domain>,
    /// The listed users back to back, each: the local part's length (one octet; at most
    /// 64), the domain's id (`id_width` octets, little-endian), the local part.
    arena: Vec<u8>,
    /// Octets per stored domain id: as few as the number of domains needs (0 for one).
    id_width: usize,
    /// Offsets of the entries in `arena`, hashed by [`user_hash`].
    users: HashTable<u32>,
    hasher: RandomState,
}

/// Why a table was not built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The recipients file, when the error is in it or in reading it.
    pub file: Option<PathBuf>,
    /// The 1-based line of the file; 0 if the error is not on a line.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), 0) => write!(f, "{}: {}", file.display(), self.message),
            (Some(file), line) => write!(f, "{}:{line}: {}", file.display(), self.message),
            (None, 0) => f.write_str(&self.message),
            (None, line) => write!(f, "line {line}: {}", self.message),
        }
    }
}

impl std::error::Error for LoadError {}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipients")
            .field("domains", &self.domains.len())
            .field("addresses", &self.len())
            .finish()
    }
}

impl Recipients {
    /// Builds the table from the `domains` list and, if given, the recipients file.
    pub fn new(domains: &[String], file: Option<&Path>) -> Result<Recipients, LoadError> {
        let Some(path) = file else {
            return load(domains, None, None);
        };
        let bytes = std::fs::read(path).map_err(|e| LoadError {
            file: Some(path.to_path_buf()),
            line: 0,
            message: e.to_string(),
        })?;
        load_bytes(domains, &bytes, Some(path))
    }

    /// Builds the table from the `domains` list and the text of a recipients file.
    pub fn from_text(domains: &[String], text: &str) -> Result<Recipients, LoadError> {
        load(domains, Some(text), None)
    }

    /// Builds the table from the `domains` list and the octets of a recipients file, as
    /// [`Recipients::new`] reads them, UTF-8 check included (the `recipients` fuzz target).
    pub fn from_bytes(domains: &[String], bytes: &[u8]) -> Result<Recipients, LoadError> {
        load_bytes(domains, bytes, None)
    }

    /// The verdict on a RCPT address, as the session has it: without brackets or source
    /// route, possibly UTF-8. O(1) and allocation-free.
    pub fn check(&self, address: &[u8]) -> Verdict {
        let Some(at) = memchr::memrchr(b'@', address) else {
            // RFC 5321 §4.5.1: `RCPT TO:<Postmaster>` must be accepted without a domain.
            return if address.eq_ignore_ascii_case(b"postmaster") {
                Verdict::Accept
            } else {
                Verdict::DomainNotAccepted
            };
        };
        let (local, domain) = (&address[..at], &address[at + 1..]);
        let Some(domain) = lookup(&self.domains, domain) else {
            return Verdict::DomainNotAccepted;
        };
        // RFC 5321 §4.5.1: every domain has a postmaster, whatever the case of the name.
        if local.eq_ignore_ascii_case(b"postmaster") {
            return Verdict::Accept;
        }
        // No such user can exist, even under `@domain`: the session refuses these anyway.
        if local.is_empty() || local.len() > MAX_LOCAL || address.len() > MAX_ADDRESS {
            return Verdict::UnknownUser;
        }
        if domain.every_user || self.has_user(domain.id, local) {
            Verdict::Accept
        } else {
            Verdict::UnknownUser
        }
    }

    /// Whether mail for `domain` is accepted here (by anyone of it).
    pub fn accepts_domain(&self, domain: &[u8]) -> bool {
        lookup(&self.domains, domain).is_some()
    }

    /// No domains are configured.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// The distinct addresses loaded from the file (not counting `@domain` lines).
    pub fn len(&self) -> usize {
        self.users.len()
    }

    fn has_user(&self, id: u32, local: &[u8]) -> bool {
        let hash = user_hash(&self.hasher, id, local);
        self.users
            .find(hash, |&offset| {
                entry(&self.arena, self.id_width, offset) == (id, local)
            })
            .is_some()
    }
}

/// The domain's entry, looked up by its ASCII-lowercased form, built in a stack buffer.
fn lookup<'a>(domains: &'a HashMap<Box<[u8]>, Domain>, domain: &[u8]) -> Option<&'a Domain> {
    let mut buf = [0u8; MAX_DOMAIN];
    domains.get(lowercase(domain, &mut buf)?)
}

/// `domain` ASCII-lowercased into `buf`; `None` if it is too long to be any domain.
fn lowercase<'b>(domain: &[u8], buf: &'b mut [u8; MAX_DOMAIN]) -> Option<&'b [u8]> {
    let lower = buf.get_mut(..domain.len())?;
    lower.copy_from_slice(domain);
    lower.make_ascii_lowercase();
    Some(lower)
}

/// The id and local part of the arena entry at `offset`.
fn entry(arena: &[u8], id_width: usize, offset: u32) -> (u32, &[u8]) {
    let start = offset as usize + 1;
    let len = usize::from(arena[start - 1]);
    let mut id = [0u8; 4];
    id[..id_width].copy_from_slice(&arena[start..start + id_width]);
    (
        u32::from_le_bytes(id),
        &arena[start + id_width..start + id_width + len],
    )
}

fn user_hash(hasher: &RandomState, id: u32, local: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    h.write_u32(id);
    h.write(local);
    h.finish()
}

/// Builds the table from the octets of the recipients file `file` (`None`: not from a file),
/// refusing a file that is not UTF-8 at the line of its first bad octet, unless a line before
/// that one fails: the error names the first line that does, whatever its fault.
fn load_bytes(domains: &[String], bytes: &[u8], file: Option<&Path>) -> Result<Recipients, LoadError> {
    let e = match std::str::from_utf8(bytes) {
        Ok(text) => return load(domains, Some(text), file),
        Err(e) => e,
    };
    let start = memchr::memrchr(b'\n', &bytes[..e.valid_up_to()]).map_or(0, |n| n + 1);
    let before = std::str::from_utf8(&bytes[..start]).expect("valid up to the bad octet");
    load(domains, Some(before), file)?;
    Err(LoadError {
        file: file.map(Path::to_path_buf),
        line: 1 + memchr::memchr_iter(b'\n', before.as_bytes()).count(),
        message: "not UTF-8 (RFC 6531 §3.3: 8-bit addresses are UTF-8)".into(),
    })
}

/// Builds the table: `text` is the recipients file (`None`: there is none), `file` its name
/// for errors and the warning.
fn load(domains: &[String], text: Option<&str>, file: Option<&Path>) -> Result<Recipients, LoadError> {
    let error = |line, message| LoadError {
        file: file.map(Path::to_path_buf),
        line,
        message,
    };
    // Ids are u32; a list longer than that could not be held in memory anyway.
    if u32::try_from(domains.len()).is_err() {
        return Err(LoadError {
            file: None,
            line: 0,
            message: "domains: more than 2^32 of them".into(),
        });
    }
    let mut table = HashMap::with_capacity(domains.len());
    for name in domains {
        let lower = name.as_bytes().to_ascii_lowercase();
        check_domain(&lower).map_err(|why| LoadError {
            file: None,
            line: 0,
            message: format!("domains: `{name}`: {why}"),
        })?;
        let id = table.len() as u32;
        table.entry(lower.into_boxed_slice()).or_insert(Domain {
            id,
            every_user: text.is_none(),
        });
    }
    let max_id = table.len().saturating_sub(1) as u32;
    let id_width = (u32::BITS - max_id.leading_zeros()).div_ceil(8) as usize;
    let hasher = RandomState::new();
    let Some(text) = text else {
        return Ok(Recipients {
            domains: table,
            arena: Vec::new(),
            id_width,
            users: HashTable::new(),
            hasher,
        });
    };

    // Sized once from the file (a line holds at most one address, and an entry is no longer
    // than its line plus its id): no rehash or copy while loading.
    let lines = 1 + memchr::memchr_iter(b'\n', text.as_bytes()).count();
    let mut users = HashTable::with_capacity(lines);
    let mut arena = Vec::with_capacity(text.len() + lines * id_width);
    let rehash = |arena: &[u8], offset: &u32| {
        let (id, local) = entry(arena, id_width, *offset);
        user_hash(&hasher, id, local)
    };
    let (mut foreign, mut first_foreign) = (0usize, 0usize);
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let Some(address) = address_of(raw).map_err(|why| error(line, why.into()))? else {
            continue;
        };
        let (local, domain) = split(address).map_err(|why| error(line, why.into()))?;
        let mut buf = [0u8; MAX_DOMAIN];
        let Some(domain) = lowercase(domain.as_bytes(), &mut buf).and_then(|d| table.get_mut(d)) else {
            foreign += 1;
            if first_foreign == 0 {
                first_foreign = line;
            }
            continue;
        };
        if local.is_empty() {
            domain.every_user = true;
            continue;
        }
        let (id, local) = (domain.id, local.as_bytes());
        let hash = user_hash(&hasher, id, local);
        if users
            .find(hash, |&o| entry(&arena, id_width, o) == (id, local))
            .is_some()
        {
            continue;
        }
        let offset = u32::try_from(arena.len()).map_err(|_| error(line, "the table exceeds 4 GiB".into()))?;
        // At most 64 octets (checked by `split`): the length fits its one octet.
        arena.push(local.len() as u8);
        arena.extend_from_slice(&id.to_le_bytes()[..id_width]);
        arena.extend_from_slice(local);
        users.insert_unique(hash, offset, |o| rehash(&arena, o));
    }
    arena.shrink_to_fit();
    users.shrink_to_fit(|o| rehash(&arena, o));
    if foreign > 0 {
        let file = file.map_or_else(|| "recipients".into(), |f| f.display().to_string());
        tracing::warn!(
            file,
            lines = foreign,
            first = first_foreign,
            "lines naming a domain not in `domains` ignored"
        );
    }
    Ok(Recipients {
        domains: table,
        arena,
        id_width,
        users,
        hasher,
    })
}

/// The address on a line of the file, `None` for a blank or comment line.
fn address_of(line: &str) -> Result<Option<&str>, &'static str> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (address, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    if rest.trim_start().starts_with('#') || rest.is_empty() {
        Ok(Some(address))
    } else {
        Err("whitespace inside the address, or text after it that is not a `#` comment")
    }
}

/// Splits a listed address into local part and domain; `@domain` gives an empty local part.
fn split(address: &str) -> Result<(&str, &str), &'static str> {
    // The last `@`: a quoted local part may hold one (RFC 5321 §4.1.2).
    let (local, domain) = address.rsplit_once('@').ok_or("no `@` in the address")?;
    if local.len() > MAX_LOCAL {
        return Err("local part longer than 64 octets (RFC 5321 §4.5.3.1.1)");
    }
    if local.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("control character in the local part");
    }
    check_domain(domain.as_bytes())?;
    // An `@domain` line is no path: only the addresses it stands for have to fit one.
    if !local.is_empty() && address.len() > MAX_ADDRESS {
        return Err("address longer than 254 octets (RFC 5321 §4.5.3.1.3)");
    }
    Ok((local, domain))
}

/// RFC 5321 §4.1.2: a domain is dot-separated labels of letters, digits and inner hyphens,
/// at most 63 octets each (with UTF-8 U-labels allowed, RFC 6531 §3.3), or an address
/// literal in brackets (§4.1.3).
fn check_domain(domain: &[u8]) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("empty domain");
    }
    if domain.len() > MAX_DOMAIN {
        return Err("domain longer than 255 octets (RFC 5321 §4.5.3.1.2)");
    }
    if let [b'[', literal @ .., b']'] = domain {
        return if !literal.is_empty() && literal.iter().all(|&b| matches!(b, 33..=90 | 94..=126)) {
            Ok(())
        } else {
            Err("not an address literal (RFC 5321 §4.1.3)")
        };
    }
    let label_ok = |label: &[u8]| {
        !label.is_empty()
            && label.len() <= 63
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-')
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80)
    };
    if domain.split(|&b| b == b'.').all(label_ok) {
        Ok(())
    } else {
        Err("not a domain (RFC 5321 §4.1.2)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn table(names: &[&str], text: &str) -> Recipients {
        Recipients::from_text(&domains(names), text).unwrap()
    }

    fn load_error(names: &[&str], text: &str) -> LoadError {
        Recipients::from_text(&domains(names), text).unwrap_err()
    }

    use Verdict::{Accept, DomainNotAccepted, UnknownUser};

    #[test]
    fn without_a_file_every_user_of_an_accepted_domain_is_accepted() {
        let r = Recipients::new(&domains(&["example.org", "Example.NET"]), None).unwrap();
        assert_eq!(r.check(b"anyone@example.org"), Accept);
        assert_eq!(r.check(b"Anyone@EXAMPLE.net"), Accept);
        assert_eq!(r.check(b"anyone@example.com"), DomainNotAccepted);
        assert_eq!(r.check(b"anyone@sub.example.org"), DomainNotAccepted);
        assert_eq!(r.check(b"anyone"), DomainNotAccepted);
        assert!(r.accepts_domain(b"EXAMPLE.ORG") && !r.accepts_domain(b"example.com"));
        assert!(!r.is_empty());
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn the_domain_is_case_insensitive_in_ascii_only() {
        let r = table(
            &["Example.ORG", "bücher.example"],
            "alice@EXAMPLE.org\njörg@BüCHER.example\n",
        );
        assert_eq!(r.check(b"alice@example.org"), Accept);
        assert_eq!(r.check(b"alice@eXaMpLe.OrG"), Accept);
        assert_eq!(r.check("jörg@bücher.EXAMPLE".as_bytes()), Accept);
        assert_eq!(r.check("jörg@BüCHER.EXAMPLE".as_bytes()), Accept);
        // No Unicode case folding, no IDNA: other spellings are other domains.
        assert_eq!(r.check("jörg@BÜCHER.example".as_bytes()), DomainNotAccepted);
        assert_eq!(r.check(b"j\xc3\xb6rg@xn--bcher-kva.example"), DomainNotAccepted);
    }

    #[test]
    fn the_local_part_is_exact() {
        let r = table(&["example.org"], "Alice@example.org\n\"quoted\"@example.org\n");
        assert_eq!(r.check(b"Alice@example.org"), Accept);
        assert_eq!(r.check(b"alice@example.org"), UnknownUser);
        assert_eq!(r.check(b"ALICE@example.org"), UnknownUser);
        assert_eq!(r.check(b"Alice.@example.org"), UnknownUser);
        assert_eq!(r.check(b"\"quoted\"@example.org"), Accept);
        assert_eq!(r.check(b"quoted@example.org"), UnknownUser);
        assert_eq!(r.check(b"@example.org"), UnknownUser);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn postmaster_is_always_accepted_in_any_case() {
        let r = table(&["example.org"], "alice@example.org\n");
        for address in ["postmaster", "POSTMASTER", "PostMaster", "postmaster@example.org"] {
            assert_eq!(r.check(address.as_bytes()), Accept, "{address}");
        }
        assert_eq!(r.check(b"PostMaster@EXAMPLE.ORG"), Accept);
        assert_eq!(r.check(b"postmaster@example.com"), DomainNotAccepted);
        assert_eq!(r.check(b"postmistress@example.org"), UnknownUser);
        assert_eq!(r.check(b"postmaster.x@example.org"), UnknownUser);
        // Even with no domains at all, `<Postmaster>` is accepted (RFC 5321 §4.5.1).
        let none = Recipients::new(&[], None).unwrap();
        assert!(none.is_empty());
        assert_eq!(none.check(b"Postmaster"), Accept);
        assert_eq!(none.check(b"postmaster@example.org"), DomainNotAccepted);
    }

    #[test]
    fn an_at_domain_line_accepts_every_user_of_that_domain_only() {
        let r = table(
            &["example.org", "example.net"],
            "@Example.NET\nalice@example.org\n",
        );
        assert_eq!(r.check(b"anyone@example.net"), Accept);
        assert_eq!(r.check(b"Someone.Else@EXAMPLE.NET"), Accept);
        assert_eq!(r.check(b"alice@example.org"), Accept);
        assert_eq!(r.check(b"bob@example.org"), UnknownUser);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn an_accepted_domain_missing_from_the_file_accepts_only_its_postmaster() {
        let r = table(&["example.org", "example.net"], "alice@example.org\n");
        assert_eq!(r.check(b"alice@example.net"), UnknownUser);
        assert_eq!(r.check(b"postmaster@example.net"), Accept);
        let empty = table(&["example.org"], "# nobody yet\n");
        assert_eq!(empty.check(b"alice@example.org"), UnknownUser);
        assert_eq!(empty.check(b"postmaster@example.org"), Accept);
    }

    #[test]
    fn lines_of_domains_not_accepted_are_ignored() {
        let r = table(
            &["example.org"],
            "alice@example.com\n@example.net\nbob@example.org\n",
        );
        assert_eq!(r.check(b"alice@example.com"), DomainNotAccepted);
        assert_eq!(r.check(b"anyone@example.net"), DomainNotAccepted);
        assert_eq!(r.check(b"bob@example.org"), Accept);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn comments_blank_lines_and_whitespace() {
        let text = "# a comment\n\n   \n  alice@example.org  \r\n\tbob@example.org # trailing\r\n\
            a#b@example.org\n#carol@example.org\ndave@example.org\t#tab then comment\n\
            erin@example.org #\nalice@example.org\n";
        let r = table(&["example.org"], text);
        for user in ["alice", "bob", "a#b", "dave", "erin"] {
            assert_eq!(
                r.check(format!("{user}@example.org").as_bytes()),
                Accept,
                "{user}"
            );
        }
        assert_eq!(r.check(b"carol@example.org"), UnknownUser);
        assert_eq!(r.check(b"a@example.org"), UnknownUser);
        // The duplicate alice is stored once.
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn a_bad_line_is_refused_with_its_number() {
        let cases = [
            ("nobody", "no `@`"),
            ("alice@", "empty domain"),
            ("@", "empty domain"),
            ("a b@example.org", "whitespace"),
            ("alice@example.org bob@example.org", "whitespace"),
            ("alice@example..org", "not a domain"),
            ("alice@-example.org", "not a domain"),
            ("alice@example.org.", "not a domain"),
            ("alice@exa_mple.org", "not a domain"),
            ("alice@[]", "address literal"),
            ("al\u{7f}ice@example.org", "control character"),
        ];
        for (line, why) in cases {
            let e = load_error(
                &["example.org"],
                &format!("# header\nok@example.org\n\n{line}\nok2@example.org\n"),
            );
            assert_eq!(e.line, 4, "{line}");
            assert!(e.message.contains(why), "{line}: {}", e.message);
        }
        let long_local = format!("{}@example.org", "x".repeat(65));
        assert!(load_error(&["example.org"], &long_local)
            .message
            .contains("64 octets"));
        assert!(Recipients::from_text(
            &domains(&["example.org"]),
            &format!("{}@example.org", "x".repeat(64))
        )
        .is_ok());
        let long_domain = format!("a@{}", vec!["x".repeat(63); 5].join("."));
        assert!(load_error(&["example.org"], &long_domain)
            .message
            .contains("255 octets"));
        let long_address = format!("{}@{}", "x".repeat(64), vec!["y".repeat(63); 3].join("."));
        assert_eq!(long_address.len(), 256);
        assert!(load_error(&["example.org"], &long_address)
            .message
            .contains("254 octets"));
        let e = load_error(&["example.org"], "\n\nnobody\n");
        assert_eq!(e.to_string(), "line 3: no `@` in the address");
    }

    #[test]
    fn a_bad_domain_in_the_configuration_is_refused() {
        for name in ["", "exa mple.org", "a@example.org", "example..org", "-x.org"] {
            let e = Recipients::new(&domains(&[name]), None).unwrap_err();
            assert_eq!((e.line, e.file.clone()), (0, None), "{name}");
            assert!(e.to_string().starts_with(&format!("domains: `{name}`: ")), "{e}");
        }
        assert!(Recipients::new(&domains(&["[192.0.2.1]", "bücher.example"]), None).is_ok());
    }

    #[test]
    fn an_overlong_address_is_not_found() {
        let r = table(
            &["example.org", "example.net"],
            "@example.net\nalice@example.org\n",
        );
        let long_local = format!("{}@example.net", "x".repeat(65));
        assert_eq!(r.check(long_local.as_bytes()), UnknownUser);
        let long_domain = format!("alice@{}", "x".repeat(300));
        assert_eq!(r.check(long_domain.as_bytes()), DomainNotAccepted);
        assert!(!r.accepts_domain("x".repeat(1000).as_bytes()));
        let huge = vec![b'@'; 100_000];
        assert_eq!(r.check(&huge), DomainNotAccepted);
        assert_eq!(r.check(b""), DomainNotAccepted);
        assert_eq!(r.check(b"@"), DomainNotAccepted);
    }

    #[test]
    fn eight_bit_addresses() {
        let r = table(
            &["bücher.example", "example.org"],
            "jörg@bücher.example\nμ@example.org\n",
        );
        assert_eq!(r.check("jörg@bücher.example".as_bytes()), Accept);
        assert_eq!(r.check("JÖRG@bücher.example".as_bytes()), UnknownUser);
        assert_eq!(r.check("μ@example.org".as_bytes()), Accept);
        // Bytes the session would have refused are simply not found.
        assert_eq!(r.check(b"j\xffrg@b\xfccher.example"), DomainNotAccepted);
        assert_eq!(r.check(b"\xff@example.org"), UnknownUser);
        assert_eq!(r.check(b"\xce@example.org"), UnknownUser);
    }

    #[test]
    fn files_are_read_and_their_errors_named() {
        let dir = std::env::temp_dir().join(format!("ringmx-recipients-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("recipients");
        std::fs::write(&path, "alice@example.org\n@example.net\n").unwrap();
        let r = Recipients::new(&domains(&["example.org", "example.net"]), Some(&path)).unwrap();
        assert_eq!(r.check(b"alice@example.org"), Accept);
        assert_eq!(r.check(b"bob@example.org"), UnknownUser);
        assert_eq!(r.check(b"bob@example.net"), Accept);

        let octets = b"alice@example.org\n# ok\nj\xf6rg@example.org\n";
        std::fs::write(&path, octets).unwrap();
        let e = Recipients::new(&domains(&["example.org"]), Some(&path)).unwrap_err();
        assert_eq!(e.line, 3);
        // The same octets from memory (the `recipients` fuzz target's way in): the same error.
        let from_memory = Recipients::from_bytes(&domains(&["example.org"]), octets).unwrap_err();
        assert_eq!((from_memory.file, from_memory.line), (None, 3));
        assert_eq!(from_memory.message, e.message);
        // A line before the one that is not UTF-8 fails first: the error names that line.
        let first = Recipients::from_bytes(
            &domains(&["example.org"]),
            b"ok@example.org\nnobody\nj\xf6rg@example.org\n",
        )
        .unwrap_err();
        assert_eq!(first.to_string(), "line 2: no `@` in the address");
        assert!(
            e.to_string()
                .starts_with(&format!("{}:3: not UTF-8", path.display())),
            "{e}"
        );

        std::fs::write(&path, "alice@example.org\nbad\n").unwrap();
        let e = Recipients::new(&domains(&["example.org"]), Some(&path)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}:2: no `@` in the address", path.display())
        );

        let missing = dir.join("missing");
        let e = Recipients::new(&domains(&["example.org"]), Some(&missing)).unwrap_err();
        assert_eq!((e.line, e.file.as_deref()), (0, Some(missing.as_path())));
        assert!(
            e.to_string().starts_with(&format!("{}: ", missing.display())),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn domain_ids_wider_than_one_octet() {
        let names: Vec<String> = (0..70_000).map(|i| format!("d{i}.example")).collect();
        let text: String = (0..70_000)
            .step_by(7)
            .map(|i| format!("u{i}@d{i}.example\n"))
            .collect();
        let r = Recipients::from_text(&names, &text).unwrap();
        assert_eq!(r.id_width, 3);
        assert_eq!(r.len(), 10_000);
        for i in (0..70_000).step_by(7) {
            assert_eq!(r.check(format!("u{i}@d{i}.example").as_bytes()), Accept);
            assert_eq!(
                r.check(format!("u{i}@d{}.example", i + 1).as_bytes()),
                UnknownUser
            );
        }
    }

    /// The rules written the obvious way, over the configuration as given.
    fn reference(domains: &[String], file: Option<&[String]>, probe: &str) -> Verdict {
        let Some((local, domain)) = probe.rsplit_once('@') else {
            return if probe.eq_ignore_ascii_case("postmaster") {
                Accept
            } else {
                DomainNotAccepted
            };
        };
        if !domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return DomainNotAccepted;
        }
        if local.eq_ignore_ascii_case("postmaster") {
            return Accept;
        }
        let Some(lines) = file else {
            return if local.is_empty() { UnknownUser } else { Accept };
        };
        let listed = lines.iter().any(|line| {
            let (l, d) = line.rsplit_once('@').unwrap();
            d.eq_ignore_ascii_case(domain) && (l == local || l.is_empty())
        });
        if listed && !local.is_empty() {
            Accept
        } else {
            UnknownUser
        }
    }

    const POOL: &[&str] = &[
        "example.org",
        "Example.NET",
        "bücher.example",
        "x.test",
        "[192.0.2.1]",
    ];

    fn cased(s: &str, upper: bool) -> String {
        if upper {
            s.to_ascii_uppercase()
        } else {
            s.to_string()
        }
    }

    fn local() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::prop_oneof![
            "[aAbB][aAbB#]{0,2}",
            "(postmaster|PostMaster|postmaster2)",
            "(jörg|JÖRG|\"a\")",
            proptest::strategy::Just(String::new()),
        ]
    }

    proptest::proptest! {
        #[test]
        fn check_agrees_with_the_reference(
            accepted in proptest::sample::subsequence(POOL, 0..=POOL.len()),
            with_file in proptest::bool::ANY,
            lines in proptest::collection::vec((local(), 0..POOL.len(), proptest::bool::ANY, 0..3u8), 0..24),
            probes in proptest::collection::vec((local(), 0..POOL.len(), proptest::bool::ANY), 1..24),
        ) {
            let accepted: Vec<String> = accepted.iter().map(|d| d.to_string()).collect();
            let listed: Vec<String> =
                lines.iter().map(|(l, d, up, _)| format!("{l}@{}", cased(POOL[*d], *up))).collect();
            // The same lines as the operator might write them: indented, commented.
            let text: String = lines
                .iter()
                .zip(&listed)
                .map(|((.., style), line)| match style {
                    0 => format!("{line}\n"),
                    1 => format!("  {line}\t# note\r\n"),
                    _ => format!("# comment\n\n{line}\n"),
                })
                .collect();
            let r = if with_file {
                Recipients::from_text(&accepted, &text).unwrap()
            } else {
                Recipients::new(&accepted, None).unwrap()
            };
            let file = with_file.then_some(listed.as_slice());
            let mut all: Vec<String> =
                probes.iter().map(|(l, d, up)| format!("{l}@{}", cased(POOL[*d], *up))).collect();
            all.extend(listed.iter().cloned());
            all.extend(["postmaster".into(), "PostMaster".into(), "alice".into()]);
            for probe in &all {
                let expected = reference(&accepted, file, probe);
                proptest::prop_assert_eq!(r.check(probe.as_bytes()), expected, "{}", probe);
            }
        }
    }
}
