//! The io_uring backend: one ring per worker, with multishot accept, multishot receive into a provided-buffer ring and owned-buffer sends, behind the backend contract.
//!
//! - **Submission.** Operations are queued as the worker asks for them and handed to the
//!   kernel by the one `io_uring_enter` of [`Backend::wait`], which also waits (bounded by the
//!   worker's next timer) and reaps; `ops.rs` is the only way in and keeps the count of
//!   operations in flight.
//! - **Receive.** Each connection has at most one multishot receive (`IORING_RECV_MULTISHOT`
//!   with `IOSQE_BUFFER_SELECT`) drawing from the worker's provided-buffer ring
//!   (`bufring.rs`), so an idle connection holds no buffer. An empty ring ends a multishot
//!   receive with `ENOBUFS` (the bytes stay in the socket); such connections are re-armed, in
//!   order, as buffers come back. Bytes beyond a connection's read budget, or that arrive
//!   after receiving was turned off, are held in order and delivered on a later wait; while
//!   they pile up, the receive is cancelled (`conn.rs`).
//! - **Send.** A send owns its buffer until its completion; a short send continues where it
//!   stopped.
//! - **Close.** Closing cancels the connection's operations (`IORING_ASYNC_CANCEL_FD |
//!   IORING_ASYNC_CANCEL_ALL`), waits for their last completions (the kernel may write a
//!   buffer until then), closes the socket with `IORING_OP_CLOSE` and only then reports
//!   [`Completion::Closed`].
//! - **Tokens.** Every operation's user data is its kind, the connection's slot and its
//!   generation; a completion for another generation is recognized and dropped.
//! - **Waking.** An eventfd with a read operation always pending on it.
//!
//! How the ring is set up, and what the kernel must have, is in `setup.rs`.

mod bufring;
mod conn;
mod ops;
mod setup;

pub use setup::probe;

use super::accept::{self, AcceptPolicy, Verdict};
use super::{Backend, BackendConfig, Completion, IoStats, Token, Wake, MAX_SLOTS};
use bufring::{BufRing, BGID};
use conn::{find, Conn, Life, Recv, Sending};
use io_uring::opcode;
use io_uring::types::{CancelBuilder, Fd};
use ops::{Done, Op, Ring};
use socket2::SockRef;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long dropping the backend waits for the kernel to finish with its buffers.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// An eventfd: other threads add to it, the ring's pending read completes.
struct EventFd(OwnedFd);

impl Wake for EventFd {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A failure means the
        // counter is saturated: a wake is pending anyway.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// Where a listener's multishot accept stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepting {
    Armed,
    /// After a shortage: accepting again at this instant.
    Resting(Instant),
    /// Accepting stopped; the accept's last completion is still to come.
    Stopping,
}

struct Listener {
    fd: OwnedFd,
    state: Accepting,
}

/// One worker's io_uring, listeners, provided buffers and connections.
pub struct Uring {
    // Dropped first: the ring must be gone before the memory it may touch (see `Drop`).
    ring: Ring,
    bufs: BufRing,
    waker: Arc<EventFd>,
    /// The eventfd read's destination, alive while the read is in flight.
    wake_buf: Box<u64>,
    /// By index; `None` once closed (after accepting stopped).
    listeners: Vec<Option<Listener>>,
    accept: AcceptPolicy,
    conns: Vec<Option<Conn>>,
    /// Connections with held bytes to deliver on the next wait.
    ready: Vec<usize>,
    /// Connections whose receive ran out of buffers, to re-arm as buffers come back.
    starved: VecDeque<Token>,
    /// Completions produced outside `wait` (empty sends, sends on closed connections).
    done: Vec<Completion>,
    /// Completions reaped, to handle (kept for its capacity).
    reaped: Vec<Done>,
    enabled: bool,
    /// Dropping: nothing is re-armed.
    draining: bool,
    read_budget: usize,
    epoch: u64,
    stats: IoStats,
    setup: &'static str,
}

impl Uring {
    /// A backend accepting on `listeners` (already listening), set up as `config` says.
    pub fn new(listeners: Vec<std::net::TcpListener>, config: &BackendConfig) -> io::Result<Uring> {
        let built = setup::build(config)?;
        let bufs = BufRing::new(&built.ring, config.uring_buffers, config.uring_buffer_size)?;
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor nothing else owns.
        let waker = Arc::new(EventFd(unsafe { OwnedFd::from_raw_fd(efd) }));
        let listeners = listeners
            .into_iter()
            .map(|l| {
                Some(Listener {
                    fd: OwnedFd::from(l),
                    state: Accepting::Armed,
                })
            })
            .collect();
        let mut uring = Uring {
            ring: Ring::new(built.ring, built.taskrun_flag, config.uring_min_wait_us),
            bufs,
            waker,
            wake_buf: Box::new(0),
            listeners,
            accept: AcceptPolicy::new(),
            conns: Vec::with_capacity(config.slot_reserve.min(MAX_SLOTS as usize)),
            ready: Vec::new(),
            starved: VecDeque::new(),
            done: Vec::new(),
            reaped: Vec::new(),
            enabled: false,
            draining: false,
            read_budget: config.read_budget,
            epoch: 0,
            stats: IoStats::default(),
            setup: built.setup,
        };
        for i in 0..uring.listeners.len() {
            uring.arm_accept(i);
        }
        uring.arm_wake();
        Ok(uring)
    }

    fn arm_accept(&mut self, i: usize) {
        let Some(listener) = self.listeners[i].as_mut() else {
            return;
        };
        listener.state = Accepting::Armed;
        let entry = opcode::AcceptMulti::new(Fd(listener.fd.as_raw_fd()))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build();
        // SAFETY: the listener's descriptor is closed only after this accept's last
        // completion (see `on_accept`).
        unsafe { self.ring.submit(entry, Op::Accept(i)) };
    }

    fn arm_wake(&mut self) {
        if self.draining {
            return;
        }
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(Fd(self.waker.0.as_raw_fd()), buf.cast(), 8).build();
        // SAFETY: the boxed destination and the eventfd live as long as the backend, and the
        // backend's drop waits for this read's completion (or leaks the box).
        unsafe { self.ring.submit(entry, Op::Wake) };
    }

    /// Submits a cancellation of every operation on the connection's socket.
    fn cancel_all(&mut self, fd: i32) {
        let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all()).build();
        // SAFETY: a cancellation refers to no memory.
        unsafe { self.ring.submit(entry, Op::Cancel) };
    }

    /// Arms or cancels the connection's receive to match what it wants.
    fn sync_recv(&mut self, slot: usize) {
        let budget = self.read_budget;
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let token = conn.token(slot);
        let wants = conn.wants_recv(budget);
        match conn.recv {
            Recv::Idle if wants => {
                conn.recv = Recv::Armed;
                let entry = opcode::RecvMulti::new(Fd(conn.fd), BGID).build();
                // SAFETY: the kernel writes only into provided buffers, which `bufs` keeps
                // while it may; the socket is closed only after this receive's last
                // completion (see `finish_close`).
                unsafe { self.ring.submit(entry, Op::Recv(token)) };
            }
            Recv::Armed if !wants && conn.life == Life::Open => {
                conn.recv = Recv::Cancelling;
                let entry = opcode::AsyncCancel::new(Op::Recv(token).encode()).build();
                // SAFETY: a cancellation refers to no memory.
                unsafe { self.ring.submit(entry, Op::Cancel) };
            }
            _ => {}
        }
    }

    /// Sends the rest of the connection's buffer.
    fn push_send(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let token = conn.token(slot);
        let sending = conn.send.as_ref().expect("a send to continue");
        let rest = &sending.buf[sending.sent..];
        let len = rest.len().min(u32::MAX as usize) as u32;
        let entry = opcode::Send::new(Fd(conn.fd), rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: `conn.send` owns the buffer (whose heap storage does not move with the
        // connection) until this send's completion; the socket closes only after it.
        unsafe { self.ring.submit(entry, Op::Send(token)) };
    }

    /// Once a closing connection has nothing in flight, closes its socket.
    fn finish_close(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        if conn.life == Life::Closing && !conn.recv.in_flight() && conn.send.is_none() {
            conn.life = Life::CloseSubmitted;
            let entry = opcode::Close::new(Fd(conn.fd)).build();
            let token = conn.token(slot);
            // SAFETY: nothing else in flight uses the descriptor, and nothing of ours uses it
            // after this.
            unsafe { self.ring.submit(entry, Op::Close(token)) };
        }
    }

    /// Delivers what connections held from earlier waits, within this wait's budgets.
    fn deliver_ready(&mut self, out: &mut Vec<Completion>) {
        let ready = std::mem::take(&mut self.ready);
        let budget = (self.epoch, self.read_budget);
        for &slot in &ready {
            let Some(conn) = self.conns[slot].as_mut() else {
                continue;
            };
            conn.queued = false;
            if !conn.wanted || conn.life != Life::Open {
                continue;
            }
            if conn.deliver_held(slot, budget, out) {
                conn.queued = true;
                self.ready.push(slot);
            }
            self.sync_recv(slot);
        }
    }

    /// Re-arms starved receives, one per buffer back in the ring.
    fn feed_starved(&mut self) {
        let mut budget = self.bufs.available();
        while budget > 0 {
            let Some(token) = self.starved.pop_front() else {
                return;
            };
            let Some(conn) = find(&mut self.conns, token).filter(|c| c.recv == Recv::Starved) else {
                continue;
            };
            conn.recv = Recv::Idle;
            budget -= 1;
            self.sync_recv(token.slot as usize);
        }
    }

    /// Arms the listeners whose rest is over; returns `timeout` cut to the next rest's end.
    fn wake_resting(&mut self, mut timeout: Option<Duration>) -> Option<Duration> {
        let now = Instant::now();
        for i in 0..self.listeners.len() {
            let Some(Accepting::Resting(at)) = self.listeners[i].as_ref().map(|l| l.state) else {
                continue;
            };
            if at <= now {
                self.arm_accept(i);
            } else {
                let rest = at - now;
                timeout = Some(timeout.map_or(rest, |t| t.min(rest)));
            }
        }
        timeout
    }

    fn on_accept(&mut self, i: usize, done: Done, out: &mut Vec<Completion>) {
        let Some(listener) = self.listeners[i].as_mut() else {
            return;
        };
        if done.res >= 0 {
            // SAFETY: a successful accept completion's result is a new descriptor we own.
            let socket = unsafe { OwnedFd::from_raw_fd(done.res) };
            accepted(socket, i, &mut self.stats, out);
        } else if done.res != -libc::ECANCELED {
            let err = io::Error::from_raw_os_error(-done.res);
            let fd = listener.fd.as_fd();
            let verdict = self
                .accept
                .on_error(&err, &mut self.stats, || accept_now(fd), out);
            let ended = !done.more() && listener.state == Accepting::Armed;
            if verdict == Verdict::Rest && ended {
                // The failure ended the multishot accept; re-arming at once would spin. (A
                // stopping listener stays so, to be closed below.)
                listener.state = Accepting::Resting(Instant::now() + accept::REST);
            }
        }
        if done.more() {
            return;
        }
        match listener.state {
            Accepting::Armed => self.arm_accept(i),
            Accepting::Resting(_) => {}
            // Nothing of the ring refers to it any more: closing it takes it out of the
            // SO_REUSEPORT group, so new connections go to listeners that still accept.
            Accepting::Stopping => self.listeners[i] = None,
        }
    }

    fn on_recv(&mut self, token: Token, done: Done, out: &mut Vec<Completion>) {
        let buf = done
            .buffer()
            .map(|bid| self.bufs.take(bid, done.res.max(0) as usize));
        let Some(conn) = find(&mut self.conns, token) else {
            if let Some(buf) = buf {
                self.bufs.recycle(buf);
            }
            return;
        };
        if !done.more() {
            conn.recv = Recv::Idle;
        }
        let item = match done.res {
            n if n > 0 => buf.map(Ok),
            0 => {
                conn.recv = Recv::Ended;
                if let Some(buf) = buf {
                    self.bufs.recycle(buf);
                }
                Some(Ok(Vec::new()))
            }
            e if -e == libc::ENOBUFS => {
                self.stats.enobufs += 1;
                conn.recv = Recv::Starved;
                self.starved.push_back(token);
                None
            }
            e if -e == libc::ECANCELED => None,
            e => {
                conn.recv = Recv::Ended;
                Some(Err(io::Error::from_raw_os_error(-e)))
            }
        };
        let slot = token.slot as usize;
        if conn.life != Life::Open {
            if let Some(Ok(buf)) = item {
                self.bufs.recycle(buf);
            }
            self.finish_close(slot);
            return;
        }
        if let Some(item) = item {
            self.stats.reads += 1;
            if conn.deliver(slot, item, (self.epoch, self.read_budget), out) {
                self.ready.push(slot);
            }
        }
        self.sync_recv(slot);
    }

    fn on_send(&mut self, token: Token, res: i32, out: &mut Vec<Completion>) {
        let Some(conn) = find(&mut self.conns, token) else {
            return;
        };
        let Some(mut sending) = conn.send.take() else {
            return;
        };
        let slot = token.slot as usize;
        if conn.life != Life::Open {
            // The kernel is done with the buffer: it may go now.
            drop(sending);
            self.finish_close(slot);
            return;
        }
        let result = if res > 0 {
            self.stats.writes += 1;
            sending.sent += res as usize;
            if sending.sent < sending.buf.len() {
                conn.send = Some(sending);
                self.push_send(slot);
                return;
            }
            Ok(())
        } else if res == 0 {
            Err(io::ErrorKind::WriteZero.into())
        } else {
            Err(io::Error::from_raw_os_error(-res))
        };
        let mut buf = sending.buf;
        buf.clear();
        out.push(Completion::Sent { token, buf, result });
    }

    fn on_close(&mut self, token: Token, res: i32, out: &mut Vec<Completion>) {
        if find(&mut self.conns, token).is_none() {
            return;
        }
        if res < 0 {
            tracing::debug!(error = %io::Error::from_raw_os_error(-res), "close failed");
        }
        self.conns[token.slot as usize] = None;
        out.push(Completion::Closed { token });
    }

    /// Handles every completion in the completion queue.
    fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut reaped = std::mem::take(&mut self.reaped);
        self.ring.reap(&mut reaped);
        for done in reaped.drain(..) {
            match Op::decode(done.user_data) {
                Some(Op::Accept(i)) => self.on_accept(i, done, out),
                Some(Op::Recv(token)) => self.on_recv(token, done, out),
                Some(Op::Send(token)) => self.on_send(token, done.res, out),
                Some(Op::Close(token)) => self.on_close(token, done.res, out),
                Some(Op::Cancel) => {}
                Some(Op::Wake) => {
                    out.push(Completion::Woken);
                    self.arm_wake();
                }
                None => {
                    tracing::error!(user_data = done.user_data, "completion of an unknown operation");
                }
            }
        }
        self.reaped = reaped;
    }
}

/// Reports a socket from the multishot accept to the worker, unless its client already left.
fn accepted(socket: OwnedFd, listener: usize, stats: &mut IoStats, out: &mut Vec<Completion>) {
    let sock = SockRef::from(&socket);
    if let Err(e) = sock.set_tcp_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY failed");
    }
    // Multishot accept returns no address (it has nowhere to put one per connection). A
    // client that reset the connection while it waited in the accept queue has no peer any
    // more (ENOTCONN): nothing is left to serve.
    match sock.peer_addr().map(|a| a.as_socket()) {
        Ok(Some(peer)) => out.push(Completion::Accepted {
            socket,
            peer,
            listener,
        }),
        Ok(None) | Err(_) => stats.vanished += 1,
    }
}

/// Accepts one waiting connection at once (the listener is non-blocking), outside the ring:
/// the accept policy's way to refuse a client while out of descriptors.
fn accept_now(listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, SocketAddr)> {
    let (socket, addr) = SockRef::from(&listener).accept()?;
    socket.set_nonblocking(true)?;
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
    Ok((socket.into(), peer))
}

impl Backend for Uring {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        if !self.enabled {
            // This thread becomes the ring's single issuer (IORING_SETUP_SINGLE_ISSUER takes
            // the task that enables an IORING_SETUP_R_DISABLED ring).
            self.ring.io_uring().submitter().register_enable_rings()?;
            self.enabled = true;
            tracing::debug!(setup = self.setup, "io_uring enabled");
        }
        self.epoch += 1;
        self.accept.restore_spare();
        out.append(&mut self.done);
        self.deliver_ready(out);
        self.feed_starved();
        let timeout = self.wake_resting(timeout);
        self.ring.flush_backlog();
        let busy = !out.is_empty() || !self.ready.is_empty() || !self.ring.idle();
        self.ring.enter(!busy, timeout)?;
        self.reap(out);
        Ok(())
    }

    fn attach(&mut self, token: Token, socket: OwnedFd) -> io::Result<()> {
        crate::backend::check_slot(token)?;
        let slot = token.slot as usize;
        if self.conns.len() <= slot {
            self.conns.resize_with(slot + 1, || None);
        }
        if self.conns[slot].is_some() {
            return Err(io::Error::other("connection slot still in use"));
        }
        self.conns[slot] = Some(Conn::new(token.generation, socket.into_raw_fd()));
        self.sync_recv(slot);
        Ok(())
    }

    fn reject(&mut self, socket: OwnedFd, reply: &'static [u8]) {
        // A fresh socket's send buffer takes a one-line reply whole; if not, the client loses
        // a courtesy, not data. Done at once, so the descriptor closes with this call.
        // SAFETY: sends from a static slice on a descriptor we own.
        let n = unsafe {
            libc::send(
                socket.as_raw_fd(),
                reply.as_ptr().cast(),
                reply.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            self.stats.writes += 1;
        }
    }

    fn set_receiving(&mut self, token: Token, on: bool) {
        let Some(conn) = find(&mut self.conns, token) else {
            return;
        };
        conn.wanted = on;
        let slot = token.slot as usize;
        if on && conn.holds() && !conn.queued {
            conn.queued = true;
            self.ready.push(slot);
        }
        self.sync_recv(slot);
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        self.bufs.recycle(buf);
    }

    fn send(&mut self, token: Token, mut buf: Vec<u8>) {
        let Some(conn) = find(&mut self.conns, token).filter(|c| c.life == Life::Open) else {
            buf.clear();
            let result = Err(io::ErrorKind::NotConnected.into());
            self.done.push(Completion::Sent { token, buf, result });
            return;
        };
        debug_assert!(conn.send.is_none(), "one send in flight per connection");
        if buf.is_empty() {
            self.done.push(Completion::Sent {
                token,
                buf,
                result: Ok(()),
            });
            return;
        }
        conn.send = Some(Sending { buf, sent: 0 });
        self.push_send(token.slot as usize);
    }

    fn close(&mut self, token: Token) {
        let Some(conn) = find(&mut self.conns, token).filter(|c| c.life == Life::Open) else {
            return;
        };
        conn.life = Life::Closing;
        for buf in conn.take_held() {
            self.bufs.recycle(buf);
        }
        if conn.recv.in_flight() || conn.send.is_some() {
            // One cancellation for every operation on the socket: its receive and its send.
            let fd = conn.fd;
            self.cancel_all(fd);
        }
        self.finish_close(token.slot as usize);
    }

    fn stop_accepting(&mut self) {
        for i in 0..self.listeners.len() {
            let Some(listener) = self.listeners[i].as_mut() else {
                continue;
            };
            match listener.state {
                Accepting::Armed => {
                    // Its socket closes once the accept's last completion is in (see
                    // `on_accept`): closing it now would leave the accept in flight on a file
                    // the kernel keeps open.
                    listener.state = Accepting::Stopping;
                    let entry = opcode::AsyncCancel::new(Op::Accept(i).encode()).build();
                    // SAFETY: a cancellation refers to no memory.
                    unsafe { self.ring.submit(entry, Op::Cancel) };
                }
                Accepting::Resting(_) => self.listeners[i] = None,
                Accepting::Stopping => {}
            }
        }
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn io_stats(&self) -> IoStats {
        IoStats {
            backlog_peak: self.ring.backlog_peak as u64,
            ..self.stats
        }
    }
}

impl Drop for Uring {
    /// Cancels every operation and waits for their last completions, so the kernel writes
    /// into no buffer after it is freed. Should that not finish in time, the buffers are
    /// leaked rather than freed under the kernel.
    fn drop(&mut self) {
        let sqpoll = self.ring.io_uring().params().is_setup_sqpoll();
        tracing::info!(setup = self.setup, sqpoll, "io_uring backend stopped");
        self.draining = true;
        for listener in self.listeners.iter_mut().flatten() {
            listener.state = Accepting::Stopping;
        }
        for conn in self.conns.iter_mut().flatten() {
            if conn.life == Life::Open {
                // Sends and receives that complete now are dropped, not continued.
                conn.life = Life::Closing;
            }
        }
        let deadline = Instant::now() + DRAIN_LIMIT;
        let mut sink = Vec::new();
        while self.enabled && self.ring.inflight() > 0 && Instant::now() < deadline {
            let entry = opcode::AsyncCancel2::new(CancelBuilder::any()).build();
            // SAFETY: a cancellation refers to no memory.
            unsafe { self.ring.submit(entry, Op::Cancel) };
            self.ring.flush_backlog();
            if self.ring.enter(true, Some(Duration::from_millis(50))).is_err() {
                break;
            }
            self.reap(&mut sink);
            for completion in sink.drain(..) {
                if let Completion::Received { result: Ok(buf), .. } = completion {
                    self.bufs.recycle(buf);
                }
            }
        }
        if self.enabled && self.ring.inflight() > 0 {
            tracing::error!(
                inflight = self.ring.inflight(),
                "io_uring operations did not finish; leaking their buffers"
            );
            self.bufs.leak();
            std::mem::forget(std::mem::take(&mut self.wake_buf));
            for conn in self.conns.iter_mut().flatten() {
                std::mem::forget(conn.send.take());
            }
        }
        for conn in self.conns.iter().flatten() {
            if conn.life != Life::CloseSubmitted {
                // SAFETY: the connection's descriptor is ours and was not closed by the ring.
                unsafe { libc::close(conn.fd) };
            }
        }
    }
}
