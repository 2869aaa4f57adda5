//! The backends' answer to a process out of descriptors, on both backends: every client waiting in the listen backlog is accepted with the spare descriptor and refused (`421 4.3.2`) at once, instead of hanging there.
//!
//! The server fits `max_connections` to its descriptor limit at start, so running out is
//! what happens when that estimate is wrong (a library's descriptors, a leak). To get there
//! for certain, the backend runs in a child process (this test binary again, running the
//! ignored `child` test) that lowers its limit and fills its descriptor table; the clients
//! are in this process, which still has descriptors to spare.

use ringmx::backend::{choose, open, Backend, BackendConfig, Completion, WithBackend};
use ringmx::config::{BackendKind, ServerLimits};
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOO_MANY: &[u8] = b"421 4.3.2 Too many connections, try again later\r\n";
/// Set in the child's environment to the backend it runs.
const CHILD: &str = "RINGMX_TEST_EMFILE_BACKEND";
const CLIENTS: usize = 5;

/// The child: serves one listener until its standard input closes, with no descriptor
/// left, refusing what the backend reports refused; then prints what it saw.
struct Serve {
    stop: Arc<AtomicBool>,
}

impl WithBackend for Serve {
    type Output = (u64, u64);
    fn with<B: Backend + Send + 'static>(self, mut backend: B) -> (u64, u64) {
        // Fill the descriptor table: from here on every accept fails with EMFILE.
        let mut hog = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => hog.push(f),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("open /dev/null: {e}"),
            }
        }
        println!("full");
        let (mut refused, mut accepted) = (0, 0);
        let mut completions = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            backend
                .wait(Some(Duration::from_millis(20)), &mut completions)
                .unwrap();
            for c in completions.drain(..) {
                match c {
                    Completion::Refused { socket, .. } => {
                        refused += 1;
                        backend.reject(socket, TOO_MANY);
                    }
                    Completion::Accepted { .. } => accepted += 1,
                    _ => {}
                }
            }
        }
        drop(hog);
        (refused, accepted)
    }
}

#[test]
#[ignore = "the child process of out_of_descriptors_*; started by them"]
fn child() {
    let kind = match std::env::var(CHILD).as_deref() {
        Ok("epoll") => BackendKind::Epoll,
        Ok("uring") => BackendKind::Uring,
        other => panic!("{CHILD}={other:?}: run by the out_of_descriptors tests"),
    };
    let choice = match choose(kind) {
        Ok(choice) => choice,
        Err(why) => {
            println!("skip {why}");
            return;
        }
    };
    let lim = libc::rlimit {
        rlim_cur: 128,
        rlim_max: 128,
    };
    // SAFETY: setrlimit reads the struct we own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    println!("port {}", listener.local_addr().unwrap().port());
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        stop2.store(true, Ordering::Relaxed);
    });
    let config = BackendConfig::from(&ServerLimits::default());
    let (refused, accepted) = open(choice, vec![listener], &config, Serve { stop }).unwrap();
    println!("refused {refused} accepted {accepted}");
}

fn out_of_descriptors_clients_are_refused_at_once(backend: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, backend)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = |prefix: &str| loop {
        let line = lines.next().expect("the child ended early").unwrap();
        // The harness may start the line with `test child ... `.
        if let Some((_, rest)) = line.split_once(prefix) {
            return rest.to_string();
        }
        if let Some((_, why)) = line.split_once("skip ") {
            return format!("skip {why}");
        }
    };
    let port = next("port ");
    if let Some(why) = port.strip_prefix("skip ") {
        eprintln!("skipped: {why}");
        assert!(child.wait().unwrap().success());
        return;
    }
    let port: u16 = port.parse().unwrap();
    assert_eq!(next("full"), "");
    // Full and nobody waiting: the backend rests between tries instead of spinning (a spin
    // costs a whole core: about 100 ticks a second).
    let cpu_ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let idle = cpu_ticks() - before;
    assert!(idle < 30, "{idle} CPU ticks in one second, full and idle");
    let start = Instant::now();
    for _ in 0..CLIENTS {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).expect("the refusal, then the end");
        assert_eq!(got, TOO_MANY, "{}", String::from_utf8_lossy(&got));
    }
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(10), "refusals took {waited:?}");
    drop(child.stdin.take());
    let report = next("refused ");
    assert_eq!(report, format!("{CLIENTS} accepted 0"));
    assert!(child.wait().unwrap().success());
}

#[test]
fn out_of_descriptors_epoll() {
    out_of_descriptors_clients_are_refused_at_once("epoll");
}

#[test]
fn out_of_descriptors_uring() {
    out_of_descriptors_clients_are_refused_at_once("uring");
}
