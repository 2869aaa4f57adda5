//! The io_uring backend: one ring per worker, with multishot accept, multishot receive into a provided-buffer ring and owned-buffer sends, behind the backend contract.
//!
//! - **Submission.** Operations are queued in the submission queue as the worker asks for them
//!   and handed to the kernel by the one `io_uring_enter` of [`Backend::wait`], which also
//!   waits (bounded by the worker's next timer) and reaps. What does not fit in a full
//!   submission queue waits, in order, in a backlog that is submitted before anything newer.
//! - **Receive.** Each connection has at most one multishot receive (`IORING_RECV_MULTISHOT`
//!   with `IOSQE_BUFFER_SELECT`) drawing from the worker's provided-buffer ring, so an idle
//!   connection holds no buffer. Each ring buffer is a `Vec<u8>` of its own, kept in a table by
//!   buffer id while the kernel may write it, lent to the worker on completion and put back in
//!   the ring by [`Backend::recycle`]. An empty ring ends a multishot receive with `ENOBUFS`
//!   (the bytes stay in the socket); such connections are re-armed, in order, as buffers come
//!   back. Bytes beyond a connection's read budget, or that arrive after receiving was turned
//!   off, are kept in order and delivered on a later wait; while they pile up, the receive is
//!   cancelled.
//! - **Send.** A send owns its buffer until its completion; a short send continues where it
//!   stopped.
//! - **Close.** Closing cancels the connection's operations (`IORING_ASYNC_CANCEL_FD |
//!   IORING_ASYNC_CANCEL_ALL`), waits for their final completions (the kernel may write a
//!   buffer until then), closes the socket with `IORING_OP_CLOSE` and only then reports
//!   [`Completion::Closed`].
//! - **Tokens.** Every operation's user data is its kind, the connection's slot and its
//!   generation; a completion for another generation is recognized and dropped.
//! - **Waking.** An eventfd with a read operation always pending on it.
//!
//! The ring is set up with `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` where the
//! kernel takes it (else with `COOP_TASKRUN`, else `SINGLE_ISSUER` alone, as with SQPOLL, else
//! plain) and `IORING_SETUP_R_DISABLED`: it is built on the main thread and enabled by the
//! worker thread on its first wait, which makes that thread the ring's single issuer.

use super::{Backend, Completion, IoStats, Token, Wake};
use io_uring::types::{BufRingEntry, CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, EnterFlags, IoUring, Probe};
use socket2::SockRef;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The buffer group of the worker's provided-buffer ring (one group per io_uring).
const BGID: u16 = 0;
/// Slots must fit the 24 bits of the user data that hold them.
const MAX_SLOT: usize = (1 << 24) - 1;
/// How long a listener whose multishot accept ran out of descriptors or memory rests before
/// accepting again (as the epoll backend), so a shortage does not become a busy loop.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long dropping the backend waits for the kernel to finish with its buffers.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// What the ring is built with.
#[derive(Debug, Clone, Copy)]
pub struct UringConfig {
    /// Submission queue entries (the completion queue gets four times as many).
    pub entries: u32,
    /// Let a kernel thread poll the submission queue (`IORING_SETUP_SQPOLL`).
    pub sqpoll: bool,
    /// Buffers in the provided-buffer ring.
    pub buffers: usize,
    /// Octets per provided buffer.
    pub buffer_size: usize,
    /// Octets delivered per connection per [`Backend::wait`].
    pub read_budget: usize,
    /// Connection slots to reserve (address space only, as the worker's slab does), so the
    /// table never moves, nor leaves its outgrown copies resident, as connections arrive.
    pub reserve: usize,
    /// How long a wait that submitted sends holds out for one more completion than those
    /// sends (IORING_FEAT_MIN_TIMEOUT, 6.12), in microseconds; 0: not at all. Sends to sockets
    /// with room complete during the submission, and without this their completions alone
    /// would end the wait, costing a second enter per turn to sleep for the next input.
    pub min_wait_us: u32,
}

/// The kind of an operation, the top byte of its user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Cancel = 4,
    Close = 5,
    Wake = 6,
}

/// User data: kind (8 bits), slot (24 bits), generation (32 bits).
fn user_data(op: Op, slot: usize, generation: u32) -> u64 {
    debug_assert!(slot <= MAX_SLOT);
    (op as u64) << 56 | (slot as u64) << 32 | u64::from(generation)
}

fn decode(data: u64) -> (Option<Op>, usize, u32) {
    let op = match (data >> 56) as u8 {
        1 => Some(Op::Accept),
        2 => Some(Op::Recv),
        3 => Some(Op::Send),
        4 => Some(Op::Cancel),
        5 => Some(Op::Close),
        6 => Some(Op::Wake),
        _ => None,
    };
    (op, ((data >> 32) as usize) & MAX_SLOT, data as u32)
}

/// Checks that this kernel has everything the backend uses; the error names what is missing.
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let mut missing = Vec::new();
    if !ring.params().is_feature_ext_arg() {
        missing.push("IORING_FEAT_EXT_ARG (timed waits, 5.11)");
    }
    if !ring.params().is_feature_nodrop() {
        missing.push("IORING_FEAT_NODROP (5.5)");
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    let ops = [
        (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT"),
        (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
        (opcode::Send::CODE, "IORING_OP_SEND"),
        (opcode::AsyncCancel2::CODE, "IORING_OP_ASYNC_CANCEL"),
        (opcode::Close::CODE, "IORING_OP_CLOSE"),
        (opcode::Read::CODE, "IORING_OP_READ"),
        // Multishot receive came with 6.0, as did zero-copy send: the probe cannot see the
        // former, so the latter stands for the kernel version.
        (
            opcode::SendZc::CODE,
            "IORING_OP_SEND_ZC (kernel 6.0, for multishot receive)",
        ),
    ];
    for (code, name) in ops {
        if !probe.is_supported(code) {
            missing.push(name);
        }
    }
    if let Err(e) = BufRing::new(&ring, 1, 4096) {
        return Err(format!("provided-buffer ring registration failed: {e}"));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing {}", missing.join(", ")))
    }
}

/// The provided-buffer ring (`IORING_REGISTER_PBUF_RING`): the kernel takes a buffer from it
/// for each receive completion and names it by id in the CQE flags.
struct BufRing {
    /// `mask + 1` entries in an anonymous mapping, registered with the kernel.
    entries: *mut BufRingEntry,
    map_len: usize,
    mask: u16,
    /// Our copy of the ring's tail; the kernel only reads it.
    tail: u16,
    size: usize,
    /// By buffer id, the buffer while the kernel may write into it.
    held: Vec<Option<Vec<u8>>>,
    /// Buffer ids whose buffer is lent to the worker (or kept in a connection's backlog).
    out: Vec<u16>,
}

// SAFETY: the mapping behind `entries` is owned by the `BufRing` alone (no alias is handed
// out), so moving it to the worker thread along with its ring is sound.
unsafe impl Send for BufRing {}

impl BufRing {
    /// Registers a ring of `count` buffers of `size` octets with `ring`, all of them provided.
    fn new(ring: &IoUring, count: usize, size: usize) -> io::Result<BufRing> {
        let count = count.clamp(1, 1 << 15);
        let slots = count.next_power_of_two();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let map_len = (slots * std::mem::size_of::<BufRingEntry>()).div_ceil(page) * page;
        // SAFETY: an anonymous private mapping touches no existing memory; the result is
        // checked before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut bufs = BufRing {
            entries: addr.cast(),
            map_len,
            mask: (slots - 1) as u16,
            tail: 0,
            size,
            held: Vec::with_capacity(count),
            out: Vec::new(),
        };
        // SAFETY: the mapping is page aligned, `slots` entries long and lives until `bufs` is
        // dropped, which unregisters it first (see `Drop for BufRing`); the ring owns `bufs`.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(addr as u64, slots as u16, BGID, 0)?;
        }
        for bid in 0..count as u16 {
            bufs.held.push(None);
            bufs.provide(bid, Vec::with_capacity(size));
        }
        Ok(bufs)
    }

    /// Puts `buf` in the ring under `bid`; the kernel may write into it from now on.
    fn provide(&mut self, bid: u16, mut buf: Vec<u8>) {
        buf.clear();
        let index = usize::from(self.tail & self.mask);
        // SAFETY: `index` is inside the mapping; the kernel reads only entries between its
        // head and the published tail, and this one is past the tail until the store below.
        unsafe {
            let entry = &mut *self.entries.add(index);
            entry.set_addr(buf.as_mut_ptr() as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        self.held[usize::from(bid)] = Some(buf);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail lives in the first entry's reserved field (io_uring_buf_ring); the
        // release store publishes the entry written above before the kernel can see the tail.
        unsafe {
            let tail = BufRingEntry::tail(self.entries).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Takes the buffer the kernel filled with `len` octets under `bid`.
    fn take(&mut self, bid: u16, len: usize) -> Vec<u8> {
        let mut buf = self.held[usize::from(bid)]
            .take()
            .expect("the kernel selected a buffer it was given");
        self.out.push(bid);
        // SAFETY: the completion says the kernel wrote `len` octets at the buffer's start, and
        // `len` is at most the length the entry announced, which is within the capacity.
        unsafe { buf.set_len(len.min(buf.capacity())) };
        buf
    }

    /// Returns a lent buffer to the ring; one of another size is dropped.
    fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() < self.size {
            return;
        }
        if let Some(bid) = self.out.pop() {
            self.provide(bid, buf);
        }
    }

    /// Buffers in the ring, free for the kernel to take.
    fn available(&self) -> usize {
        self.held.len() - self.out.len()
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this length and nothing else refers
        // to it. The kernel pinned its pages when it was registered (io_uring/kbuf.c), so
        // unmapping cannot pull memory from under a ring still open; in `Uring` the ring is
        // closed first anyway (field order), after its operations were drained.
        unsafe { libc::munmap(self.entries.cast(), self.map_len) };
    }
}

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

struct Listener {
    /// Closed once accepting stopped and the accept's last completion arrived.
    fd: Option<OwnedFd>,
    armed: bool,
    stopped: bool,
    /// After a failed accept: when to try again.
    retry_at: Option<Instant>,
}

struct Conn {
    generation: u32,
    fd: RawFd,
    /// The worker wants input.
    receiving: bool,
    /// A multishot receive is in flight.
    recv_armed: bool,
    /// Its cancellation was asked for.
    recv_cancelling: bool,
    /// Its receive ended with `ENOBUFS`; it is on the starved list.
    starved: bool,
    /// End of stream or an error was received: nothing more will come.
    ended: bool,
    /// Received but not yet delivered (over the read budget, or receiving was off), in order.
    backlog: VecDeque<io::Result<Vec<u8>>>,
    backlog_bytes: usize,
    /// On the `ready` list.
    queued: bool,
    /// The wait in which `delivered` was counted.
    epoch: u64,
    delivered: usize,
    /// The buffer being sent (owned until its last completion) and how much is written.
    sending: Option<Vec<u8>>,
    sent: usize,
    send_inflight: bool,
    closing: bool,
    close_submitted: bool,
}

impl Conn {
    fn wants_recv(&self, budget: usize) -> bool {
        self.receiving && !self.ended && !self.closing && self.backlog_bytes < budget
    }
}

/// One worker's io_uring, listeners, provided buffers and connections.
pub struct Uring {
    // Dropped first: the ring must be gone before the memory it may touch (see `Drop`).
    ring: IoUring,
    bufs: BufRing,
    waker: Arc<EventFd>,
    /// The eventfd read's destination, alive while the read is in flight.
    wake_buf: Box<u64>,
    listeners: Vec<Listener>,
    conns: Vec<Option<Conn>>,
    /// Submissions that did not fit in the submission queue, oldest first.
    backlog: VecDeque<squeue::Entry>,
    /// Connections with received bytes to deliver on the next wait.
    ready: Vec<usize>,
    /// Connections whose receive ran out of buffers, to re-arm as buffers come back.
    starved: VecDeque<(usize, u32)>,
    /// Completions produced outside `wait` (empty sends).
    done: Vec<Completion>,
    /// Operations whose final completion has not arrived.
    inflight: usize,
    enabled: bool,
    /// Dropping: nothing is re-armed.
    draining: bool,
    sqpoll: bool,
    /// The kernel flags deferred completions in the SQ ring (`IORING_SETUP_TASKRUN_FLAG`).
    taskrun_flag: bool,
    read_budget: usize,
    /// Sends queued since the last enter.
    sends_queued: u32,
    min_wait_us: u32,
    epoch: u64,
    stats: IoStats,
    /// Receives ended by an empty buffer ring.
    enobufs: u64,
    /// Accepted connections already reset by their client, dropped before the worker saw them.
    vanished: u64,
    /// The largest the submission backlog grew.
    backlog_peak: usize,
    setup: &'static str,
}

/// Flags added to a ring's setup.
type SetupFlags = fn(&mut io_uring::Builder);

fn build_ring(config: &UringConfig) -> io::Result<(IoUring, &'static str, bool)> {
    let cq = config.entries.saturating_mul(4);
    // Best first. DEFER_TASKRUN (6.1) runs completion work only when this thread waits, the
    // fewest interruptions; COOP_TASKRUN (5.19) at least does not interrupt it with IPIs;
    // SQPOLL takes neither, but SINGLE_ISSUER (6.0) still spares the kernel some locking.
    let attempts: [(&'static str, SetupFlags); 4] = [
        ("single_issuer+defer_taskrun", |b| {
            b.setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag();
        }),
        ("single_issuer+coop_taskrun", |b| {
            b.setup_single_issuer().setup_coop_taskrun().setup_taskrun_flag();
        }),
        ("single_issuer", |b| {
            b.setup_single_issuer();
        }),
        ("plain", |_| {}),
    ];
    let mut last = None;
    for (name, flags) in attempts {
        let mut builder = IoUring::builder();
        builder.setup_r_disabled().setup_cqsize(cq);
        if config.sqpoll {
            builder.setup_sqpoll(1000);
        }
        flags(&mut builder);
        match builder.build(config.entries) {
            Ok(ring) => return Ok((ring, name, name.ends_with("taskrun"))),
            // EINVAL: a flag this kernel does not know (or refuses with SQPOLL); try fewer.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

impl Uring {
    /// A backend accepting on `listeners` (already listening), set up as `config` says.
    pub fn new(listeners: Vec<std::net::TcpListener>, config: UringConfig) -> io::Result<Uring> {
        let (ring, setup, taskrun_flag) = build_ring(&config)?;
        let bufs = BufRing::new(&ring, config.buffers, config.buffer_size)?;
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor nothing else owns.
        let waker = Arc::new(EventFd(unsafe { OwnedFd::from_raw_fd(efd) }));
        let listeners = listeners
            .into_iter()
            .map(|l| Listener {
                fd: Some(OwnedFd::from(l)),
                armed: false,
                stopped: false,
                retry_at: None,
            })
            .collect();
        let mut uring = Uring {
            ring,
            bufs,
            waker,
            wake_buf: Box::new(0),
            listeners,
            conns: Vec::with_capacity(config.reserve.min(MAX_SLOT + 1)),
            backlog: VecDeque::new(),
            ready: Vec::new(),
            starved: VecDeque::new(),
            done: Vec::new(),
            inflight: 0,
            enabled: false,
            draining: false,
            sqpoll: config.sqpoll,
            taskrun_flag,
            read_budget: config.read_budget,
            sends_queued: 0,
            min_wait_us: config.min_wait_us,
            epoch: 0,
            stats: IoStats::default(),
            enobufs: 0,
            backlog_peak: 0,
            vanished: 0,
            setup,
        };
        for i in 0..uring.listeners.len() {
            uring.arm_accept(i);
        }
        uring.arm_wake();
        Ok(uring)
    }

    /// Queues `entry`, behind the backlog if there is one, so submissions keep their order (a
    /// cancellation must not overtake the operation it cancels).
    ///
    /// Every entry queued here refers only to memory this backend keeps until the entry's
    /// final completion: a connection's send buffer (`Conn::sending`), the wake buffer, the
    /// provided buffers (`BufRing::held`), and descriptors closed only after their operations
    /// completed.
    fn push(&mut self, entry: squeue::Entry) {
        if self.backlog.is_empty() {
            // SAFETY: see above: what the entry points to outlives the operation.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(entry);
        self.backlog_peak = self.backlog_peak.max(self.backlog.len());
    }

    /// Moves the backlog into the submission queue, submitting whenever it is full; stops
    /// when the kernel takes nothing more (`EBUSY`: completions must be reaped first).
    fn flush_backlog(&mut self) {
        loop {
            {
                let mut sq = self.ring.submission();
                while let Some(entry) = self.backlog.front() {
                    // SAFETY: as in `push`.
                    if unsafe { sq.push(entry) }.is_err() {
                        break;
                    }
                    self.backlog.pop_front();
                }
            }
            if self.backlog.is_empty() {
                return;
            }
            let submitter = self.ring.submitter();
            let result = if self.sqpoll {
                submitter.squeue_wait()
            } else {
                submitter.submit()
            };
            match result {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if retryable(&e) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring submit failed");
                    return;
                }
            }
        }
    }

    fn arm_accept(&mut self, i: usize) {
        let listener = &mut self.listeners[i];
        let Some(fd) = listener.fd.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        listener.armed = true;
        listener.retry_at = None;
        let entry = opcode::AcceptMulti::new(Fd(fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Op::Accept, i, 0));
        self.inflight += 1;
        self.push(entry);
    }

    fn arm_wake(&mut self) {
        if self.draining {
            return;
        }
        let entry = opcode::Read::new(
            Fd(self.waker.0.as_raw_fd()),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(user_data(Op::Wake, 0, 0));
        self.inflight += 1;
        self.push(entry);
    }

    fn conn(&mut self, slot: usize, generation: u32) -> Option<&mut Conn> {
        self.conns
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|c| c.generation == generation)
    }

    /// Arms or cancels the connection's receive to match what it wants.
    fn sync_recv(&mut self, slot: usize) {
        let budget = self.read_budget;
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let data = user_data(Op::Recv, slot, conn.generation);
        if conn.wants_recv(budget) {
            if !conn.recv_armed && !conn.starved {
                conn.recv_armed = true;
                conn.recv_cancelling = false;
                let entry = opcode::RecvMulti::new(Fd(conn.fd), BGID).build().user_data(data);
                self.inflight += 1;
                self.push(entry);
            }
        } else if conn.recv_armed && !conn.recv_cancelling && !conn.closing {
            conn.recv_cancelling = true;
            let entry = opcode::AsyncCancel::new(data).build().user_data(user_data(
                Op::Cancel,
                slot,
                conn.generation,
            ));
            self.inflight += 1;
            self.push(entry);
        }
    }

    /// Sends the rest of the connection's buffer.
    fn push_send(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let buf = conn.sending.as_ref().expect("a send to continue");
        let rest = &buf[conn.sent..];
        let len = rest.len().min(u32::MAX as usize) as u32;
        let entry = opcode::Send::new(Fd(conn.fd), rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(Op::Send, slot, conn.generation));
        conn.send_inflight = true;
        self.inflight += 1;
        self.sends_queued += 1;
        self.push(entry);
    }

    /// Once a closing connection has nothing in flight, closes its socket.
    fn finish_close(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        if conn.closing && !conn.recv_armed && !conn.send_inflight && !conn.close_submitted {
            conn.close_submitted = true;
            let entry = opcode::Close::new(Fd(conn.fd)).build().user_data(user_data(
                Op::Close,
                slot,
                conn.generation,
            ));
            self.inflight += 1;
            self.push(entry);
        }
    }

    /// Hands `item` to the worker now, or keeps it for a later wait (over budget, receiving
    /// off, or older bytes still waiting).
    fn deliver(&mut self, slot: usize, item: io::Result<Vec<u8>>, out: &mut Vec<Completion>) {
        let (budget, epoch) = (self.read_budget, self.epoch);
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        if conn.epoch != epoch {
            conn.epoch = epoch;
            conn.delivered = 0;
        }
        let len = item.as_ref().map_or(0, Vec::len);
        let fits = conn.delivered == 0 || conn.delivered + len <= budget;
        if conn.receiving && conn.backlog.is_empty() && fits {
            conn.delivered += len;
            let token = Token {
                slot: slot as u32,
                generation: conn.generation,
            };
            out.push(Completion::Received { token, result: item });
            return;
        }
        conn.backlog_bytes += len;
        conn.backlog.push_back(item);
        if conn.receiving && !conn.queued {
            conn.queued = true;
            self.ready.push(slot);
        }
    }

    /// Delivers what connections kept from earlier waits, within this wait's budgets.
    fn deliver_ready(&mut self, out: &mut Vec<Completion>) {
        let ready = std::mem::take(&mut self.ready);
        let (budget, epoch) = (self.read_budget, self.epoch);
        for &slot in &ready {
            let Some(conn) = self.conns[slot].as_mut() else {
                continue;
            };
            conn.queued = false;
            if !conn.receiving || conn.closing {
                continue;
            }
            if conn.epoch != epoch {
                conn.epoch = epoch;
                conn.delivered = 0;
            }
            let token = Token {
                slot: slot as u32,
                generation: conn.generation,
            };
            while let Some(item) = conn.backlog.front() {
                let len = item.as_ref().map_or(0, Vec::len);
                if conn.delivered > 0 && conn.delivered + len > budget {
                    break;
                }
                conn.delivered += len;
                conn.backlog_bytes -= len;
                let result = conn.backlog.pop_front().expect("checked above");
                out.push(Completion::Received { token, result });
            }
            if !conn.backlog.is_empty() {
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
            let Some((slot, generation)) = self.starved.pop_front() else {
                return;
            };
            let Some(conn) = self.conn(slot, generation) else {
                continue;
            };
            conn.starved = false;
            budget -= 1;
            self.sync_recv(slot);
        }
    }

    fn on_accept(&mut self, i: usize, res: i32, more: bool, out: &mut Vec<Completion>) {
        if !more {
            self.inflight -= 1;
            self.listeners[i].armed = false;
        }
        if res >= 0 {
            // SAFETY: a successful accept completion's result is a new descriptor we own.
            let socket = unsafe { OwnedFd::from_raw_fd(res) };
            let sock = SockRef::from(&socket);
            if let Err(e) = sock.set_tcp_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY failed");
            }
            // Multishot accept returns no address (it has nowhere to put one per connection).
            // A client that reset the connection while it waited in the accept queue has no
            // peer any more (ENOTCONN): nothing is left to serve.
            match sock.peer_addr().map(|a| a.as_socket()) {
                Ok(Some(peer)) => out.push(Completion::Accepted { socket, peer }),
                Ok(None) | Err(_) => self.vanished += 1,
            }
        } else if matches!(-res, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) {
            // Out of descriptors or memory: sessions that end free some. The failure ends the
            // multishot accept; re-arming at once would spin, so it rests first.
            let e = io::Error::from_raw_os_error(-res);
            tracing::warn!(error = %e, "accept failed; retrying shortly");
            if !more {
                self.listeners[i].retry_at = Some(Instant::now() + ACCEPT_RETRY);
            }
        } else if res != -libc::ECANCELED {
            // ECONNABORTED and the like: that one connection is gone.
            tracing::debug!(error = %io::Error::from_raw_os_error(-res), "accept failed");
        }
        let listener = &mut self.listeners[i];
        if listener.armed {
            return;
        }
        if listener.stopped {
            // Nothing of the ring refers to it any more: closing it takes it out of the
            // SO_REUSEPORT group, so new connections go to listeners that still accept.
            listener.fd = None;
        } else if listener.retry_at.is_none() {
            self.arm_accept(i);
        }
    }

    fn on_recv(&mut self, slot: usize, generation: u32, res: i32, flags: u32, out: &mut Vec<Completion>) {
        let more = cqueue::more(flags);
        if !more {
            self.inflight -= 1;
        }
        let buf = cqueue::buffer_select(flags).map(|bid| self.bufs.take(bid, res.max(0) as usize));
        let Some(conn) = self.conn(slot, generation) else {
            if let Some(buf) = buf {
                self.bufs.recycle(buf);
            }
            return;
        };
        if !more {
            conn.recv_armed = false;
            conn.recv_cancelling = false;
        }
        let item = match res {
            n if n > 0 => buf.map(Ok),
            0 => {
                conn.ended = true;
                if let Some(buf) = buf {
                    self.bufs.recycle(buf);
                }
                Some(Ok(Vec::new()))
            }
            _ if -res == libc::ENOBUFS => {
                self.enobufs += 1;
                None
            }
            _ if -res == libc::ECANCELED => None,
            _ => {
                conn.ended = true;
                Some(Err(io::Error::from_raw_os_error(-res)))
            }
        };
        let conn = self.conns[slot].as_mut().expect("checked above");
        if -res == libc::ENOBUFS {
            conn.starved = true;
            self.starved.push_back((slot, generation));
        }
        if conn.closing {
            if let Some(Ok(buf)) = item {
                self.bufs.recycle(buf);
            }
            self.finish_close(slot);
            return;
        }
        if let Some(item) = item {
            self.stats.reads += 1;
            self.deliver(slot, item, out);
        }
        self.sync_recv(slot);
    }

    fn on_send(&mut self, slot: usize, generation: u32, res: i32, out: &mut Vec<Completion>) {
        self.inflight -= 1;
        let Some(conn) = self.conn(slot, generation) else {
            return;
        };
        conn.send_inflight = false;
        if conn.closing {
            // The kernel is done with the buffer: it may go now.
            conn.sending = None;
            self.finish_close(slot);
            return;
        }
        let len = conn.sending.as_ref().map_or(0, Vec::len);
        if res > 0 {
            conn.sent += res as usize;
        }
        let sent = conn.sent;
        let result = if res > 0 {
            self.stats.writes += 1;
            if sent < len {
                self.push_send(slot);
                return;
            }
            Ok(())
        } else if res == 0 {
            Err(io::ErrorKind::WriteZero.into())
        } else {
            Err(io::Error::from_raw_os_error(-res))
        };
        let conn = self.conns[slot].as_mut().expect("checked above");
        let mut buf = conn.sending.take().unwrap_or_default();
        buf.clear();
        let token = Token {
            slot: slot as u32,
            generation,
        };
        out.push(Completion::Sent { token, buf, result });
    }

    fn on_close(&mut self, slot: usize, generation: u32, res: i32, out: &mut Vec<Completion>) {
        self.inflight -= 1;
        if self.conn(slot, generation).is_none() {
            return;
        }
        if res < 0 {
            tracing::debug!(error = %io::Error::from_raw_os_error(-res), "close failed");
        }
        self.conns[slot] = None;
        let token = Token {
            slot: slot as u32,
            generation,
        };
        out.push(Completion::Closed { token });
    }

    /// Handles every completion in the completion queue.
    fn reap(&mut self, out: &mut Vec<Completion>) {
        loop {
            let mut batch = [(0u64, 0i32, 0u32); 64];
            let mut n = 0;
            for cqe in self.ring.completion().take(batch.len()) {
                batch[n] = (cqe.user_data(), cqe.result(), cqe.flags());
                n += 1;
            }
            for &(data, res, flags) in &batch[..n] {
                let (op, slot, generation) = decode(data);
                match op {
                    Some(Op::Accept) => self.on_accept(slot, res, cqueue::more(flags), out),
                    Some(Op::Recv) => self.on_recv(slot, generation, res, flags, out),
                    Some(Op::Send) => self.on_send(slot, generation, res, out),
                    Some(Op::Close) => self.on_close(slot, generation, res, out),
                    Some(Op::Cancel) => self.inflight -= 1,
                    Some(Op::Wake) => {
                        self.inflight -= 1;
                        out.push(Completion::Woken);
                        self.arm_wake();
                    }
                    None => tracing::error!(user_data = data, "completion of an unknown operation"),
                }
            }
            if n < batch.len() {
                return;
            }
        }
    }

    /// Submits what is queued and, if `wait`, sleeps until a completion or `timeout`.
    /// `EBUSY`/`EAGAIN` (completions must be reaped first, or no memory for now) and `EINTR`
    /// mean "submit again on the next wait"; `ETIME` is the timeout.
    fn enter(&mut self, wait: bool, timeout: Option<Duration>) -> io::Result<()> {
        let (pending, taskrun, overflow) = {
            let mut sq = self.ring.submission();
            sq.sync();
            (sq.len(), sq.taskrun(), sq.cq_overflow())
        };
        let sends = std::mem::take(&mut self.sends_queued);
        let min_timeout = self.ring.params().is_feature_min_timeout();
        let submitter = self.ring.submitter();
        let result = if wait && sends > 0 && min_timeout && self.min_wait_us > 0 {
            // Wait for the sends and one more completion, but after `min_wait_us` for any one.
            let ts = Timespec::from(timeout.unwrap_or(Duration::from_secs(3600)));
            let args = SubmitArgs::new().timespec(&ts).min_wait_usec(self.min_wait_us);
            submitter.submit_with_args(sends as usize + 1, &args)
        } else if wait {
            match timeout {
                Some(t) => {
                    let ts = Timespec::from(t);
                    let args = SubmitArgs::new().timespec(&ts);
                    submitter.submit_with_args(1, &args)
                }
                None => submitter.submit_and_wait(1),
            }
        } else {
            // Deferred completions are only posted by an enter with GETEVENTS; the kernel
            // says whether there are any (IORING_SQ_TASKRUN) when it can.
            let get = taskrun || overflow || !self.taskrun_flag;
            if pending == 0 && !get && !self.sqpoll {
                return Ok(());
            }
            let flags = if get {
                EnterFlags::GETEVENTS
            } else {
                EnterFlags::empty()
            };
            if self.sqpoll {
                submitter.submit()
            } else {
                // SAFETY: no argument is passed; `pending` entries are in the queue.
                unsafe { submitter.enter::<libc::sigset_t>(pending as u32, 0, flags.bits(), None) }
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if retryable(&e) || e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN | libc::EINTR))
}

impl Backend for Uring {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        if !self.enabled {
            // This thread becomes the ring's single issuer (IORING_SETUP_SINGLE_ISSUER takes
            // the task that enables an IORING_SETUP_R_DISABLED ring).
            self.ring.submitter().register_enable_rings()?;
            self.enabled = true;
            tracing::debug!(setup = self.setup, "io_uring enabled");
        }
        self.epoch += 1;
        out.append(&mut self.done);
        self.deliver_ready(out);
        self.feed_starved();
        let now = Instant::now();
        let mut timeout = timeout;
        for i in 0..self.listeners.len() {
            if let Some(at) = self.listeners[i].retry_at {
                if at <= now {
                    self.arm_accept(i);
                } else {
                    let rest = at - now;
                    timeout = Some(timeout.map_or(rest, |t| t.min(rest)));
                }
            }
        }
        self.flush_backlog();
        let busy = !out.is_empty()
            || !self.ready.is_empty()
            || !self.backlog.is_empty()
            || !self.ring.completion().is_empty();
        self.enter(!busy, timeout)?;
        self.reap(out);
        Ok(())
    }

    fn attach(&mut self, token: Token, socket: OwnedFd) -> io::Result<()> {
        let slot = token.slot as usize;
        if slot > MAX_SLOT {
            return Err(io::Error::other("connection slot beyond the io_uring user data"));
        }
        if self.conns.len() <= slot {
            self.conns.resize_with(slot + 1, || None);
        }
        if self.conns[slot].is_some() {
            return Err(io::Error::other("connection slot still in use"));
        }
        self.conns[slot] = Some(Conn {
            generation: token.generation,
            fd: socket.into_raw_fd(),
            receiving: true,
            recv_armed: false,
            recv_cancelling: false,
            starved: false,
            ended: false,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            queued: false,
            epoch: 0,
            delivered: 0,
            sending: None,
            sent: 0,
            send_inflight: false,
            closing: false,
            close_submitted: false,
        });
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
        let slot = token.slot as usize;
        let Some(conn) = self.conn(slot, token.generation) else {
            return;
        };
        conn.receiving = on;
        if on && !conn.backlog.is_empty() && !conn.queued {
            conn.queued = true;
            self.ready.push(slot);
        }
        self.sync_recv(slot);
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        self.bufs.recycle(buf);
    }

    fn send(&mut self, token: Token, buf: Vec<u8>) {
        let slot = token.slot as usize;
        let Some(conn) = self.conn(slot, token.generation) else {
            return;
        };
        debug_assert!(!conn.send_inflight, "one send in flight per connection");
        if buf.is_empty() || conn.closing {
            let result = if conn.closing {
                Err(io::ErrorKind::NotConnected.into())
            } else {
                Ok(())
            };
            self.done.push(Completion::Sent { token, buf, result });
            return;
        }
        conn.sending = Some(buf);
        conn.sent = 0;
        self.push_send(slot);
    }

    fn close(&mut self, token: Token) {
        let slot = token.slot as usize;
        let Some(conn) = self.conn(slot, token.generation) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        let kept: Vec<_> = conn.backlog.drain(..).collect();
        conn.backlog_bytes = 0;
        let cancel = conn.recv_armed || conn.send_inflight;
        let fd = conn.fd;
        for buf in kept.into_iter().flatten() {
            self.bufs.recycle(buf);
        }
        if cancel {
            // One cancellation for every operation on the socket: its receive and its send.
            let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
                .build()
                .user_data(user_data(Op::Cancel, slot, token.generation));
            self.inflight += 1;
            self.push(entry);
        }
        self.finish_close(slot);
    }

    fn stop_accepting(&mut self) {
        for i in 0..self.listeners.len() {
            let listener = &mut self.listeners[i];
            listener.stopped = true;
            listener.retry_at = None;
            if listener.armed {
                let entry = opcode::AsyncCancel::new(user_data(Op::Accept, i, 0))
                    .build()
                    .user_data(user_data(Op::Cancel, i, 0));
                self.inflight += 1;
                self.push(entry);
            }
        }
        // Each socket closes once its accept's last completion is in (see `on_accept`):
        // closing it now would leave the accept in flight on a file the kernel keeps open.
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn io_stats(&self) -> IoStats {
        self.stats
    }
}

impl Drop for Uring {
    /// Cancels every operation and waits for their final completions, so the kernel writes
    /// into no buffer after it is freed. Should that not finish in time, the buffers are
    /// leaked rather than freed under the kernel.
    fn drop(&mut self) {
        tracing::info!(
            setup = self.setup,
            sqpoll = self.ring.params().is_setup_sqpoll(),
            enobufs = self.enobufs,
            backlog_peak = self.backlog_peak,
            vanished = self.vanished,
            "io_uring backend stopped"
        );
        self.draining = true;
        for listener in &mut self.listeners {
            listener.stopped = true;
        }
        for conn in self.conns.iter_mut().flatten() {
            // Sends and receives that complete now are dropped, not continued.
            conn.closing = true;
        }
        if self.enabled && self.inflight > 0 {
            let entry = opcode::AsyncCancel2::new(CancelBuilder::any())
                .build()
                .user_data(user_data(Op::Cancel, 0, 0));
            self.inflight += 1;
            self.push(entry);
            let deadline = Instant::now() + DRAIN_LIMIT;
            let mut sink = Vec::new();
            while self.inflight > 0 && Instant::now() < deadline {
                self.flush_backlog();
                if self.enter(true, Some(Duration::from_millis(50))).is_err() {
                    break;
                }
                self.reap(&mut sink);
                for completion in sink.drain(..) {
                    if let Completion::Received { result: Ok(buf), .. } = completion {
                        self.bufs.recycle(buf);
                    }
                }
                if self.inflight > 0 {
                    let entry = opcode::AsyncCancel2::new(CancelBuilder::any())
                        .build()
                        .user_data(user_data(Op::Cancel, 0, 0));
                    self.inflight += 1;
                    self.push(entry);
                }
            }
        }
        if self.enabled && self.inflight > 0 {
            tracing::error!(
                inflight = self.inflight,
                "io_uring operations did not finish; leaking their buffers"
            );
            std::mem::forget(std::mem::take(&mut self.bufs.held));
            std::mem::forget(std::mem::take(&mut self.wake_buf));
            for conn in self.conns.iter_mut().flatten() {
                std::mem::forget(conn.sending.take());
            }
        }
        for conn in self.conns.iter().flatten() {
            if !conn.close_submitted {
                // SAFETY: the connection's descriptor is ours and was not closed by the ring.
                unsafe { libc::close(conn.fd) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_names_kind_slot_and_generation() {
        for (op, slot, generation) in [
            (Op::Recv, 0, 0),
            (Op::Send, MAX_SLOT, u32::MAX),
            (Op::Close, 12345, 7),
            (Op::Accept, 1, 0),
        ] {
            assert_eq!(
                decode(user_data(op, slot, generation)),
                (Some(op), slot, generation)
            );
        }
        assert_eq!(decode(0).0, None);
    }

    #[test]
    fn lent_buffers_go_back_into_the_ring() {
        let ring = IoUring::new(8).unwrap();
        let mut bufs = BufRing::new(&ring, 3, 1024).unwrap();
        assert_eq!(bufs.available(), 3);
        assert_eq!(bufs.mask, 3, "three buffers need a ring of four entries");
        let lent = bufs.take(1, 10);
        assert_eq!((lent.len(), bufs.available()), (10, 2));
        assert!(bufs.held[1].is_none());
        bufs.recycle(lent);
        assert_eq!(bufs.available(), 3);
        assert_eq!(bufs.tail, 4, "three provided at start, one given back");
        // A buffer too small for the ring (the empty one of an end of stream) is not taken.
        let lent = bufs.take(0, 0);
        bufs.recycle(Vec::new());
        assert_eq!(bufs.available(), 2);
        bufs.recycle(lent);
        assert_eq!(bufs.available(), 3);
    }
}
