//! The accept-failure policy both backends follow: what a failed accept means, when accepting rests, and the spare descriptor that lets a process out of descriptors still refuse a client.
//!
//! Out of descriptors, a server can neither serve nor refuse the clients waiting in its listen
//! backlog: they hang until their own timeout. Keeping one descriptor in reserve (an open
//! `/dev/null`) breaks that: close it, accept the client into the freed number, hand it to
//! the worker to be told `421 4.3.2`, and open the spare again once the worker has closed that
//! socket. Everything else that can go wrong with an accept either concerns one connection
//! (go on) or a shortage that ending sessions will relieve (rest, so as not to spin).

use super::{Completion, IoStats};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// How long accepting rests after a shortage it cannot do anything about.
pub(super) const REST: Duration = Duration::from_millis(100);
/// At most one warning per this interval: a flood of failures must not become a log flood.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// What the backend does after a failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The failure concerned one connection: accept the next one.
    Continue,
    /// One client was accepted with the spare to be refused: accept again on the next wait,
    /// once the worker has closed it and the spare is back.
    NextWait,
    /// A shortage: accept again after [`REST`].
    Rest,
}

/// One backend's spare descriptor and warning rate limit.
pub(super) struct AcceptPolicy {
    spare: Option<File>,
    /// When the last warning was logged, and how many failures came since.
    warned_at: Option<Instant>,
    unwarned: u64,
}

impl AcceptPolicy {
    pub(super) fn new() -> AcceptPolicy {
        let mut policy = AcceptPolicy {
            spare: None,
            warned_at: None,
            unwarned: 0,
        };
        policy.restore_spare();
        policy
    }

    /// Opens the spare descriptor again if it was used (cheap when it was not).
    pub(super) fn restore_spare(&mut self) {
        if self.spare.is_none() {
            // Fails only while still out of descriptors; the next wait tries again.
            self.spare = File::open("/dev/null").ok();
        }
    }

    /// Applies the policy to the failed accept `err`; `accept_one` accepts the next waiting
    /// connection (used once the spare has freed a descriptor), and a connection so accepted
    /// is pushed to `out` as [`Completion::Refused`].
    pub(super) fn on_error(
        &mut self,
        err: &io::Error,
        stats: &mut IoStats,
        accept_one: impl FnOnce() -> io::Result<(OwnedFd, SocketAddr)>,
        out: &mut Vec<Completion>,
    ) -> Verdict {
        match err.raw_os_error() {
            Some(libc::EINTR | libc::EAGAIN) => Verdict::Continue,
            Some(libc::EMFILE | libc::ENFILE) => {
                stats.accept_no_fds += 1;
                if self.spare.take().is_some() {
                    match accept_one() {
                        Ok((socket, peer)) => {
                            stats.refused_no_fds += 1;
                            self.warn(err, "refusing clients with 421");
                            out.push(Completion::Refused { socket, peer });
                            return Verdict::NextWait;
                        }
                        // Nobody is waiting: the kernel refuses an accept for want of a
                        // descriptor before it looks at the queue, so accepting again at once
                        // would fail the same way, over and over. Rest instead; a client
                        // arriving meanwhile waits at most that long for its 421.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.restore_spare();
                            return Verdict::Rest;
                        }
                        // Another thread took the freed descriptor first.
                        Err(_) => {}
                    }
                }
                self.warn(err, "resting");
                Verdict::Rest
            }
            Some(libc::ENOMEM | libc::ENOBUFS) => {
                stats.accept_no_memory += 1;
                self.warn(err, "resting");
                Verdict::Rest
            }
            _ => {
                stats.accept_aborted += 1;
                tracing::debug!(error = %err, "accept failed");
                Verdict::Continue
            }
        }
    }

    fn warn(&mut self, err: &io::Error, then: &'static str) {
        self.unwarned += 1;
        let now = Instant::now();
        if self.warned_at.is_some_and(|at| now < at + WARN_INTERVAL) {
            return;
        }
        tracing::warn!(error = %err, failures = self.unwarned, then, "accept failed");
        self.warned_at = Some(now);
        self.unwarned = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    fn client() -> io::Result<(OwnedFd, SocketAddr)> {
        let fd = OwnedFd::from(File::open("/dev/null")?);
        Ok((fd, "192.0.2.1:25".parse().unwrap()))
    }

    #[test]
    fn out_of_descriptors_refuses_one_client_per_spare() {
        let (mut policy, mut stats, mut out) = (AcceptPolicy::new(), IoStats::default(), Vec::new());
        let verdict = policy.on_error(&err(libc::EMFILE), &mut stats, client, &mut out);
        assert_eq!(verdict, Verdict::NextWait);
        assert!(matches!(out[..], [Completion::Refused { .. }]));
        // The spare is gone until restored: nothing more to refuse with, so rest.
        let verdict = policy.on_error(&err(libc::ENFILE), &mut stats, client, &mut out);
        assert_eq!((verdict, out.len()), (Verdict::Rest, 1));
        policy.restore_spare();
        let verdict = policy.on_error(&err(libc::EMFILE), &mut stats, client, &mut out);
        assert_eq!((verdict, out.len()), (Verdict::NextWait, 2));
        assert_eq!((stats.accept_no_fds, stats.refused_no_fds), (3, 2));
    }

    #[test]
    fn out_of_descriptors_with_nobody_waiting_rests_instead_of_spinning() {
        let (mut policy, mut stats, mut out) = (AcceptPolicy::new(), IoStats::default(), Vec::new());
        let nobody = || -> io::Result<(OwnedFd, SocketAddr)> { Err(io::ErrorKind::WouldBlock.into()) };
        let verdict = policy.on_error(&err(libc::EMFILE), &mut stats, nobody, &mut out);
        assert_eq!((verdict, out.len()), (Verdict::Rest, 0));
        // The spare is back for the next client.
        let verdict = policy.on_error(&err(libc::EMFILE), &mut stats, client, &mut out);
        assert_eq!((verdict, out.len()), (Verdict::NextWait, 1));
    }

    #[test]
    fn other_failures_rest_or_go_on() {
        let (mut policy, mut stats, mut out) = (AcceptPolicy::new(), IoStats::default(), Vec::new());
        let unused = || -> io::Result<(OwnedFd, SocketAddr)> { panic!("nothing to refuse") };
        for (errno, verdict) in [
            (libc::ENOMEM, Verdict::Rest),
            (libc::ENOBUFS, Verdict::Rest),
            (libc::ECONNABORTED, Verdict::Continue),
            (libc::EPROTO, Verdict::Continue),
            (libc::EINTR, Verdict::Continue),
        ] {
            assert_eq!(
                policy.on_error(&err(errno), &mut stats, unused, &mut out),
                verdict
            );
        }
        assert!(out.is_empty());
        assert_eq!((stats.accept_no_memory, stats.accept_aborted), (2, 2));
    }
}
