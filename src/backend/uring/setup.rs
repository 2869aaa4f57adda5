//! Setting up a worker's io_uring: checking that the kernel has what the backend uses, and building the ring with the best setup flags the kernel takes.
//!
//! The ring is set up with `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` where the
//! kernel takes it (else with `COOP_TASKRUN`, else `SINGLE_ISSUER` alone, as with SQPOLL, else
//! plain) and `IORING_SETUP_R_DISABLED`: it is built on the main thread and enabled by the
//! worker thread on its first wait, which makes that thread the ring's single issuer.

use super::bufring::BufRing;
use crate::backend::BackendConfig;
use io_uring::{opcode, IoUring, Probe};
use std::io;

/// Checks that this kernel has everything the backend uses; the error names what is missing.
///
/// The probe runs in a thread of its own: the kernel tears a ring down in a work item that
/// then notifies the thread that used it (TWA_SIGNAL task work), which makes a blocking read
/// with a timeout in that thread fail with `EINTR`, a trap for any caller.
pub fn probe() -> Result<(), String> {
    std::thread::spawn(probe_here)
        .join()
        .unwrap_or_else(|_| Err("the io_uring probe panicked".to_string()))
}

fn probe_here() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let mut missing = Vec::new();
    if !ring.params().is_feature_ext_arg() {
        missing.push("IORING_FEAT_EXT_ARG (timed waits, 5.11)");
    }
    if !ring.params().is_feature_nodrop() {
        missing.push("IORING_FEAT_NODROP (5.5)");
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    let ops = [
        (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT"),
        (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
        (opcode::Send::CODE, "IORING_OP_SEND"),
        (opcode::AsyncCancel2::CODE, "IORING_OP_ASYNC_CANCEL"),
        (opcode::Close::CODE, "IORING_OP_CLOSE"),
        (opcode::Read::CODE, "IORING_OP_READ"),
        // Multishot receive came with 6.0, as did zero-copy send: the probe cannot see the
        // former, so the latter stands for the kernel version.
        (
            opcode::SendZc::CODE,
            "IORING_OP_SEND_ZC (kernel 6.0, for multishot receive)",
        ),
    ];
    for (code, name) in ops {
        if !probe.is_supported(code) {
            missing.push(name);
        }
    }
    if let Err(e) = BufRing::new(&ring, 1, 4096) {
        return Err(format!("provided-buffer ring registration failed: {e}"));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing {}", missing.join(", ")))
    }
}

/// A ring as built, disabled until its worker's first wait.
pub(super) struct Built {
    pub ring: IoUring,
    /// The setup flags the kernel took, for the log.
    pub setup: &'static str,
    /// The kernel flags deferred completions in the SQ ring (`IORING_SETUP_TASKRUN_FLAG`).
    pub taskrun_flag: bool,
}

/// Flags added to a ring's setup.
type SetupFlags = fn(&mut io_uring::Builder);

/// Builds a ring of `config.uring_entries` with the best setup this kernel takes.
pub(super) fn build(config: &BackendConfig) -> io::Result<Built> {
    let cq = config.uring_entries.saturating_mul(4);
    // Best first. DEFER_TASKRUN (6.1) runs completion work only when this thread waits, the
    // fewest interruptions; COOP_TASKRUN (5.19) at least does not interrupt it with IPIs;
    // SQPOLL takes neither, but SINGLE_ISSUER (6.0) still spares the kernel some locking.
    let attempts: [(&'static str, SetupFlags); 4] = [
        ("single_issuer+defer_taskrun", |b| {
            b.setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag();
        }),
        ("single_issuer+coop_taskrun", |b| {
            b.setup_single_issuer().setup_coop_taskrun().setup_taskrun_flag();
        }),
        ("single_issuer", |b| {
            b.setup_single_issuer();
        }),
        ("plain", |_| {}),
    ];
    let mut last = None;
    for (setup, flags) in attempts {
        let mut builder = IoUring::builder();
        builder.setup_r_disabled().setup_cqsize(cq);
        if config.uring_sqpoll {
            builder.setup_sqpoll(1000);
        }
        flags(&mut builder);
        match builder.build(config.uring_entries) {
            Ok(ring) => {
                return Ok(Built {
                    ring,
                    setup,
                    taskrun_flag: setup.ends_with("taskrun"),
                })
            }
            // EINVAL: a flag this kernel does not know (or refuses with SQPOLL); try fewer.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one attempt"))
}
