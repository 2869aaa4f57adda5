//! The process's signals: blocked in every thread and taken by `sigwait` in one, where TERM/INT stop the server gracefully and HUP reloads it.

use crate::reload::Reloader;
use crate::wake::Wake;
use crate::worker::Control;
use crossbeam_channel::Sender;
use std::io;
use std::sync::Arc;

/// The signals taken by `sigwait` in the signal thread. The default action of each is to end
/// the process at once (with no `421` to anyone): SIGTERM and SIGINT stop the server
/// gracefully instead; SIGHUP (`systemctl reload`, a certificate renewal hook) reloads the
/// configuration; SIGUSR1/2 are logged and ignored until they are given a meaning.
const SIGNALS: [libc::c_int; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Blocks [`SIGNALS`] in this thread and (by inheritance) every thread it starts, so they are
/// only ever taken by `sigwait` in the signal thread. Ignores SIGXFSZ, so a file size limit
/// shows up as `EFBIG` on the spool write (answered 452), not as a dead server.
pub(crate) fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset before use; the calls only
    // read and write the set we own and this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        Ok(set)
    }
}

/// The first SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once.
/// SIGHUP reloads the configuration (see [`Reloader`]). The
/// other signals of [`SIGNALS`] are ignored and do not count.
pub(crate) fn wait_for_signals(
    set: libc::sigset_t,
    controls: Vec<(Sender<Control>, Arc<dyn Wake>)>,
    mut reloader: Reloader,
) {
    let mut first = true;
    loop {
        let mut sig = 0;
        // SAFETY: `set` is an initialized signal set and `sig` a valid out-pointer.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            continue;
        }
        if sig == libc::SIGHUP {
            crate::notify::reloading();
            reloader.reload();
            crate::notify::notify("READY=1");
            continue;
        }
        if sig == libc::SIGUSR1 || sig == libc::SIGUSR2 {
            tracing::debug!(signal = sig, "ignored");
            continue;
        }
        if !first {
            tracing::warn!(signal = sig, "second signal, exiting at once");
            std::process::exit(1);
        }
        first = false;
        crate::notify::notify("STOPPING=1");
        tracing::info!(signal = sig, "shutting down");
        for (tx, waker) in &controls {
            let _ = tx.try_send(Control::Shutdown);
            waker.wake();
        }
    }
}
