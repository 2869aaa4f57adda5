//! One connection to a next hop, blocking with timeouts on a delivery thread: the greeting, EHLO or LHLO, opportunistic or required STARTTLS through rustls, and the commands and replies of each transaction.
//!
//! A connection outlives a message: after a transaction that ended cleanly it is handed back
//! to its destination's pool for the next (RFC 5321 §3.3 allows many transactions per
//! session). Any I/O error, timeout or malformed reply makes it useless; the caller drops it
//! and defers what was in flight.

use super::reply::{self, Bounds, Reply, ReplyError};
use super::route::{Address, Dest, Protocol};
use crate::config::RelayTls;
use rustls::pki_types::ServerName;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

/// What a connection needs from the configuration; shared by every delivery thread.
pub struct ClientSettings {
    /// Our name in EHLO/LHLO (the server's hostname, validated at start).
    pub hostname: String,
    pub tls: RelayTls,
    /// The rustls client configuration for STARTTLS (none with `relay_tls = "none"`).
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    pub bounds: Bounds,
}

/// What the next hop's EHLO reply offered (RFC 5321 §4.1.1.1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub pipelining: bool,
    pub chunking: bool,
    pub starttls: bool,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    /// `SIZE n` (RFC 1870): the largest message it takes; 0 or absent means no fixed limit.
    pub size: Option<u64>,
}

impl Caps {
    fn from_ehlo(reply: &Reply) -> Caps {
        let mut caps = Caps::default();
        // The first line is the server's name and greeting, the rest one extension each.
        for line in reply.text.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "CHUNKING" => caps.chunking = true,
                "STARTTLS" => caps.starttls = true,
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                _ => {}
            }
        }
        caps
    }
}

/// Why a connection failed; everything in flight on it is deferred.
#[derive(Debug)]
pub enum Failure {
    /// The connection could not be made, broke, or timed out.
    Io(io::Error),
    /// The next hop sent something that is not a reply.
    Protocol(ReplyError),
    /// The next hop refused the session (greeting, EHLO, STARTTLS) with this reply, or TLS
    /// was required and not offered.
    Refused(Reply),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Protocol(e) => write!(f, "{e}"),
            Failure::Refused(r) => write!(f, "{r}"),
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(t)),
            Stream::Unix(s) => s.set_read_timeout(Some(t)),
            Stream::Tls(s) => s.sock.set_read_timeout(Some(t)),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// An open session with a next hop, between transactions.
pub struct Conn {
    stream: Stream,
    input: Vec<u8>,
    /// Commands not yet written (a pipelined group leaves in one write, RFC 2920 §3.1).
    out: Vec<u8>,
    pub caps: Caps,
    pub protocol: Protocol,
    /// Whether the session is in TLS.
    pub tls: bool,
    bounds: Bounds,
    reply_timeout: Duration,
    /// Buffers a transaction reads the message into and stuffs it into, kept for the next,
    /// so a message costs no fresh 64 KiB.
    pub scratch: (Vec<u8>, Vec<u8>),
}

impl Conn {
    /// Connects to `dest` and says hello; with `relay_tls = "may"` or `"require"` and STARTTLS
    /// offered, switches to TLS and says hello again (RFC 3207 §4.2).
    pub fn open(dest: &Dest, settings: &ClientSettings) -> Result<Conn, Failure> {
        let (stream, host) = match &dest.address {
            Address::Tcp { host, port } => (Stream::Tcp(connect_tcp(host, *port, settings)?), Some(host)),
            Address::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(settings.reply_timeout))?;
                s.set_write_timeout(Some(settings.reply_timeout))?;
                (Stream::Unix(s), None)
            }
        };
        let mut conn = Conn {
            stream,
            input: Vec::with_capacity(4096),
            out: Vec::with_capacity(4096),
            caps: Caps::default(),
            protocol: dest.protocol,
            tls: false,
            bounds: settings.bounds,
            reply_timeout: settings.reply_timeout,
            scratch: (Vec::new(), Vec::new()),
        };
        let greeting = conn.reply()?;
        if greeting.code != 220 {
            return Err(Failure::Refused(greeting));
        }
        conn.hello(&settings.hostname)?;
        let wants_tls = settings.tls != RelayTls::None && host.is_some();
        if wants_tls && conn.caps.starttls {
            conn.starttls(host.map_or("", String::as_str), settings)?;
            conn.hello(&settings.hostname)?;
        } else if settings.tls == RelayTls::Require {
            let _ = conn.command(b"QUIT\r\n");
            return Err(Failure::Refused(Reply::local(
                454,
                "4.7.4 TLS required (relay_tls) but not offered by the next hop",
            )));
        }
        Ok(conn)
    }

    /// EHLO (or LHLO for LMTP); a server that does not know EHLO gets HELO (RFC 5321
    /// §4.1.4), and then no extension is used.
    fn hello(&mut self, hostname: &str) -> Result<(), Failure> {
        let verb = match self.protocol {
            Protocol::Smtp => "EHLO",
            Protocol::Lmtp => "LHLO",
        };
        self.push(format_args!("{verb} {hostname}\r\n"));
        let reply = self.flush_and_reply()?;
        if reply.is_positive() {
            self.caps = Caps::from_ehlo(&reply);
            return Ok(());
        }
        if self.protocol == Protocol::Lmtp || reply.class() == 4 {
            return Err(Failure::Refused(reply));
        }
        self.push(format_args!("HELO {hostname}\r\n"));
        let reply = self.flush_and_reply()?;
        if !reply.is_positive() {
            return Err(Failure::Refused(reply));
        }
        self.caps = Caps::default();
        Ok(())
    }

    fn starttls(&mut self, host: &str, settings: &ClientSettings) -> Result<(), Failure> {
        let reply = self.command(b"STARTTLS\r\n")?;
        if reply.code != 220 {
            return Err(Failure::Refused(reply));
        }
        // RFC 3207 §4.2 (and the STARTTLS injection of CVE-2011-0411): anything the server
        // sent after its 220 and before the handshake is discarded, never read as a reply.
        self.input.clear();
        let config = settings
            .tls_config
            .clone()
            .ok_or_else(|| Failure::Refused(Reply::local(454, "4.7.0 TLS not configured")))?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| Failure::Refused(Reply::local(454, "4.7.0 host is not a TLS server name")))?;
        let tls =
            rustls::ClientConnection::new(config, name).map_err(|e| Failure::Io(io::Error::other(e)))?;
        let Stream::Tcp(sock) = std::mem::replace(&mut self.stream, Stream::Unix(UnixStream::pair()?.0))
        else {
            return Err(Failure::Io(io::Error::other(
                "STARTTLS on a connection that is not TCP",
            )));
        };
        let mut stream = rustls::StreamOwned::new(tls, sock);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        self.stream = Stream::Tls(Box::new(stream));
        self.tls = true;
        Ok(())
    }

    /// Queues a command line for the next write.
    pub fn push(&mut self, args: fmt::Arguments<'_>) {
        let _ = self.out.write_fmt(args);
    }

    /// Queues raw octets (a command built from envelope octets, or message data).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Octets queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Writes everything queued.
    pub fn flush(&mut self) -> Result<(), Failure> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.stream.flush()?;
            self.out.clear();
        }
        Ok(())
    }

    fn flush_and_reply(&mut self) -> Result<Reply, Failure> {
        self.flush()?;
        self.reply()
    }

    /// Sends one command and reads its reply.
    pub fn command(&mut self, line: &[u8]) -> Result<Reply, Failure> {
        self.push_bytes(line);
        self.flush_and_reply()
    }

    /// The next reply, reading as much as it takes (within the bounds and the timeout).
    pub fn reply(&mut self) -> Result<Reply, Failure> {
        loop {
            match reply::parse(&self.input, self.bounds) {
                Ok(Some((reply, used))) => {
                    self.input.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(Failure::Protocol(e)),
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(Failure::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            self.input.extend_from_slice(&buf[..n]);
        }
    }

    /// A reply to the end of data: RFC 5321 §4.5.3.2.6 gives it 10 minutes against 5 for a
    /// command, so twice the reply timeout.
    pub fn final_reply(&mut self) -> Result<Reply, Failure> {
        self.stream.set_read_timeout(self.reply_timeout * 2)?;
        let reply = self.reply();
        self.stream.set_read_timeout(self.reply_timeout)?;
        reply
    }

    /// Ends the session politely; errors do not matter any more.
    pub fn quit(mut self) {
        let _ = self.command(b"QUIT\r\n");
    }
}

fn connect_tcp(host: &str, port: u16, settings: &ClientSettings) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, settings.connect_timeout) {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(settings.reply_timeout))?;
                s.set_write_timeout(Some(settings.reply_timeout))?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_come_from_the_ehlo_reply() {
        let reply = Reply::local(
            250,
            "mx.test\nPIPELINING\nsize 1000\n8BITMIME\nchunking\nSTARTTLS",
        );
        let caps = Caps::from_ehlo(&reply);
        assert!(caps.pipelining && caps.chunking && caps.starttls && caps.eightbitmime);
        assert!(!caps.smtputf8);
        assert_eq!(caps.size, Some(1000));
        // The greeting line is not an extension, even if it looks like one.
        assert!(!Caps::from_ehlo(&Reply::local(250, "PIPELINING")).pipelining);
    }
}
