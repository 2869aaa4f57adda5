//! A session's socket: connecting (with the PROXY header first under `--proxy`), writing a batch of commands in one writev, reading replies until the socket is drained.

use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use super::conn::{append_transcript, is_reset, micros, Failure, State};
use super::Worker;
use crate::proxy::{self, MAX_HEADER};
use crate::script::{Bytes, Expect, Piece};
use crate::vocab::{Phase, ProxyVersion, TlsMode};

/// Most pieces in one write: MAIL + 100 RCPT + DATA/BDAT, with room (more go in the next
/// writev of the same batch).
const MAX_IOV: usize = 128;

impl Worker {
    pub(super) fn open_socket(&mut self) -> io::Result<TcpStream> {
        let cfg = &self.shared.cfg;
        let target = cfg.target;
        let sock = Socket::new(
            Domain::for_address(target),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        // Commands are small and latency-bound: never let Nagle hold one back.
        sock.set_tcp_nodelay(true)?;
        if !cfg.source_ips.is_empty() {
            let ip: IpAddr = cfg.source_ips[self.source_next % cfg.source_ips.len()];
            self.source_next = self.source_next.wrapping_add(1);
            set_bind_no_port(&sock);
            sock.bind(&SocketAddr::new(ip, 0).into())?;
        }
        match sock.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(sock.into()))
    }

    pub(super) fn finish_connect(&mut self, slot: usize, now: Instant) {
        let c = &mut self.conns[slot];
        let Some(s) = &c.stream else { return };
        match s.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                let f = if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                    Failure::Refused
                } else {
                    Failure::Reset
                };
                self.end_session(slot, Some(f), now);
                return;
            }
        }
        match s.peer_addr() {
            Ok(_) => {}
            // Spurious wake-up: the handshake has not finished yet.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(_) => {
                self.end_session(slot, Some(Failure::Refused), now);
                return;
            }
        }
        let (lag, up) = (c.lag_us, micros(now - c.started));
        c.state = State::Running;
        self.record(Phase::Connect, up, lag);
        if !self.send_proxy(slot, now) {
            return;
        }
        let implicit = self.shared.cfg.tls.as_ref().and_then(|t| t.mode) == Some(TlsMode::Implicit);
        if implicit {
            // RFC 8314 3.3: the handshake comes first; the banner waits for it.
            self.start_tls(slot, now);
        } else {
            // The banner is the first "command": nothing to send, a 220 to wait for.
            self.next_batch(slot, now);
        }
    }

    /// `--proxy`: the header goes first, in plaintext even before implicit TLS (spec 2),
    /// naming a source drawn from `--proxy-sources` and the target. False once ended.
    fn send_proxy(&mut self, slot: usize, now: Instant) -> bool {
        let shared = Arc::clone(&self.shared);
        let Some(p) = &shared.cfg.proxy else {
            return true;
        };
        let ip = p.sources.pick(self.rng.next(), self.rng.next());
        let src = SocketAddr::new(ip, 1024 + self.rng.below(65536 - 1024) as u16);
        let mut hdr = [0u8; MAX_HEADER];
        let n = match p.version {
            ProxyVersion::V1 => proxy::encode_v1(src, shared.cfg.target, &mut hdr),
            ProxyVersion::V2 => proxy::encode_v2(src, shared.cfg.target, &mut hdr),
        };
        let c = &mut self.conns[slot];
        if self.record {
            append_transcript(&mut c.transcript, b"C: ", &hdr[..n]);
        }
        let Some(stream) = c.stream.as_mut() else {
            return false;
        };
        match stream.write(&hdr[..n]) {
            Ok(k) if k == n => {
                self.counters.bytes_sent += n as u64;
                true
            }
            // A socket just connected has an empty send buffer far larger than 107 octets:
            // anything but the whole header written means it is already broken.
            _ => {
                self.end_session(slot, Some(Failure::Reset), now);
                false
            }
        }
    }

    /// Write the next group of commands: up to and including the next one marked `flush`.
    /// A slowloris drip ends its group and goes out octet by octet on the worker's timer.
    pub(super) fn next_batch(&mut self, slot: usize, now: Instant) {
        let corpus = Arc::clone(&self.shared.corpus);
        let c = &mut self.conns[slot];
        let bytes = Bytes {
            corpus: &corpus,
            big: c.big.as_deref(),
        };
        c.batch = c.sent;
        let mut len = 0;
        let mut drip = false;
        while c.sent < c.plan.len() {
            let cmd = c.plan[c.sent];
            len += bytes.of(cmd.piece).len();
            drip = matches!(cmd.piece, Piece::Drip(_));
            c.sent += 1;
            if cmd.flush {
                break;
            }
        }
        c.batch_len = len;
        c.written = 0;
        c.batch_at = now;
        c.deadline = now + self.shared.cfg.timeout;
        if self.record {
            for i in c.batch..c.sent {
                let p = c.plan[i].piece;
                let b = bytes.of(p);
                if !b.is_empty() {
                    append_transcript(&mut c.transcript, b"C: ", b);
                } else if let Piece::Drip(_) = p {
                    append_transcript(&mut c.transcript, b"C: (one octet per interval) ", corpus.drip(p));
                }
            }
        }
        if len > 0 {
            self.flush(slot, now);
        }
        if drip && self.conns[slot].state == State::Running {
            self.start_drip(slot, now);
        }
    }

    /// Write as much of the current batch as the socket takes, in one writev.
    pub(super) fn flush(&mut self, slot: usize, now: Instant) {
        if self.conns[slot].tls.is_some() {
            self.flush_tls(slot, now);
            return;
        }
        let corpus = Arc::clone(&self.shared.corpus);
        loop {
            let c = &mut self.conns[slot];
            let bytes = Bytes {
                corpus: &corpus,
                big: c.big.as_deref(),
            };
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            let mut skip = c.written;
            for cmd in &c.plan[c.batch..c.sent] {
                let b = bytes.of(cmd.piece);
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                iov[n] = IoSlice::new(&b[skip..]);
                skip = 0;
                n += 1;
                if n == MAX_IOV {
                    break;
                }
            }
            match stream.write_vectored(&iov[..n]) {
                Ok(k) => {
                    c.written += k;
                    self.counters.bytes_sent += k as u64;
                    if c.written >= c.batch_len {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // A server that rejects a non-SMTP client may close before it has
                    // read everything we sent; that is the expected ending there.
                    if is_reset(&e) && self.close_expected(slot) {
                        self.end_session(slot, None, now);
                    } else {
                        self.end_session(slot, Some(Failure::Reset), now);
                    }
                    return;
                }
            }
        }
    }

    /// Whether the server closing now is what the script expects.
    pub(super) fn close_expected(&self, slot: usize) -> bool {
        let c = &self.conns[slot];
        c.plan
            .get(c.acked)
            .is_some_and(|cmd| matches!(cmd.expect, Expect::FiveOrClose | Expect::Close | Expect::Held))
    }

    /// Read and check replies. `closing`: the event also reported the peer's FIN, which
    /// will not be signalled again, so read until EOF rather than stopping at a short read.
    pub(super) fn on_readable(&mut self, slot: usize, now: Instant, closing: bool) {
        if self.conns[slot].tls.is_some() {
            self.on_readable_tls(slot, now);
            return;
        }
        loop {
            let c = &mut self.conns[slot];
            c.make_room();
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            let room = c.inbuf.len() - c.in_len;
            match stream.read(&mut c.inbuf[c.in_len..]) {
                Ok(0) => {
                    let ok = self.close_expected(slot);
                    self.end_session(slot, if ok { None } else { Some(Failure::Reset) }, now);
                    return;
                }
                Ok(n) => {
                    c.in_len += n;
                    self.counters.bytes_received += n as u64;
                    if !self.process_replies(slot, now) {
                        return;
                    }
                    if self.conns[slot].tls.is_some() {
                        // A 220 to STARTTLS: what follows is the server's handshake.
                        self.on_readable_tls(slot, now);
                        return;
                    }
                    // Edge-triggered: a short read means the socket buffer is drained
                    // (any later data or FIN raises a new edge).
                    if n < room && !closing {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let ok = is_reset(&e) && self.close_expected(slot);
                    self.end_session(slot, if ok { None } else { Some(Failure::Reset) }, now);
                    return;
                }
            }
        }
    }
}

/// Let the kernel pick the source port at connect time rather than at bind time, so
/// each source address can share ports across destinations and reuse TIME_WAIT ports
/// the way a plain connect does (Linux IP_BIND_ADDRESS_NO_PORT, 4.2+).
fn set_bind_no_port(sock: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `sock`; the option value points to a
    // c_int that outlives the call and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // Older kernels lack the option; binding still works, with fewer usable ports.
    let _ = rc;
}
