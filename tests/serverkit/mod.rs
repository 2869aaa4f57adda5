//! Helpers for tests that run the real `ringmx` binary: start it on a free loopback port, on a chosen backend and spool format, talk SMTP with timeouts, read the spool of either format, stop it.
#![allow(dead_code)] // each test binary uses a different part of this module

use ringmx_loadgen::reply::{parse_reply, Parse};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long anything in these tests may take before it counts as hung.
pub const LIMIT: Duration = Duration::from_secs(60);

thread_local! {
    /// The backend servers started on this thread use (see [`on_backend`]); none: the default.
    static BACKEND: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
    /// The spool format servers started on this thread use (see [`on_format`]); none: the
    /// default (`log`).
    static FORMAT: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Declares each test named under `formats` four times, as `epoll::files::NAME`,
/// `epoll::log::NAME`, `uring::files::NAME` and `uring::log::NAME`, each running the one body
/// through [`on_backend`] and [`on_format`]; and each named under `backends` twice, as
/// `epoll::NAME` and `uring::NAME`, on the default spool format (tests that do not touch the
/// spool, or choose their format themselves). One invocation per test file, as both lists
/// share the `epoll` and `uring` modules (the test files take it with `#[macro_use] mod
/// serverkit;`).
#[allow(unused_macros)] // as the module's dead_code: not every test binary runs on both
macro_rules! on_backends_and_formats {
    (formats: [$($name:ident),* $(,)?], backends: [$($plain:ident),* $(,)?] $(,)?) => {
        on_backends_and_formats!(@backend epoll, [$($name),*], [$($plain),*]);
        on_backends_and_formats!(@backend uring, [$($name),*], [$($plain),*]);
    };
    (@backend $backend:ident, [$($name:ident),*], [$($plain:ident),*]) => {
        mod $backend {
            $(
                #[test]
                fn $plain() {
                    crate::serverkit::on_backend(stringify!($backend), super::$plain)
                }
            )*
            mod files {
                $(
                    #[test]
                    fn $name() {
                        crate::serverkit::on_format("files", || {
                            crate::serverkit::on_backend(stringify!($backend), super::super::$name)
                        })
                    }
                )*
            }
            mod log {
                $(
                    #[test]
                    fn $name() {
                        crate::serverkit::on_format("log", || {
                            crate::serverkit::on_backend(stringify!($backend), super::super::$name)
                        })
                    }
                )*
            }
        }
    };
}

/// Declares each named test body twice, as `files::NAME` and `log::NAME`, each running it
/// through [`on_format`] (for tests that pick their backend themselves).
#[allow(unused_macros)] // as the module's dead_code
macro_rules! on_both_formats {
    ($($name:ident),* $(,)?) => {
        mod files {
            $( #[test] fn $name() { crate::serverkit::on_format("files", super::$name) } )*
        }
        mod log {
            $( #[test] fn $name() { crate::serverkit::on_format("log", super::$name) } )*
        }
    };
}

/// Runs `test` with every server it starts (on this thread) using `backend`; on uring, skips
/// it (saying why) where the kernel lacks what that backend uses.
pub fn on_backend(backend: &'static str, test: fn()) {
    if backend == "uring" {
        if let Err(missing) = ringmx::backend::uring::probe() {
            eprintln!("skipped on uring: io_uring unusable here ({missing})");
            return;
        }
    }
    BACKEND.set(Some(backend));
    test();
}

/// Runs `test` with every server it starts (on this thread) storing messages in the spool
/// format `format` (`files` or `log`), unless its arguments name one or `--sink`.
pub fn on_format(format: &'static str, test: impl FnOnce()) {
    FORMAT.set(Some(format));
    test();
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringmx-test-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `--stats-file` JSON as dotted paths to numbers: `{"io":{"reads":3}}` gives
/// `io.reads = 3`.
pub fn flatten_stats(text: &str) -> HashMap<String, u64> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut HashMap<String, u64>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::Number(n) => {
                out.insert(
                    prefix.to_string(),
                    n.as_u64().expect("counters are whole numbers"),
                );
            }
            other => panic!("stats file: {prefix} is {other}, not a counter"),
        }
    }
    let value: serde_json::Value = serde_json::from_str(text).expect("stats file is JSON");
    let mut out = HashMap::new();
    walk("", &value, &mut out);
    out
}

/// The `--spool-format` to add to a server's `args`: this thread's (see [`on_format`]),
/// unless the arguments name one or store nothing.
fn spool_format(args: &[&str]) -> Option<&'static str> {
    FORMAT
        .get()
        .filter(|_| !args.contains(&"--spool-format") && !args.contains(&"--sink"))
}

/// A running `ringmx serve`.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The first implicit TLS listener, when `--listen-tls` was given.
    pub tls_addr: Option<SocketAddr>,
    pub spool: PathBuf,
    stats_file: PathBuf,
    log: Arc<Mutex<String>>,
    /// The read end of the stderr pipe nobody reads (`Options::log_unread`).
    unread: Option<std::os::fd::OwnedFd>,
    terminated: std::cell::Cell<bool>,
    dir: Option<TempDir>,
}

/// What a stopped server left; its spool lives as long as this.
pub struct Stopped {
    pub status: ExitStatus,
    pub log: String,
    pub stats: HashMap<String, u64>,
    pub spool: PathBuf,
    _dir: Option<TempDir>,
}

/// Options for [`Server::start_with`].
#[derive(Default)]
pub struct Options<'a> {
    pub args: &'a [&'a str],
    /// RLIMIT_FSIZE for the server process, in octets.
    pub file_size_limit: Option<u64>,
    /// RLIMIT_NOFILE (soft and hard) for the server process.
    pub open_files_limit: Option<u64>,
    /// Environment variables set for the server process.
    pub env: &'a [(&'a str, &'a str)],
    /// Stop reading the server's stderr once it has started, keeping the pipe open, so its
    /// buffer fills (a stalled log reader); it is drained again at [`Server::stop`].
    pub log_unread: bool,
}

impl Server {
    /// Starts `ringmx serve --listen 127.0.0.1:0` with a fresh spool, a stats file, one
    /// worker unless `args` say otherwise, and `args`.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(Options {
            args,
            ..Options::default()
        })
    }

    pub fn start_with(options: Options<'_>) -> Server {
        let dir = TempDir::new("server");
        let spool = dir.0.join("spool");
        let stats_file = dir.0.join("stats");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmx"));
        cmd.arg("serve").args(["--listen", "127.0.0.1:0"]);
        cmd.arg("--stats-file").arg(&stats_file);
        if !options.args.contains(&"--sink") && !options.args.contains(&"--spool") {
            cmd.arg("--spool").arg(&spool);
        }
        if !options.args.contains(&"--workers") {
            cmd.args(["--workers", "1"]);
        }
        cmd.args(options.args);
        if let Some(backend) = BACKEND.get() {
            if !options.args.contains(&"--backend") {
                cmd.args(["--backend", backend]).env_remove("RINGMX_BACKEND");
            }
        }
        let format = spool_format(options.args);
        if let Some(format) = format {
            cmd.args(["--spool-format", format]);
        }
        cmd.env("RUST_LOG", "info");
        cmd.envs(options.env.iter().copied());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let (fsize, nofile) = (options.file_size_limit, options.open_files_limit);
        // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for (resource, limit) in [(libc::RLIMIT_FSIZE, fsize), (libc::RLIMIT_NOFILE, nofile)] {
                    let Some(limit) = limit else { continue };
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(resource, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if fsize.is_some() {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start ringmx");
        let stderr = child.stderr.take().unwrap();
        let unread = options
            .log_unread
            .then(|| std::os::fd::AsFd::as_fd(&stderr).try_clone_to_owned().unwrap());
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        let stop_reading = options.log_unread;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                {
                    let mut log = log2.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                // After the line is in the log, so a started server's log holds its start line.
                if line.contains("ringmx started") {
                    let _ = tx.send(line);
                    if stop_reading {
                        break;
                    }
                }
            }
        });
        // The first address after `key=` (or `"key":"`, JSON) on the start line; none for `-`.
        let first = |line: &str, key: &str| -> Option<SocketAddr> {
            let rest = line
                .split(&format!(" {key}="))
                .nth(1)
                .or_else(|| line.split(&format!("\"{key}\":\"")).nth(1))?;
            rest.split([' ', ',', '"']).next()?.parse().ok()
        };
        let (addr, tls_addr) = match rx.recv_timeout(LIMIT) {
            Ok(line) => (
                first(&line, "listeners").expect("listening address"),
                first(&line, "tls_listeners"),
            ),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                panic!("server did not start ({status}): {}", log.lock().unwrap());
            }
        };
        if let Some(backend) = BACKEND.get() {
            let log = log.lock().unwrap();
            assert!(
                log.contains(&format!("backend=\"{backend}\""))
                    || log.contains(&format!("\"backend\":\"{backend}\"")),
                "not on {backend}: {log}"
            );
        }
        if let Some(format) = format {
            let log = log.lock().unwrap();
            let started = log.lines().find(|l| l.contains("ringmx started"));
            assert!(
                started.is_some_and(|l| l.contains(&format!(" ({format}"))),
                "not on the {format} spool format: {log}"
            );
        }
        Server {
            child: Some(child),
            addr,
            tls_addr,
            spool,
            stats_file,
            log,
            unread,
            terminated: std::cell::Cell::new(false),
            dir: Some(dir),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Connects and reads the `220` greeting.
    pub fn connect_greeted(&self) -> Client {
        let mut c = self.connect();
        let greeting = c.reply();
        assert!(greeting.starts_with("220 "), "{greeting}");
        c
    }

    /// Sends SIGTERM without waiting (once: a second one makes the server exit at once).
    pub fn terminate(&self) {
        if self.terminated.replace(true) {
            return;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
    }

    /// Sends `signal` (a `libc::SIG*`) without waiting.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits (bounded) until the log holds `text`.
    pub fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + LIMIT;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident set size of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn stop(mut self) -> Stopped {
        if let Some(fd) = self.unread.take() {
            // The stalled reader comes back, so the server's last lines can leave at exit.
            std::thread::spawn(move || std::io::copy(&mut std::fs::File::from(fd), &mut std::io::sink()));
        }
        self.terminate();
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not stop: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The log thread ends with the pipe; give it a moment to take the last lines.
        std::thread::sleep(Duration::from_millis(50));
        let stats = std::fs::read_to_string(&self.stats_file)
            .map(|text| flatten_stats(&text))
            .unwrap_or_default();
        Stopped {
            status,
            log: self.log(),
            stats,
            spool: self.spool.clone(),
            _dir: self.dir.take(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Stopped {
    /// Asserts a clean exit (status 0, not a signal).
    pub fn assert_clean(&self) {
        assert_eq!(
            self.status.code(),
            Some(0),
            "exit {:?} signal {:?}\n{}",
            self.status.code(),
            self.status.signal(),
            self.log
        );
    }
}

/// A raw SMTP client with timeouts.
/// Opens `sessions` connections to `addr` from `threads` client threads, each greeted before
/// any thread goes on, so all are open at once; then each thread runs `each(thread, clients)`
/// on its share and the call returns when all have finished.
pub fn all_at_once(addr: SocketAddr, sessions: usize, threads: usize, each: fn(usize, &mut [Client])) {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut clients: Vec<Client> = (0..sessions / threads)
                    .map(|_| {
                        let mut c = Client::connect(addr);
                        assert!(c.reply().starts_with("220 "));
                        c
                    })
                    .collect();
                barrier.wait();
                each(t, &mut clients);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// Reads one complete reply, every line of it, from what `buf` holds and then from `from`,
/// through the load generator's reply parser (written apart from the server's code, so it
/// does not share the server's mistakes); anything that is not a well-formed reply fails the
/// test. What follows the reply stays in `buf`.
pub fn read_reply(buf: &mut Vec<u8>, from: &mut impl Read) -> String {
    loop {
        match parse_reply(buf) {
            Parse::Complete(reply) => {
                let text: Vec<u8> = buf.drain(..reply.len).collect();
                return String::from_utf8_lossy(&text).into_owned();
            }
            Parse::Invalid(why) => panic!("not an SMTP reply ({why}): {}", show(buf)),
            Parse::Incomplete => {}
        }
        let mut chunk = [0u8; 4096];
        let n = from.read(&mut chunk).expect("read reply");
        assert!(n > 0, "connection closed while waiting for a reply");
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, LIMIT).expect("connect");
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        stream.set_write_timeout(Some(LIMIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads one complete reply (see [`read_reply`]).
    pub fn reply(&mut self) -> String {
        read_reply(&mut self.buf, &mut self.stream)
    }

    /// Sends one command line and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Reads until the server closes the connection.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
                Err(e) => panic!("read: {e} after {}", String::from_utf8_lossy(&all)),
            }
        }
    }

    /// The connection, for a TLS client to take over after STARTTLS's `220`; nothing may be
    /// left unread.
    pub fn into_stream(self) -> TcpStream {
        assert!(self.buf.is_empty(), "unread bytes: {}", show(&self.buf));
        self.stream
    }

    pub fn half_close(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Writes with `step` (one non-blocking write of some pipelined commands, returning what it
/// wrote) without ever reading, until the server has taken nothing for 1 s, 256 MiB went, or
/// [`LIMIT`] passed; returns the octets taken.
pub fn write_until_refused(mut step: impl FnMut() -> std::io::Result<usize>) -> usize {
    let (mut written, mut stalled_since) = (0usize, None);
    let start = Instant::now();
    while written < 256 << 20 && start.elapsed() < LIMIT {
        match step() {
            Ok(n) => {
                written += n;
                stalled_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    written
}

/// A committed message: its id, `.eml` bytes and `.json` text.
pub struct Spooled {
    pub id: String,
    pub eml: Vec<u8>,
    pub json: String,
}

impl Spooled {
    /// The message as received: the `.eml` without its `Received:` header.
    pub fn content(&self) -> &[u8] {
        let mut i = 0;
        let mut first = true;
        while i < self.eml.len() {
            let end = self.eml[i..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.eml.len(), |p| i + p + 1);
            let folded = matches!(self.eml[i], b' ' | b'\t');
            if !first && !folded {
                break;
            }
            first = false;
            i = end;
        }
        &self.eml[i..]
    }
}

/// Every committed message in id order, from a spool of either format. `files`: each `.json`
/// with its `.eml`; panics on any other file, including anything left in `tmp/`. `log` (the
/// spool has a `log/`): as `ringmx spool export` writes them, which must succeed, after
/// `ringmx spool check` passed; panics on anything in the spool but its segments, their done
/// files, the lock and an empty `tmp/`.
pub fn spooled(dir: &Path) -> Vec<Spooled> {
    let log = dir.join("log");
    if !log.exists() {
        return read_files(dir);
    }
    no_leftovers_in_tmp(dir);
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            ["log", "tmp", "ringmx.lock"].contains(&name.as_str()),
            "{name} in a log spool"
        );
    }
    for entry in std::fs::read_dir(&log).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let stem = name.strip_suffix(".seg").or_else(|| name.strip_suffix(".done"));
        assert!(
            stem.is_some_and(|s| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())),
            "{name} in the spool's log/"
        );
    }
    let check = spool_tool("check", dir, None);
    assert!(check.status.success(), "spool check: {}", output(&check));
    let out = TempDir::new("export");
    let export = spool_tool("export", dir, Some(&out.0));
    assert!(export.status.success(), "spool export: {}", output(&export));
    let stored = read_files(&out.0);
    assert_eq!(
        String::from_utf8_lossy(&export.stdout),
        format!("exported {} messages to {}\n", stored.len(), out.0.display())
    );
    stored
}

/// How many messages a spool of either format has committed so far; unlike [`spooled`], fine
/// while messages are in flight.
pub fn committed(dir: &Path) -> usize {
    let json = |dir: &Path| {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "json")
            })
            .count()
        })
    };
    if !dir.join("log").exists() {
        return json(dir);
    }
    let out = TempDir::new("committed");
    let export = spool_tool("export", dir, Some(&out.0));
    assert!(export.status.success(), "spool export: {}", output(&export));
    json(&out.0)
}

/// Whether a message has reached a spool of either format and is in flight there: its files
/// in `tmp/` (`files`), or a segment in `log/` (`log`: nothing is in one before a message
/// starts), which is what a second server's recovery would delete.
pub fn in_flight(dir: &Path) -> bool {
    let log = dir.join("log");
    let (place, ext) = if log.exists() {
        (log, Some("seg"))
    } else {
        (dir.join("tmp"), None)
    };
    std::fs::read_dir(place).is_ok_and(|mut d| {
        d.any(|e| ext.is_none_or(|ext| e.unwrap().path().extension().is_some_and(|x| x == ext)))
    })
}

/// Runs `ringmx spool COMMAND --spool DIR` (and `--to TO`).
fn spool_tool(command: &str, dir: &Path, to: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmx"));
    cmd.args(["spool", command, "--spool"]).arg(dir);
    if let Some(to) = to {
        cmd.arg("--to").arg(to);
    }
    cmd.output().expect("run ringmx spool")
}

fn output(out: &std::process::Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn no_leftovers_in_tmp(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir.join("tmp")) {
        let left: Vec<_> = entries.map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "uncommitted files in the spool: {left:?}");
    }
}

/// The messages of a `files` spool (or of an export): see [`spooled`].
fn read_files(dir: &Path) -> Vec<Spooled> {
    let mut ids = Vec::new();
    let mut names = Vec::new();
    no_leftovers_in_tmp(dir);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name == "tmp" || name == "ringmx.lock" {
                continue;
            }
            if let Some(id) = name.strip_suffix(".json") {
                ids.push(id.to_string());
            }
            names.push(name);
        }
    }
    ids.sort();
    for name in &names {
        let id = name.split('.').next().unwrap();
        assert!(
            ids.iter().any(|i| i == id) && (name.ends_with(".json") || name.ends_with(".eml")),
            "uncommitted file {name} in the spool"
        );
    }
    ids.into_iter()
        .map(|id| Spooled {
            eml: std::fs::read(dir.join(format!("{id}.eml"))).unwrap(),
            json: std::fs::read_to_string(dir.join(format!("{id}.json"))).unwrap(),
            id,
        })
        .collect()
}

/// Replaces every queue id in `250 2.0.0 Ok: queued as ID` replies with `TESTID`.
pub fn mask_queue_ids(output: &[u8]) -> Vec<u8> {
    const MARK: &[u8] = b"queued as ";
    let mut out = Vec::with_capacity(output.len());
    let mut i = 0;
    while i < output.len() {
        if output[i..].starts_with(MARK) {
            out.extend_from_slice(MARK);
            out.extend_from_slice(b"TESTID");
            i += MARK.len();
            while i < output.len() && output[i].is_ascii_alphanumeric() {
                i += 1;
            }
        } else {
            out.push(output[i]);
            i += 1;
        }
    }
    out
}

/// Shows bytes with CR and LF visible.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace('\r', "\\r")
        .replace('\n', "\\n\n")
}

/// Runs `ringmx serve --workers 1 ARGS` (on this thread's backend, and with no address or
/// spool but those in `args`), which must refuse to start; returns its exit status and log.
/// Panics if it starts instead.
pub fn start_refused(args: &[&str]) -> (ExitStatus, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmx"));
    cmd.args(["serve", "--workers", "1"]).args(args);
    if let Some(backend) = BACKEND.get() {
        cmd.args(["--backend", backend]).env_remove("RINGMX_BACKEND");
    }
    if let Some(format) = spool_format(args) {
        cmd.args(["--spool-format", format]);
    }
    cmd.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start ringmx");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + LIMIT;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("ringmx started") {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the second server started:\n{log}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the second server neither started nor exited:\n{log}");
            }
        }
    }
    (child.wait().unwrap(), log)
}
