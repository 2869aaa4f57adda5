//! systemd's readiness protocol (`sd_notify`): one datagram to `$NOTIFY_SOCKET` when the server is ready, reloading, ready again and stopping, so `Type=notify` units know its state.
//!
//! The protocol is a newline-separated `KEY=VALUE` datagram on a Unix socket whose path (or,
//! with a leading `@`, abstract name) systemd puts in the environment (sd_notify(3)); it is
//! a few lines, not worth a dependency. Without the variable (not under systemd, or
//! `Type=exec`) every call does nothing. A failed send is logged at debug and otherwise
//! ignored: the server's work never waits on its supervisor.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (`READY=1`, `STOPPING=1`, …) to the service manager, if there is one.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(std::path::Path::new(&path)),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}

/// `RELOADING=1` with the `MONOTONIC_USEC` systemd ≥ 253 asks for, so it can tell this
/// reload from an earlier one; `READY=1` follows when the reload is done (or refused).
pub fn reloading() {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}
