//! The spool's owner: one server per spool directory, held with an exclusive `flock` for the life of the process.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The lock file in the spool directory; it holds the owner's PID, for the message a second
/// server prints. Neither `.eml` nor `.json`, so recovery and spool readers leave it alone.
pub(super) const LOCK_FILE: &str = "ringmx.lock";

/// The spool's lock, held as long as this lives. `flock` belongs to the open file, so the
/// kernel releases it however the process ends (even `kill -9`): a file left behind by a dead
/// server never blocks the next one, and needs no staleness check.
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

/// Takes the spool directory `dir` (created if needed) for this process, before [`recover`]
/// may touch it; fails with [`io::ErrorKind::WouldBlock`] and the holder's PID when another
/// process has it.
///
/// [`recover`]: super::recover
pub fn lock(dir: &Path) -> io::Result<SpoolLock> {
    fs::create_dir_all(dir)?;
    // Not truncated on open: until the lock is ours, the file holds the owner's PID.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .open(dir.join(LOCK_FILE))?;
    // SAFETY: flock on a descriptor we own and keep open for the call; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::WouldBlock {
            return Err(e);
        }
        // The holder may not have written its PID yet: then the message goes without it.
        let mut text = String::new();
        let pid = match file.read_to_string(&mut text).map(|_| text.trim().parse::<u32>()) {
            Ok(Ok(pid)) => format!(" (pid {pid})"),
            _ => String::new(),
        };
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("in use by another ringmx{pid}"),
        ));
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(SpoolLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("ringmx-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = lock(&dir).unwrap();
        // flock conflicts between open files, so one process stands in for two servers.
        let e = lock(&dir).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(
            e.to_string(),
            format!("in use by another ringmx (pid {})", std::process::id())
        );
        drop(first);
        let again = lock(&dir).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(LOCK_FILE)).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(again);
        fs::remove_dir_all(&dir).unwrap();
    }
}
