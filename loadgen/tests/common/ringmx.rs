//! The real ringmx server for the load generator's tests: built if need be, started on a free loopback port from a TOML configuration, stopped when dropped.
//!
//! The load generator does not depend on the `ringmx` crate, so its tests find the binary
//! themselves: `RINGMX_BIN` if set, else `ringmx` beside the load generator's binary (the
//! same target directory and profile), built there with cargo first, so the tests run the
//! workspace's current server.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How long the server may take to start.
const START_LIMIT: Duration = Duration::from_secs(60);

/// The binary, built once per test process.
fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("RINGMX_BIN") {
            return PathBuf::from(p);
        }
        let loadgen = Path::new(env!("CARGO_BIN_EXE_ringmx-loadgen"));
        let profile_dir = loadgen.parent().expect("the binary is in a profile directory");
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "-p", "ringmx", "--bin", "ringmx"]);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cargo.arg("--release");
            }
            Some(other) => {
                cargo.args(["--profile", other]);
            }
            None => panic!("no profile directory above {}", loadgen.display()),
        }
        if let Some(target) = profile_dir.parent() {
            cargo.arg("--target-dir").arg(target);
        }
        let status = cargo.status().expect("run cargo to build ringmx");
        assert!(status.success(), "building ringmx failed: {status}");
        profile_dir.join("ringmx")
    })
}

/// A running `ringmx serve`, killed (and its directory removed) when dropped.
pub struct Ringmx {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Ringmx {
    /// Start ringmx with `config` (TOML keys; `listen`, `spool` and `workers` are added
    /// here: one worker on a free port of 127.0.0.1, a PROXY listener when `proxy`) and the
    /// files `files` (name, content) written into its directory, whose path replaces `{dir}`
    /// in `config`.
    pub fn start(name: &str, proxy: bool, config: &str, files: &[(&str, &str)]) -> Ringmx {
        let dir = super::temp_dir(&format!("server-{name}"));
        for (file, text) in files {
            std::fs::write(dir.join(file), text).unwrap();
        }
        let toml = format!(
            "listen = [{{ address = \"127.0.0.1:0\", proxy = {proxy} }}]\nspool = \"{}\"\nworkers = 1\n{}",
            dir.join("spool").display(),
            config.replace("{dir}", dir.to_str().unwrap())
        );
        let path = dir.join("ringmx.toml");
        std::fs::write(&path, toml).unwrap();
        let mut child = Command::new(binary())
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringmx");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push_str(&format!("{line}\n"));
                if line.contains("ringmx started") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(START_LIMIT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ringmx did not start: {}", log.lock().unwrap());
            }
        };
        // The start line names the listener: `listeners=127.0.0.1:PORT`.
        let addr = line
            .split(" listeners=")
            .nth(1)
            .and_then(|r| r.split([' ', ',']).next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no listener in {line:?}"));
        Ringmx {
            child,
            addr,
            dir,
            log,
        }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Ringmx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
