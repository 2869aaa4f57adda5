//! `ringmx queue`: the requests (list, flush, delete, hold, release, stats), the owner-only control socket a running server answers them on, and the same actions on the spool of a stopped server.
//!
//! The socket is `DIR/control.sock`, mode 0600, and each connection's peer must be this
//! process's user or root (`SO_PEERCRED`), which also covers the instant between the bind and
//! the chmod. One request line in (`list`, `list json`, `flush [ID]`, `delete ID`, `hold ID`,
//! `release ID`, `stats`), then `ok` or `error: ...` and the answer, then the server closes.

use super::runner::Control;
use super::state::{unix_now, StateStore};
use crossbeam_channel::Sender;
use serde::Serialize;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The control socket's name in the spool directory.
pub const SOCKET: &str = "control.sock";

/// Longest request line: an action and a queue id.
const REQUEST_MAX: u64 = 256;

/// A request of `ringmx queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    List {
        json: bool,
    },
    /// Every deferred message now, or one.
    Flush(Option<String>),
    Delete(String),
    Hold(String),
    Release(String),
    Stats,
}

impl Request {
    pub fn parse(line: &str) -> Result<Request, String> {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        let id = |w: Option<&&str>| -> Result<String, String> {
            let id = w.ok_or("a queue id is needed")?;
            if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("{id:?} is not a queue id"));
            }
            Ok(id.to_string())
        };
        match words.as_slice() {
            ["list"] => Ok(Request::List { json: false }),
            ["list", "json"] => Ok(Request::List { json: true }),
            ["flush"] => Ok(Request::Flush(None)),
            ["flush", rest @ ..] if rest.len() == 1 => Ok(Request::Flush(Some(id(rest.first())?))),
            ["delete", rest @ ..] if rest.len() == 1 => Ok(Request::Delete(id(rest.first())?)),
            ["hold", rest @ ..] if rest.len() == 1 => Ok(Request::Hold(id(rest.first())?)),
            ["release", rest @ ..] if rest.len() == 1 => Ok(Request::Release(id(rest.first())?)),
            ["stats"] => Ok(Request::Stats),
            _ => Err(format!("unknown request {line:?}")),
        }
    }

    pub fn line(&self) -> String {
        match self {
            Request::List { json: false } => "list".into(),
            Request::List { json: true } => "list json".into(),
            Request::Flush(None) => "flush".into(),
            Request::Flush(Some(id)) => format!("flush {id}"),
            Request::Delete(id) => format!("delete {id}"),
            Request::Hold(id) => format!("hold {id}"),
            Request::Release(id) => format!("release {id}"),
            Request::Stats => "stats".into(),
        }
    }
}

/// A recipient as the listing shows it.
#[derive(Debug, Serialize)]
pub struct ListedRcpt {
    pub address: String,
    /// `pending`, `deferred`, `held`, `failed` (waiting for its notification) or `done`.
    pub state: &'static str,
    /// The last reply, when there was one (`null` in JSON otherwise).
    pub reply: Option<String>,
    /// Seconds since the epoch of its next attempt when deferred; 0 otherwise.
    pub next_attempt: u64,
}

/// A message as the listing shows it.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub id: String,
    pub age_secs: u64,
    pub size: u64,
    pub sender: String,
    pub held: bool,
    pub attempts: u32,
    /// Seconds since the epoch; 0 when due now.
    pub next_attempt: u64,
    pub recipients: Vec<ListedRcpt>,
}

/// The listing: like `mailq`, one line per message (id, age, size, sender, each recipient with
/// its state), or one JSON object per line.
pub fn format_list(listed: &[Listed], json: bool) -> String {
    let mut out = String::new();
    let now = unix_now();
    for m in listed {
        if json {
            let _ = writeln!(out, "{}", serde_json::to_string(m).unwrap_or_default());
            continue;
        }
        let _ = write!(out, "{}  {}s  {}  <{}>", m.id, m.age_secs, m.size, m.sender);
        for r in &m.recipients {
            let _ = write!(out, "  <{}> {}", r.address, r.state);
            if let Some(reply) = &r.reply {
                let _ = write!(out, " ({reply})");
            }
            if r.state == "deferred" && m.next_attempt > now {
                let _ = write!(out, " next in {}s", m.next_attempt - now);
            }
        }
        out.push('\n');
    }
    out
}

/// Answers the control socket of `spool` on its own thread, forwarding each request to the
/// runner. Returns the socket's path (removed at shutdown by [`remove`]).
pub(crate) fn serve(spool: &Path, runner: Sender<Control>) -> io::Result<PathBuf> {
    let path = spool.join(SOCKET);
    // A socket left by a server that was killed: the spool lock says nobody else has it.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("ringmx-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Err(e) = answer(stream, &runner) {
                    tracing::debug!(error = %e, "control connection ended");
                }
            }
        })?;
    Ok(path)
}

fn answer(stream: UnixStream, runner: &Sender<Control>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    if !peer_allowed(&stream) {
        let mut s = &stream;
        return s.write_all(b"error: permission denied\n");
    }
    let mut line = String::new();
    BufReader::new((&stream).take(REQUEST_MAX)).read_line(&mut line)?;
    let result = match Request::parse(line.trim_end()) {
        Ok(req) => {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let _ = runner.send(Control::Request(req, tx));
            rx.recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| Err("the queue runner did not answer".into()))
        }
        Err(e) => Err(e),
    };
    let mut s = &stream;
    match result {
        Ok(text) => {
            s.write_all(b"ok\n")?;
            s.write_all(text.as_bytes())
        }
        Err(e) => s.write_all(format!("error: {e}\n").as_bytes()),
    }
}

/// Whether the peer runs as this process's user or as root.
fn peer_allowed(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: `cred` is plain data the kernel fills; `len` holds its size; the descriptor is
    // the stream's own, open for the call's duration.
    unsafe {
        let mut cred: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        );
        rc == 0 && (cred.uid == 0 || cred.uid == libc::geteuid())
    }
}

/// Removes the socket at shutdown.
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// What `ringmx queue` does: asks the running server, or, if none answers on the socket,
/// acts on the spool itself under the spool lock.
pub fn run(spool: &Path, req: &Request) -> Result<String, String> {
    match UnixStream::connect(spool.join(SOCKET)) {
        Ok(mut s) => {
            s.write_all(format!("{}\n", req.line()).as_bytes())
                .map_err(|e| e.to_string())?;
            let mut text = String::new();
            s.read_to_string(&mut text).map_err(|e| e.to_string())?;
            match text.split_once('\n') {
                Some(("ok", rest)) => Ok(rest.to_string()),
                Some((err, _)) => Err(err.strip_prefix("error: ").unwrap_or(err).to_string()),
                None => Err(format!("unexpected answer {text:?}")),
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            offline(spool, req)
        }
        Err(e) => Err(format!("{}: {e}", spool.join(SOCKET).display())),
    }
}

/// The actions on a stopped server's spool. Flush, hold and release change the saved state
/// the server reads at its next start.
fn offline(spool: &Path, req: &Request) -> Result<String, String> {
    let _lock = crate::spool::lock(spool)
        .map_err(|e| format!("{e} (and no server answers on {})", spool.join(SOCKET).display()))?;
    let queue = super::open_queue(spool).map_err(|e| e.to_string())?;
    let states = StateStore::open(spool).map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    let exists = |id: &str| -> Result<(), String> { queue.get(id).map(|_| ()).map_err(|e| e.to_string()) };
    match req {
        Request::List { json } => {
            let listed: Vec<Listed> = queue
                .list()
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|q| {
                    let state = states.load(&q.meta.id);
                    super::message::listed(q, state, now)
                })
                .collect();
            Ok(format_list(&listed, *json))
        }
        Request::Flush(id) => {
            let ids = match id {
                Some(id) => {
                    exists(id)?;
                    vec![id.clone()]
                }
                None => states.ids().map_err(|e| e.to_string())?,
            };
            let mut n = 0;
            for id in ids {
                if let Some(mut s) = states.load(&id) {
                    s.next_attempt = 0;
                    states.save(&id, &s, true).map_err(|e| e.to_string())?;
                    n += 1;
                }
            }
            Ok(format!("flushed {n}\n"))
        }
        Request::Hold(id) | Request::Release(id) => {
            exists(id)?;
            let mut s = states.load(id).unwrap_or_default();
            s.held = matches!(req, Request::Hold(_));
            if !s.held {
                s.next_attempt = 0;
            }
            states.save(id, &s, true).map_err(|e| e.to_string())?;
            Ok(format!("{} {id}\n", if s.held { "held" } else { "released" }))
        }
        Request::Delete(id) => {
            queue.delete(id).map_err(|e| e.to_string())?;
            states.remove(id);
            Ok(format!("deleted {id}\n"))
        }
        Request::Stats => Err("stats needs a running server".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_print_back() {
        for line in [
            "list",
            "list json",
            "flush",
            "flush 0ABC",
            "delete 0ABC",
            "hold X1",
            "release X1",
            "stats",
        ] {
            assert_eq!(Request::parse(line).unwrap().line(), line);
        }
        for bad in ["", "lsit", "delete", "delete a b", "hold ../x", "flush a/b"] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
    }
}
