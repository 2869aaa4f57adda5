//! Test helpers: small SMTP servers on 127.0.0.1 ephemeral ports and a bounded way to run the binary.

#![allow(dead_code)]

pub mod ringmx;
pub mod tls;

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How a test server treats each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Follows the rules the load generator checks.
    Correct,
    /// Answers "250 ok" to everything.
    Wrong,
    /// Accepts and never answers.
    Stall,
    /// Correct, but waits this long before the banner.
    SlowBanner(Duration),
    /// Correct, with TLS as the `tls::ServerTls` given to `Server::start_tls` says.
    Tls,
}

/// A server thread that stops accepting when dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start(b: Behaviour) -> Server {
        Server::start_with(b, None)
    }

    /// A correct server speaking TLS (STARTTLS, implicit, or STARTTLS open to injection).
    pub fn start_tls(t: tls::ServerTls) -> Server {
        Server::start_with(Behaviour::Tls, Some(t))
    }

    fn start_with(b: Behaviour, t: Option<tls::ServerTls>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        thread::spawn(move || {
            // Bounded: at most this many connections, and no accept after `stop`.
            for conn in listener.incoming().take(200_000) {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(s) = conn else { continue };
                let t = t.clone();
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                    let _ = match b {
                        Behaviour::Correct => correct(s),
                        Behaviour::SlowBanner(d) => {
                            thread::sleep(d);
                            correct(s)
                        }
                        Behaviour::Wrong => wrong(s),
                        Behaviour::Stall => stall(s),
                        Behaviour::Tls => t.map_or(Ok(()), |t| tls::serve(s, &t)),
                    };
                });
            }
        });
        Server { addr, stop }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

const EHLO_REPLY_STARTTLS: &[u8] =
    b"250-test.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250 SIZE 10000000\r\n";

const EHLO_REPLY: &[u8] =
    b"250-test.example\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 SIZE 10000000\r\n";

/// Read one line (through LF) of at most `cap` octets kept; longer lines are consumed
/// whole and reported with their full length. Returns None at EOF.
fn read_line<R: Read>(
    r: &mut BufReader<R>,
    line: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<usize>> {
    line.clear();
    let mut total = 0;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(if total == 0 { None } else { Some(total) });
        }
        let (take, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let keep = take.min(cap.saturating_sub(line.len()));
        line.extend_from_slice(&buf[..keep]);
        total += take;
        r.consume(take);
        if done {
            return Ok(Some(total));
        }
    }
}

fn looks_binary(b: &[u8]) -> bool {
    b.iter()
        .any(|&c| !(c == b'\r' || c == b'\n' || c == b'\t' || (0x20..0x7f).contains(&c)))
}

/// Non-SMTP detection on the first bytes, before waiting for a line end (a TLS ClientHello
/// has none).
fn looks_nonsmtp(first: &[u8]) -> bool {
    let first_line = first.split(|&c| c == b'\n').next().unwrap_or(&[]);
    looks_binary(first_line)
        || first.starts_with(b"SSH-")
        || first.starts_with(b"GET ")
        || first.starts_with(b"POST ")
        || first_line.windows(6).any(|x| x == b" HTTP/")
}

fn correct(s: TcpStream) -> std::io::Result<()> {
    let mut w = BufWriter::new(s.try_clone()?);
    let mut r = BufReader::new(s);
    greet(&mut r, &mut w, &mut Session::default()).map(|_| ())
}

/// The banner, then commands until QUIT or EOF, or until STARTTLS (when offered): then
/// the 220 has gone out and the octets the client pipelined behind STARTTLS are returned.
fn greet(
    r: &mut BufReader<impl Read>,
    w: &mut BufWriter<impl Write>,
    session: &mut Session,
) -> std::io::Result<Option<Vec<u8>>> {
    w.write_all(b"220 test.example ESMTP\r\n")?;
    w.flush()?;
    if looks_nonsmtp(r.fill_buf()?) {
        w.write_all(b"554 5.7.0 not SMTP\r\n")?;
        w.flush()?;
        return Ok(None);
    }
    serve_commands(r, w, session)
}

/// Commands until QUIT, EOF or STARTTLS (see `greet`).
fn serve_commands(
    r: &mut BufReader<impl Read>,
    w: &mut BufWriter<impl Write>,
    session: &mut Session,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::with_capacity(600);
    while let Some(len) = read_line(r, &mut line, 600)? {
        // RFC 5321 4.5.3.1.4: a command line is at most 512 octets with CRLF.
        let reply: &[u8] = if len > 512 {
            b"500 5.5.2 line too long\r\n"
        } else {
            match session.command(&line, r, w)? {
                Next::Reply(reply) => reply,
                Next::Quit => {
                    w.write_all(b"221 2.0.0 bye\r\n")?;
                    w.flush()?;
                    return Ok(None);
                }
                Next::Starttls => {
                    w.write_all(b"220 2.0.0 ready for TLS\r\n")?;
                    w.flush()?;
                    return Ok(Some(r.buffer().to_vec()));
                }
                Next::Eof => return Ok(None),
            }
        };
        w.write_all(reply)?;
        // Flush once the pipelined input is used up, so replies to a group go out together.
        if r.buffer().is_empty() {
            w.flush()?;
        }
    }
    Ok(None)
}

/// What the correct server does after a command.
enum Next {
    Reply(&'static [u8]),
    Quit,
    /// STARTTLS accepted: the caller answers 220 and starts TLS.
    Starttls,
    /// The client went away mid-message.
    Eof,
}

/// The correct server's SMTP state.
#[derive(Default)]
struct Session {
    /// EHLO offers STARTTLS and STARTTLS is accepted (before TLS, in STARTTLS mode).
    offer_starttls: bool,
    greeted: bool,
    mail: bool,
    rcpts: usize,
}

impl Session {
    fn command(
        &mut self,
        line: &[u8],
        r: &mut BufReader<impl Read>,
        w: &mut BufWriter<impl Write>,
    ) -> std::io::Result<Next> {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
        let verb = verb.to_ascii_uppercase();
        let arg_up = arg.to_ascii_uppercase();
        let path_ok = |prefix: &str| {
            arg_up.starts_with(prefix)
                && arg[prefix.len()..].starts_with('<')
                && arg.trim_end().ends_with('>')
        };
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => {
                self.greeted = true;
                self.reset();
                if self.offer_starttls {
                    EHLO_REPLY_STARTTLS
                } else {
                    EHLO_REPLY
                }
            }
            "STARTTLS" if self.offer_starttls => return Ok(Next::Starttls),
            "MAIL" if !self.greeted || self.mail => b"503 5.5.1 bad sequence\r\n",
            "MAIL" if !path_ok("FROM:") => b"501 5.5.4 syntax\r\n",
            "MAIL" => {
                self.mail = true;
                b"250 2.1.0 ok\r\n"
            }
            "RCPT" if !self.mail => b"503 5.5.1 need MAIL\r\n",
            "RCPT" if !path_ok("TO:") => b"501 5.5.4 syntax\r\n",
            "RCPT" => {
                self.rcpts += 1;
                b"250 2.1.5 ok\r\n"
            }
            "DATA" if !self.mail || self.rcpts == 0 => b"503 5.5.1 need RCPT\r\n",
            "DATA" => return self.data(r, w),
            "BDAT" => {
                let mut it = arg.split_whitespace();
                let n: usize = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                let last = it.next().is_some_and(|x| x.eq_ignore_ascii_case("LAST"));
                let mut chunk = vec![0; n];
                r.read_exact(&mut chunk)?;
                self.bdat(last)
            }
            "RSET" => {
                self.reset();
                b"250 2.0.0 ok\r\n"
            }
            "NOOP" => b"250 2.0.0 ok\r\n",
            "EXPN" | "TURN" => b"502 5.5.1 not implemented\r\n",
            "QUIT" => return Ok(Next::Quit),
            _ => b"500 5.5.2 unrecognized command\r\n",
        };
        Ok(Next::Reply(reply))
    }

    fn reset(&mut self) {
        self.mail = false;
        self.rcpts = 0;
    }

    /// 354, then the message up to the `.` line; refused if a line is over the limit.
    fn data(&mut self, r: &mut BufReader<impl Read>, w: &mut BufWriter<impl Write>) -> std::io::Result<Next> {
        w.write_all(b"354 go ahead\r\n")?;
        w.flush()?;
        let mut too_long = false;
        let mut line = Vec::with_capacity(1100);
        loop {
            let Some(n) = read_line(r, &mut line, 1100)? else {
                return Ok(Next::Eof);
            };
            if line == b".\r\n" {
                break;
            }
            // RFC 5321 4.5.3.1.6: text lines are at most 1000 octets.
            too_long |= n > 1000;
        }
        self.reset();
        Ok(Next::Reply(if too_long {
            b"554 5.6.0 line too long\r\n"
        } else {
            b"250 2.0.0 queued\r\n"
        }))
    }

    /// The reply to a BDAT chunk, already read.
    fn bdat(&mut self, last: bool) -> &'static [u8] {
        if !self.mail || self.rcpts == 0 {
            b"503 5.5.1 need RCPT\r\n"
        } else if last {
            self.reset();
            b"250 2.0.0 queued\r\n"
        } else {
            b"250 2.0.0 chunk ok\r\n"
        }
    }
}

fn wrong(mut s: TcpStream) -> std::io::Result<()> {
    s.write_all(b"220 wrong.example ESMTP\r\n")?;
    let mut buf = [0u8; 65536];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let lines = buf[..n].iter().filter(|&&c| c == b'\n').count().max(1);
        for _ in 0..lines {
            s.write_all(b"250 ok\r\n")?;
        }
    }
}

fn stall(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    while s.read(&mut buf)? > 0 {}
    Ok(())
}

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringmx-loadgen-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run the binary with `args`, failing the test if it does not exit within `limit`.
pub fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmx-loadgen"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "loadgen did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub fn summary(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json written");
    serde_json::from_str(&text).expect("summary.json parses")
}

pub fn u(v: &serde_json::Value, path: &str) -> u64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path} is not an integer: {cur}"))
}
