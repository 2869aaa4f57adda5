//! A scripted next hop for the delivery tests: a loopback SMTP or LMTP server whose replies to each recipient, and whether it hangs up in the middle of the data, the test decides; it records every message it accepted, unstuffed, exactly as it arrived.
//!
//! The real downstream servers (Postfix's smtpd, Dovecot's LMTP) are driven by
//! `.ci/delivery.sh`; this one exists for what they cannot be made to do on cue: a `452` to
//! one recipient and a `250` to the next, a close halfway through DATA, an LMTP reply per
//! recipient chosen by the test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A message the next hop accepted (for at least one recipient).
#[derive(Debug, Clone)]
pub struct Got {
    pub from: String,
    /// The recipients it accepted.
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    /// BDAT rather than DATA.
    pub bdat: bool,
}

/// The reply the next hop gives for an address.
pub type Replier = Box<dyn Fn(&str) -> String + Send + Sync>;

/// How the next hop behaves.
pub struct Script {
    pub lmtp: bool,
    /// Extensions offered after the first EHLO line.
    pub caps: Vec<&'static str>,
    /// The reply to `RCPT TO:<addr>` (given the address); `250 2.1.5 Ok` if `None`.
    pub rcpt: Option<Replier>,
    /// LMTP: the reply after the data for each accepted recipient.
    pub lmtp_final: Option<Replier>,
    /// Hang up after this many octets of data, this many times.
    pub close_mid_data: usize,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            lmtp: false,
            caps: vec!["PIPELINING", "8BITMIME", "SIZE 100000000", "CHUNKING", "SMTPUTF8"],
            rcpt: None,
            lmtp_final: None,
            close_mid_data: 0,
        }
    }
}

pub struct NextHop {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Got>>>,
    /// Transactions begun (MAIL commands), connections accepted.
    pub mails: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl NextHop {
    pub fn start(script: Script) -> NextHop {
        NextHop::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), script)
    }

    /// On a given listener (a port reserved before the server was started, for "down, then
    /// up").
    pub fn start_on(listener: TcpListener, script: Script) -> NextHop {
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let mails = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        let closes = Arc::new(AtomicUsize::new(script.close_mid_data));
        let (g, m, c, s) = (got.clone(), mails.clone(), connections.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        c.fetch_add(1, Ordering::SeqCst);
                        let (script, g, m, closes) = (script.clone(), g.clone(), m.clone(), closes.clone());
                        std::thread::spawn(move || {
                            let _ = session(stream, &script, &g, &m, &closes);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        NextHop {
            addr,
            got,
            mails,
            connections,
            stop,
        }
    }

    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` messages arrived.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Got> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let got = self.got();
            if got.len() >= n || std::time::Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NextHop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn session(
    stream: TcpStream,
    script: &Script,
    got: &Mutex<Vec<Got>>,
    mails: &AtomicUsize,
    closes: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    out.write_all(b"220 nexthop.test ESMTP\r\n")?;
    let mut from = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut bdat_data: Vec<u8> = Vec::new();
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("LHLO") {
            let mut reply = String::from("250-nexthop.test\r\n");
            for (i, c) in script.caps.iter().enumerate() {
                let sep = if i + 1 == script.caps.len() { ' ' } else { '-' };
                reply.push_str(&format!("250{sep}{c}\r\n"));
            }
            if script.caps.is_empty() {
                reply = "250 nexthop.test\r\n".into();
            }
            out.write_all(reply.as_bytes())?;
        } else if upper.starts_with("MAIL FROM:") {
            mails.fetch_add(1, Ordering::SeqCst);
            from = between(&cmd);
            rcpts.clear();
            bdat_data.clear();
            out.write_all(b"250 2.1.0 Ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            let addr = between(&cmd);
            let reply = script
                .rcpt
                .as_ref()
                .map_or("250 2.1.5 Ok".to_string(), |f| f(&addr));
            if reply.starts_with('2') {
                rcpts.push(addr);
            }
            out.write_all(format!("{reply}\r\n").as_bytes())?;
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                out.write_all(b"554 5.5.1 no valid recipients\r\n")?;
                continue;
            }
            out.write_all(b"354 go ahead\r\n")?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if input.read_until(b'\n', &mut l)? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                let l = if l.starts_with(b".") { &l[1..] } else { &l[..] };
                data.extend_from_slice(l);
                if hang_up(closes, data.len()) {
                    return Ok(());
                }
            }
            finish(script, got, &mut out, &from, &rcpts, data, false)?;
        } else if upper.starts_with("BDAT ") {
            let mut words = cmd.split_ascii_whitespace().skip(1);
            let n: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
            let mut chunk = vec![0u8; n];
            input.read_exact(&mut chunk)?;
            if hang_up(closes, chunk.len()) {
                return Ok(());
            }
            bdat_data.extend_from_slice(&chunk);
            if rcpts.is_empty() {
                out.write_all(b"554 5.5.1 no valid recipients\r\n")?;
            } else if last {
                let data = std::mem::take(&mut bdat_data);
                finish(script, got, &mut out, &from, &rcpts, data, true)?;
            } else {
                out.write_all(format!("250 2.0.0 {n} octets\r\n").as_bytes())?;
            }
        } else if upper == "RSET" {
            rcpts.clear();
            out.write_all(b"250 2.0.0 Ok\r\n")?;
        } else if upper == "QUIT" {
            out.write_all(b"221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else {
            out.write_all(b"502 5.5.2 not here\r\n")?;
        }
    }
}

/// Whether to hang up now (in the middle of the data, `closes` times).
fn hang_up(closes: &AtomicUsize, octets: usize) -> bool {
    octets > 10
        && closes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
}

fn finish(
    script: &Script,
    got: &Mutex<Vec<Got>>,
    out: &mut TcpStream,
    from: &str,
    rcpts: &[String],
    data: Vec<u8>,
    bdat: bool,
) -> std::io::Result<()> {
    let mut accepted = Vec::new();
    let mut reply = String::new();
    if script.lmtp {
        for r in rcpts {
            let each = script
                .lmtp_final
                .as_ref()
                .map_or("250 2.0.0 Ok".to_string(), |f| f(r));
            if each.starts_with('2') {
                accepted.push(r.clone());
            }
            reply.push_str(&format!("{each}\r\n"));
        }
    } else {
        accepted = rcpts.to_vec();
        reply = "250 2.0.0 Ok: queued\r\n".into();
    }
    if !accepted.is_empty() {
        got.lock().unwrap().push(Got {
            from: from.to_string(),
            rcpts: accepted,
            data,
            bdat,
        });
    }
    out.write_all(reply.as_bytes())
}

fn between(cmd: &str) -> String {
    let start = cmd.find('<').map_or(0, |i| i + 1);
    let end = cmd[start..].find('>').map_or(cmd.len(), |i| start + i);
    cmd[start..end].to_string()
}
