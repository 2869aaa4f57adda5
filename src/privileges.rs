//! Running as the configured user: who it is (`getpwnam`), whether the spool is fit for it, and the drop itself (setgroups, setgid, setuid, in that order, checked after).
//!
//! The server is started as root to bind port 25 (and 465), then runs as `user`: a flaw in
//! the code that parses the internet's input then owns an unprivileged account, not the
//! machine. The order is Postfix's and every daemon's: the supplementary groups first (only
//! root may set them), then the group, then the user (after which neither can be changed
//! back). A drop that fails is fatal: running on as root when the operator asked otherwise
//! is the one outcome never acceptable.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The account to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: libc::uid_t,
    /// The account's primary group, the only group kept.
    pub gid: libc::gid_t,
}

/// Looks the user up in the password database (files, LDAP, whatever NSS has).
pub fn lookup(name: &str) -> Result<Account, String> {
    let cname = CString::new(name).map_err(|_| format!("user {name:?}: a NUL in the name"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain data filled by getpwnam_r; the strings it points to live in
    // `buf`, which outlives every read of them below.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        );
        if rc != 0 {
            return Err(format!("user {name}: {}", io::Error::from_raw_os_error(rc)));
        }
        if found.is_null() {
            return Err(format!("user {name}: no such user"));
        }
        let name = CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned();
        Ok(Account {
            name,
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// Who the process runs as now (the effective user).
pub fn current_uid() -> libc::uid_t {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Becomes `account` for good: supplementary groups, group, user. Then checks that the ids
/// are what was asked and that root cannot be regained.
pub fn drop_to(account: &Account) -> Result<(), String> {
    let fail = |step: &str| {
        format!(
            "cannot switch to user {}: {step}: {}",
            account.name,
            io::Error::last_os_error()
        )
    };
    // SAFETY: plain system calls on integers and a one-element array we own.
    unsafe {
        if libc::setgroups(1, &account.gid) != 0 {
            return Err(fail("setgroups"));
        }
        if libc::setgid(account.gid) != 0 {
            return Err(fail("setgid"));
        }
        if libc::setuid(account.uid) != 0 {
            return Err(fail("setuid"));
        }
        let (uid, euid, gid, egid) = (libc::getuid(), libc::geteuid(), libc::getgid(), libc::getegid());
        if (uid, euid, gid, egid) != (account.uid, account.uid, account.gid, account.gid) {
            return Err(format!(
                "cannot switch to user {}: ids after the switch are uid {uid}/{euid}, gid {gid}/{egid}",
                account.name
            ));
        }
        if account.uid != 0 && libc::setuid(0) == 0 {
            return Err(format!(
                "cannot switch to user {}: root could be regained",
                account.name
            ));
        }
    }
    Ok(())
}

/// Before the drop, as root: creates the spool directory for `account` if it is missing (its
/// parent must exist). Nothing inside is read: under systemd root may lack
/// CAP_DAC_READ_SEARCH, and a spool mode 0750 is the account's to read.
pub fn create_spool(dir: &Path, account: &Account) -> Result<(), String> {
    let shown = dir.display();
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir(dir).map_err(|e| format!("spool {shown}: cannot create it: {e}"))?;
            std::os::unix::fs::chown(dir, Some(account.uid), Some(account.gid))
                .map_err(|e| format!("spool {shown}: cannot give it to {}: {e}", account.name))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
                .map_err(|e| format!("spool {shown}: {e}"))?;
            Ok(())
        }
        Err(e) => Err(format!("spool {shown}: {e}")),
        Ok(_) => Ok(()),
    }
}

/// After the drop, as `account`: the spool must be the account's own and not writable by
/// anyone else (another local user could otherwise plant or remove messages), and so must
/// every file and directory the server writes in it.
pub fn verify_spool(dir: &Path, account: &Account) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("spool {}: {e}", dir.display()))?;
    check_spool(dir, &meta, account)
}

/// The checks of [`verify_spool`] on a directory that exists (also `ringmx check`'s).
pub fn check_spool(dir: &Path, meta: &std::fs::Metadata, account: &Account) -> Result<(), String> {
    let shown = dir.display();
    if !meta.is_dir() {
        return Err(format!("spool {shown}: not a directory"));
    }
    let fix = format!("chown -R {}: {shown}; chmod go-w {shown}", account.name);
    if meta.uid() != account.uid {
        return Err(format!(
            "spool {shown} belongs to uid {}, not to {} (uid {}): {fix}",
            meta.uid(),
            account.name,
            account.uid
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "spool {shown} is writable by its group or others (mode {:o}): {fix}",
            meta.mode() & 0o7777
        ));
    }
    // What the server writes: its lock, the log segments, the files format's messages, the
    // delivery state; two levels cover them all.
    for entry in walk(dir, 2).map_err(|e| format!("spool {shown}: {e}"))? {
        let (path, meta) = entry;
        if meta.uid() != account.uid {
            return Err(format!(
                "spool {shown}: {} belongs to uid {}, not to {}: {fix}",
                path.display(),
                meta.uid(),
                account.name
            ));
        }
    }
    Ok(())
}

/// Every entry under `dir` down to `depth` levels, with its metadata (links not followed).
fn walk(dir: &Path, depth: usize) -> io::Result<Vec<(std::path::PathBuf, std::fs::Metadata)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let path = entry.path();
        if meta.is_dir() && depth > 1 {
            out.extend(walk(&path, depth - 1)?);
        }
        out.push((path, meta));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_an_unknown_user_are_told_apart() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        let err = lookup("no-such-user-ringmx").unwrap_err();
        assert!(err.contains("no such user"), "{err}");
    }

    #[test]
    fn a_spool_of_another_user_is_refused_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("ringmx-priv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        let other = Account {
            name: "someone".into(),
            uid: meta.uid() + 1,
            gid: meta.gid(),
        };
        let err = check_spool(&dir, &meta, &other).unwrap_err();
        assert!(
            err.contains("not to someone") && err.contains("chown -R someone:"),
            "{err}"
        );
        let me = Account {
            uid: meta.uid(),
            ..other
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        let err = check_spool(&dir, &meta, &me).unwrap_err();
        assert!(err.contains("writable by its group or others"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        check_spool(&dir, &std::fs::metadata(&dir).unwrap(), &me).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
