//! The epoll backend: turns mio's edge-triggered readiness into the completions of the backend contract.
//!
//! Readable edges are remembered per connection; reading happens in [`Backend::wait`], up to
//! `read_budget` octets per connection per call, and a connection that still has bytes after
//! its budget goes on a "still readable" list served on the next call without sleeping. Sends
//! are attempted at once; what the socket does not take waits for a writable edge.

use super::accept::{self, AcceptPolicy, Verdict};
use super::{Backend, BackendConfig, Completion, IoStats, Token, Wake, RESERVED_GENERATION};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Waker};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAKER: mio::Token = mio::Token(usize::MAX);
/// Accepts per listener per [`Backend::wait`], so a connection flood does not starve the
/// sessions already open; the rest are accepted on the next call.
const ACCEPT_BATCH: usize = 256;
/// Free receive buffers kept for reuse; more than this are freed when returned.
const POOL_MAX: usize = 64;

fn listener_token(i: usize) -> mio::Token {
    mio::Token(
        Token {
            slot: i as u32,
            generation: RESERVED_GENERATION,
        }
        .to_u64() as usize,
    )
}

struct Sock {
    generation: u32,
    stream: TcpStream,
    receiving: bool,
    /// A readable edge was seen and the socket was not read to `EAGAIN` since.
    readable: bool,
    /// The peer closed or the socket failed: read until end of stream, not just a short read.
    hangup: bool,
    /// On the `ready` list.
    queued: bool,
    /// The buffer being sent and how much of it is written.
    sending: Option<(Vec<u8>, usize)>,
}

/// One worker's epoll instance, listeners and sockets.
pub struct Epoll {
    poll: Poll,
    events: Events,
    fired: Vec<(u64, bool, bool, bool)>,
    waker: Arc<Waker>,
    listeners: Vec<TcpListener>,
    /// Listeners with connections possibly left in their backlog.
    accept_pending: Vec<bool>,
    /// The last accept ran short of descriptors or memory: no accepts until then.
    accept_paused_until: Option<Instant>,
    accept: AcceptPolicy,
    socks: Vec<Option<Sock>>,
    /// Connections with unread bytes and receiving on: served on the next `wait`.
    ready: Vec<Token>,
    /// Completions produced outside `wait` (sends finished at once, closes).
    done: Vec<Completion>,
    pool: Vec<Vec<u8>>,
    buf_size: usize,
    read_budget: usize,
    stats: IoStats,
}

impl Wake for Waker {
    fn wake(&self) {
        // A failed wake means the eventfd counter is saturated: the worker is awake anyway.
        let _ = Waker::wake(self);
    }
}

impl Epoll {
    /// A backend accepting on `listeners` (already listening), receiving into buffers of
    /// `config.recv_buffer_size` octets, at most `config.read_budget` octets per connection
    /// per wait.
    pub fn new(listeners: Vec<std::net::TcpListener>, config: &BackendConfig) -> io::Result<Epoll> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut mio_listeners = Vec::with_capacity(listeners.len());
        for (i, listener) in listeners.into_iter().enumerate() {
            listener.set_nonblocking(true)?;
            let mut listener = TcpListener::from_std(listener);
            poll.registry()
                .register(&mut listener, listener_token(i), Interest::READABLE)?;
            mio_listeners.push(listener);
        }
        Ok(Epoll {
            poll,
            events: Events::with_capacity(1024),
            fired: Vec::with_capacity(1024),
            waker,
            accept_pending: vec![false; mio_listeners.len()],
            accept_paused_until: None,
            accept: AcceptPolicy::new(),
            listeners: mio_listeners,
            socks: Vec::new(),
            ready: Vec::new(),
            done: Vec::new(),
            pool: Vec::new(),
            buf_size: config.recv_buffer_size,
            read_budget: config.read_budget,
            stats: IoStats::default(),
        })
    }

    fn sock(&mut self, token: Token) -> Option<&mut Sock> {
        self.socks
            .get_mut(token.slot as usize)
            .and_then(Option::as_mut)
            .filter(|s| s.generation == token.generation)
    }

    fn accept(&mut self, i: usize, out: &mut Vec<Completion>) {
        self.accept_pending[i] = false;
        for _ in 0..ACCEPT_BATCH {
            match self.listeners[i].accept() {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "TCP_NODELAY failed");
                    }
                    out.push(Completion::Accepted {
                        socket: OwnedFd::from(stream),
                        peer,
                        listener: i,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    let listener = &self.listeners[i];
                    let accept_one = || {
                        let (stream, peer) = listener.accept()?;
                        Ok((OwnedFd::from(stream), peer))
                    };
                    match self.accept.on_error(&e, &mut self.stats, accept_one, out) {
                        Verdict::Continue => {}
                        Verdict::NextWait => {
                            self.accept_pending[i] = true;
                            return;
                        }
                        Verdict::Rest => {
                            self.accept_pending[i] = true;
                            self.accept_paused_until = Some(Instant::now() + accept::REST);
                            return;
                        }
                    }
                }
            }
        }
        self.accept_pending[i] = true;
    }

    /// Reads from one ready connection until `EAGAIN`, end of stream or the budget.
    fn read(&mut self, token: Token, out: &mut Vec<Completion>) -> bool {
        let (buf_size, mut budget) = (self.buf_size, self.read_budget);
        let idx = token.slot as usize;
        if idx >= self.socks.len() {
            return false;
        }
        loop {
            let Some(sock) = self.socks[idx]
                .as_mut()
                .filter(|s| s.generation == token.generation)
            else {
                return false;
            };
            if !sock.receiving || !sock.readable {
                return false;
            }
            let mut buf = self.pool.pop().unwrap_or_else(|| Vec::with_capacity(buf_size));
            let want = buf.capacity().min(budget);
            // SAFETY: the pointer and length describe `buf`'s spare capacity, which `read`
            // writes at most `want` bytes into; the fd is owned by `sock.stream` and open.
            let n = unsafe {
                libc::read(
                    sock.stream.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    want,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                self.recycle(buf);
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {}
                    _ => out.push(Completion::Received {
                        token,
                        result: Err(err),
                    }),
                }
                if let Some(sock) = self.sock(token) {
                    sock.readable = false;
                }
                return false;
            }
            let n = n as usize;
            // SAFETY: the kernel initialized the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(n) };
            self.stats.reads += 1;
            out.push(Completion::Received {
                token,
                result: Ok(buf),
            });
            if n == 0 {
                sock.readable = false;
                sock.receiving = false;
                return false;
            }
            budget -= n;
            if n < want && !sock.hangup {
                // A short read on a stream socket drained its receive queue; the next segment
                // raises a new edge (epoll(7), EPOLLET), so no EAGAIN read is needed. After a
                // hangup no edge follows, so that case reads on to the end of stream.
                sock.readable = false;
                return false;
            }
            if budget == 0 {
                return true;
            }
        }
    }

    fn write(
        stream: &mut TcpStream,
        buf: &[u8],
        off: &mut usize,
        stats: &mut IoStats,
    ) -> Option<io::Result<()>> {
        while *off < buf.len() {
            match stream.write(&buf[*off..]) {
                Ok(0) => return Some(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    stats.writes += 1;
                    *off += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(()))
    }

    fn continue_send(&mut self, token: Token) {
        let Some(idx) = self.sock(token).map(|_| token.slot as usize) else {
            return;
        };
        let sock = self.socks[idx].as_mut().expect("checked above");
        let Some((buf, mut off)) = sock.sending.take() else {
            return;
        };
        match Self::write(&mut sock.stream, &buf, &mut off, &mut self.stats) {
            None => sock.sending = Some((buf, off)),
            Some(result) => {
                let mut buf = buf;
                buf.clear();
                self.done.push(Completion::Sent { token, buf, result });
            }
        }
    }
    /// Notes what the last poll reported: wakes, listeners with connections to accept,
    /// readable connections (queued to be read) and writable ones (their sends continued).
    fn take_events(&mut self, out: &mut Vec<Completion>) {
        self.fired.clear();
        self.fired.extend(self.events.iter().map(|e| {
            (
                e.token().0 as u64,
                e.is_readable() || e.is_read_closed() || e.is_error(),
                e.is_writable() || e.is_write_closed() || e.is_error(),
                e.is_read_closed() || e.is_error(),
            )
        }));
        for i in 0..self.fired.len() {
            let (raw, readable, writable, hangup) = self.fired[i];
            if raw == WAKER.0 as u64 {
                out.push(Completion::Woken);
                continue;
            }
            let token = Token::from_u64(raw);
            if token.generation == RESERVED_GENERATION {
                self.accept_pending[token.slot as usize] = true;
                continue;
            }
            let Some(sock) = self.sock(token) else {
                continue;
            };
            let mut queue = false;
            if readable {
                sock.readable = true;
                sock.hangup |= hangup;
                if sock.receiving && !sock.queued {
                    sock.queued = true;
                    queue = true;
                }
            }
            let send = writable && sock.sending.is_some();
            if queue {
                self.ready.push(token);
            }
            if send {
                self.continue_send(token);
            }
        }
    }
}

fn deregister(registry: &Registry, stream: &mut TcpStream) {
    if let Err(e) = registry.deregister(stream) {
        tracing::debug!(error = %e, "deregister failed");
    }
}

impl Backend for Epoll {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        self.accept.restore_spare();
        out.append(&mut self.done);
        let paused = self.accept_paused_until.filter(|&t| Instant::now() < t);
        self.accept_paused_until = paused;
        let accept_now = paused.is_none() && self.accept_pending.iter().any(|&p| p);
        let busy = !out.is_empty() || !self.ready.is_empty() || accept_now;
        let timeout = match paused {
            _ if busy => Some(Duration::ZERO),
            Some(until) => {
                let rest = until.saturating_duration_since(Instant::now());
                Some(timeout.map_or(rest, |t| t.min(rest)))
            }
            None => timeout,
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.take_events(out);
        if self.accept_paused_until.is_none_or(|t| Instant::now() >= t) {
            self.accept_paused_until = None;
            for i in 0..self.listeners.len() {
                if self.accept_pending[i] && self.accept_paused_until.is_none() {
                    self.accept(i, out);
                }
            }
        }
        let ready = std::mem::take(&mut self.ready);
        let mut still = Vec::new();
        for token in ready {
            if let Some(sock) = self.sock(token) {
                sock.queued = false;
            }
            if self.read(token, out) {
                if let Some(sock) = self.sock(token) {
                    sock.queued = true;
                }
                still.push(token);
            }
        }
        self.ready = still;
        out.append(&mut self.done);
        Ok(())
    }

    fn attach(&mut self, token: Token, socket: OwnedFd) -> io::Result<()> {
        super::check_slot(token)?;
        let mut stream = TcpStream::from(socket);
        self.poll.registry().register(
            &mut stream,
            mio::Token(token.to_u64() as usize),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let slot = token.slot as usize;
        if self.socks.len() <= slot {
            self.socks.resize_with(slot + 1, || None);
        }
        self.socks[slot] = Some(Sock {
            generation: token.generation,
            stream,
            receiving: true,
            readable: false,
            hangup: false,
            queued: false,
            sending: None,
        });
        Ok(())
    }

    fn reject(&mut self, socket: OwnedFd, reply: &'static [u8]) {
        let mut stream = std::net::TcpStream::from(socket);
        // A fresh socket's send buffer takes a one-line reply whole; if not, the client
        // loses a courtesy, not data.
        if stream.write(reply).is_ok() {
            self.stats.writes += 1;
        }
    }

    fn set_receiving(&mut self, token: Token, on: bool) {
        let Some(sock) = self.sock(token) else {
            return;
        };
        sock.receiving = on;
        if on && sock.readable && !sock.queued {
            sock.queued = true;
            self.ready.push(token);
        }
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == self.buf_size && self.pool.len() < POOL_MAX {
            buf.clear();
            self.pool.push(buf);
        }
    }

    fn send(&mut self, token: Token, mut buf: Vec<u8>) {
        let Some(sock) = self.sock(token) else {
            // Closed (closing is immediate here) or never attached.
            buf.clear();
            let result = Err(io::ErrorKind::NotConnected.into());
            self.done.push(Completion::Sent { token, buf, result });
            return;
        };
        debug_assert!(sock.sending.is_none(), "one send in flight per connection");
        sock.sending = Some((buf, 0));
        self.continue_send(token);
    }

    fn close(&mut self, token: Token) {
        let registry = self.poll.registry();
        if let Some(slot) = self.socks.get_mut(token.slot as usize) {
            if slot.as_ref().is_some_and(|s| s.generation == token.generation) {
                let mut sock = slot.take().expect("checked above");
                deregister(registry, &mut sock.stream);
                self.done.push(Completion::Closed { token });
            }
        }
    }

    fn stop_accepting(&mut self) {
        for mut listener in self.listeners.drain(..) {
            if let Err(e) = self.poll.registry().deregister(&mut listener) {
                tracing::debug!(error = %e, "deregister listener failed");
            }
        }
        self.accept_pending.clear();
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn io_stats(&self) -> IoStats {
        self.stats
    }
}
