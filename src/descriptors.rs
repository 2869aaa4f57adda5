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

/// Where accepted messages go, as far as descriptors are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    /// `--sink`: nothing is written.
    Sink,
    /// `spool_format = "files"`: two files per message while it commits.
    Files,
    /// `spool_format = "log"`: each worker's segments, however many connections.
    Log,
}

/// What the process runs besides its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Needs {
    pub workers: usize,
    /// Listening sockets per worker (`SO_REUSEPORT`: each worker has its own).
    pub listeners: usize,
    pub store: Storage,
    /// What delivery may hold at once ([`crate::delivery::descriptors`]), 0 without it.
    pub delivery: u64,
    /// The `/metrics` endpoint: its listener and the one scrape it serves at a time.
    pub metrics: bool,
}

/// `max_connections`, lowered (with a warning) to what `open_files` descriptors can serve.
///
/// Besides its connections the process holds: the descriptors open now
/// ([`open_descriptors`]), the spool's lock file, delivery's ([`Needs::delivery`]) and the
/// metrics endpoint's; per worker, its listeners, its backend's epoll or ring descriptor and
/// eventfd, one for a connection over the limit (accepted only to be answered `421` and
/// closed; a flood can have more of those open within one turn, and past the limit the
/// backends answer them through their spare descriptor instead), the spare descriptor the
/// backend keeps to answer `421` when even that accept fails, and its committer's: with
/// `files` its handle on the spool directory, with `log` its segments
/// ([`crate::spool::log::COMMITTER_DESCRIPTORS`]); and [`SPARE_DESCRIPTORS`]. A connection
/// holds its socket and, with `files`, while its message commits, the `.eml` and the `.json`
/// (the committer keeps both open from the writeback to the directory fsync): 3 descriptors
/// with `files`, 1 with `log` (its records go to the worker's segments) or `--sink`.
pub(crate) fn fit_max_connections(
    max_connections: usize,
    open_files: u64,
    needs: &Needs,
) -> Result<usize, String> {
    let listeners = needs.listeners as u64;
    let (lock, per_worker, per_connection) = match needs.store {
        Storage::Sink => (0, listeners + 4, 1),
        Storage::Files => (1, listeners + 5, 3),
        Storage::Log => (1, listeners + 4 + crate::spool::log::COMMITTER_DESCRIPTORS, 1),
    };
    let overhead = open_descriptors()
        + lock
        + needs.delivery
        + if needs.metrics { 2 } else { 0 }
        + needs.workers as u64 * per_worker
        + SPARE_DESCRIPTORS;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(store: Storage) -> Needs {
        Needs {
            workers: 2,
            listeners: 1,
            store,
            delivery: 0,
            metrics: false,
        }
    }

    #[test]
    fn a_log_spool_connection_costs_one_descriptor_and_files_three() {
        // The machine of the soak: 20,000 descriptors, 2 workers, one listener.
        let log = fit_max_connections(100_000, 20_000, &needs(Storage::Log)).unwrap();
        let files = fit_max_connections(100_000, 20_000, &needs(Storage::Files)).unwrap();
        let sink = fit_max_connections(100_000, 20_000, &needs(Storage::Sink)).unwrap();
        assert!(log > 19_900 && log < 20_000, "{log}");
        assert!(files > 6_600 && files < 6_667, "{files}");
        assert!(sink > log, "{sink} {log}");
        // Delivery's and the metrics' descriptors come off the top.
        let mut with = needs(Storage::Log);
        with.delivery = 100;
        with.metrics = true;
        assert_eq!(fit_max_connections(100_000, 20_000, &with).unwrap(), log - 102);
        // A limit that fits is kept; one that leaves no room is refused.
        assert_eq!(
            fit_max_connections(10_000, 20_000, &needs(Storage::Log)),
            Ok(10_000)
        );
        assert!(fit_max_connections(10_000, 30, &needs(Storage::Files)).is_err());
    }
}
