//! Where log lines go: a bounded queue drained by one writer thread, so no worker ever waits on stderr; lines that do not fit are dropped and counted.
//!
//! A session's end line is written from the worker's event loop. Written straight to stderr,
//! a slow reader (a journal under pressure, a terminal, a full pipe) would stall every
//! session of that worker; through `tracing-appender`'s lossy non-blocking writer it costs a
//! formatted line and a channel send, and under overload the line is dropped instead
//! (counted, exported as `ringmx_log_lines_dropped_total`). The filter sits behind a reload
//! handle so SIGHUP can change `log_level` for the running process.
//!
//! [`Escaped`] is how text from the network (a HELO name, an address) appears in a field,
//! so that it can never forge a line or a field of one.

use crate::config::LogFormat;
use std::fmt::{self, Write};
use std::sync::{Mutex, OnceLock};
use tracing_appender::non_blocking::{ErrorCounter, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// Octets the writer thread gathers before a write to stderr; it writes whatever it has
/// whenever the queue runs dry, so a line waits for no later one. Under load, one write(2)
/// carries hundreds of lines instead of one each.
const WRITE_BUFFER: usize = 64 * 1024;

/// The process's logging, once [`init`] has run.
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    dropped: ErrorCounter,
    /// `RUST_LOG` was set: it wins over `log_level`, at start and on reload.
    from_env: bool,
    /// Dropped by [`finish`]: the statics are never dropped, and the lines still queued at
    /// exit (the shutdown's own) would go with the process.
    guard: Mutex<Option<WorkerGuard>>,
}

static LOGGING: OnceLock<Logging> = OnceLock::new();

/// Starts the writer thread and installs the subscriber: `level` (the `log_level` key) unless
/// `RUST_LOG` is set, lines in `format`, at most `buffer_lines` waiting. Only the first call
/// installs anything.
pub fn init(format: LogFormat, level: &str, buffer_lines: usize) -> Result<(), String> {
    let (from_env, filter) = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => (true, parse(&env).map_err(|e| format!("RUST_LOG: {e}"))?),
        _ => (false, parse(level)?),
    };
    let (filter, handle) = reload::Layer::new(filter);
    // The writer thread is started before the server blocks its signals for `sigwait`, and
    // a thread inherits its creator's mask: it is started with every signal blocked, so a
    // SIGTERM can never land on it (and end the process with its default action).
    let (writer, guard) = without_signals(|| {
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(buffer_lines)
            .thread_name("ringmx-log")
            .finish(std::io::BufWriter::with_capacity(WRITE_BUFFER, std::io::stderr()))
    });
    let dropped = writer.error_counter();
    let ansi = format == LogFormat::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(writer),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(writer),
        ),
    };
    let logging = Logging {
        filter: handle,
        dropped,
        from_env,
        guard: Mutex::new(Some(guard)),
    };
    if LOGGING.set(logging).is_err() {
        return Ok(());
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))
}

/// Runs `f` with every signal blocked in this thread, so the threads it starts have them
/// blocked; the mask is restored after.
fn without_signals<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: the sets are plain data initialized by sigfillset/pthread_sigmask before use;
    // the calls change only this thread's mask, restored below.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let out = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        out
    }
}

fn parse(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("log filter {directives:?}: {e}"))
}

/// Log lines dropped because the writer fell `log_buffer_lines` behind (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    LOGGING.get().map_or(0, |l| l.dropped.dropped_lines() as u64)
}

/// What a reload of `log_level` did.
#[derive(Debug, PartialEq, Eq)]
pub enum LevelChange {
    Applied,
    /// `RUST_LOG` is set and keeps precedence.
    KeptFromEnv,
    /// Logging was not initialized by [`init`] (a library user, a test).
    NotInstalled,
}

/// Makes `level` the filter from now on, unless `RUST_LOG` set it.
pub fn set_level(level: &str) -> Result<LevelChange, String> {
    let Some(logging) = LOGGING.get() else {
        return Ok(LevelChange::NotInstalled);
    };
    if logging.from_env {
        return Ok(LevelChange::KeptFromEnv);
    }
    let filter = parse(level)?;
    logging
        .filter
        .reload(filter)
        .map_err(|e| format!("cannot change the log filter: {e}"))?;
    Ok(LevelChange::Applied)
}

/// Writes out every queued line and stops the writer thread; lines logged after it are lost.
/// Called once, just before the process exits.
pub fn finish() {
    if let Some(logging) = LOGGING.get() {
        let guard = logging.guard.lock().map(|mut g| g.take());
        drop(guard);
    }
}

/// Text from a client or a next hop for a `key=value` field: UTF-8 as it is, anything that
/// could break the line, fake a field or end a list item (controls, spaces, quotes,
/// backslashes, commas, angle brackets, invalid UTF-8) as `\xNN`.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() || c.is_whitespace() || matches!(c, '"' | '\\' | ',' | '<' | '>') {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        write!(f, "\\x{b:02X}")?;
                    }
                } else {
                    f.write_char(c)?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02X}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn client_text_cannot_fake_a_field_or_break_the_line() {
        let s = Escaped(b"a b\"c\\d,e\r\n\xff\xc3\xa9<>").to_string();
        assert_eq!(s, "a\\x20b\\x22c\\x5Cd\\x2Ce\\x0D\\x0A\\xFF\u{e9}\\x3C\\x3E");
    }
}
