//! The descriptor budget: the soft `RLIMIT_NOFILE` raised to the hard one, and `max_connections` fitted to what it can serve.

/// Raises the soft descriptor limit to the hard one: each connection needs a descriptor.
/// Returns the soft limit in force (`u64::MAX` if it cannot be read: then nothing is fitted).
pub(crate) fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return u64::MAX;
        }
        if lim.rlim_cur < lim.rlim_max
            && libc::setrlimit(
                libc::RLIMIT_NOFILE,
                &libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    ..lim
                },
            ) == 0
        {
            lim.rlim_cur = lim.rlim_max;
        }
        lim.rlim_cur as u64
    }
}

/// Descriptors the count in [`fit_max_connections`] does not see, opened by libraries or
/// for a moment (recovery's directory reads, the stats file at exit).
const SPARE_DESCRIPTORS: u64 = 8;

/// Descriptors open now: stdin, stdout, stderr and whatever else the process inherited (a
/// test harness or a shell may pass on several). Three if `/proc` cannot tell.
fn open_descriptors() -> u64 {
    // The directory's own descriptor is counted too: one more, on the safe side.
    std::fs::read_dir("/proc/self/fd").map_or(3, |entries| entries.count() as u64)
}

/// Fewer connections than this is no server: refuse to start rather than lower to it.
const FEWEST_CONNECTIONS: usize = 8;

/// `max_connections`, lowered (with a warning) to what `open_files` descriptors can serve.
///
/// Besides its connections the process holds: the descriptors open now
/// ([`open_descriptors`]) and the spool's lock file; per worker, its listeners, its backend's
/// epoll or ring descriptor and eventfd, one for a connection over the limit (accepted only to
/// be answered `421` and closed; a flood can have more of those open within one turn, and
/// past the limit the backends answer them through their spare descriptor instead), the spare
/// descriptor the backend keeps to answer `421` when
/// even that accept fails, and its committer's handle on the spool directory; and
/// [`SPARE_DESCRIPTORS`]. A connection holds its socket and, while its message commits, the
/// `.eml` and the `.json` (the committer keeps both open from the writeback to the directory
/// fsync): 3 descriptors, 1 with `--sink`.
pub(crate) fn fit_max_connections(
    max_connections: usize,
    open_files: u64,
    workers: usize,
    listeners: usize,
    sink: bool,
) -> Result<usize, String> {
    let (lock, per_worker, per_connection) = if sink {
        (0, listeners as u64 + 4, 1)
    } else {
        (1, listeners as u64 + 5, 3)
    };
    let overhead = open_descriptors() + lock + workers as u64 * per_worker + SPARE_DESCRIPTORS;
    let fit = open_files.saturating_sub(overhead) / per_connection;
    let fit = usize::try_from(fit).unwrap_or(usize::MAX);
    if fit >= max_connections {
        return Ok(max_connections);
    }
    if fit < max_connections.min(FEWEST_CONNECTIONS) {
        return Err(format!(
            "the open-files limit {open_files} leaves room for {fit} connections; \
             raise it (ulimit -n, LimitNOFILE=)"
        ));
    }
    tracing::warn!(
        configured = max_connections,
        lowered = fit,
        open_files,
        "max_connections lowered to fit the open-files limit"
    );
    Ok(fit)
}
