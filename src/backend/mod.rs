//! The contract between a worker and its I/O backend: the worker asks for operations, the backend answers with completions.
//!
//! # The contract
//!
//! A worker owns its sessions, their buffers and their timers; a backend owns the sockets and
//! the kernel interface. The contract is completion-style, because that is what io_uring is
//! and readiness is easy to turn into completions, while the reverse is not:
//!
//! - **Accept.** The backend accepts on the worker's listeners until
//!   [`Backend::stop_accepting`], and reports each socket as [`Completion::Accepted`],
//!   non-blocking and with `TCP_NODELAY` set (a pipelining client otherwise waits ~40 ms per
//!   batch: Nagle on our side against delayed ACK on theirs). The worker either
//!   [`attach`](Backend::attach)es it under a [`Token`] or [`reject`](Backend::reject)s it.
//! - **Accept failures** follow one policy on both backends (`accept.rs`). Out of memory
//!   (`ENOMEM`, `ENOBUFS`): accepting rests for a short interval, as it does when out of
//!   descriptors with no way to refuse. Out of descriptors (`EMFILE`, `ENFILE`): each backend
//!   keeps one spare descriptor; it closes it, accepts the waiting client with it and reports
//!   that socket as [`Completion::Refused`], which the worker must
//!   [`reject`](Backend::reject) (`421 4.3.2`), never attach; the spare is re-opened on the
//!   next wait. So a full process still answers its clients instead of leaving them in the
//!   listen backlog. A failure that concerns one connection only (`ECONNABORTED` and the
//!   like) is passed over. Warnings are rate-limited (one a second) and every failure is
//!   counted in [`IoStats`].
//! - **Receive.** While receiving is on for a connection (it starts on; see
//!   [`Backend::set_receiving`]) the backend reports the bytes that arrive as
//!   [`Completion::Received`] in buffers it lends; the worker hands each one back with
//!   [`Backend::recycle`] (io_uring's provided-buffer rings work the same way). A session
//!   therefore holds no receive buffer while idle. An empty buffer means end of stream. The
//!   backend delivers at most `read_budget` octets per connection per [`Backend::wait`], so
//!   one flooding client cannot starve the others; what remains is delivered on the next
//!   call, which then does not sleep. Turning receiving off is how the worker bounds memory:
//!   the backend stops reading, and the client's bytes wait in the kernel, then in the
//!   client (TCP flow control).
//! - **Send.** [`Backend::send`] takes ownership of a buffer and returns it, emptied, in
//!   [`Completion::Sent`] once every byte is written or the connection failed. The worker has
//!   at most one send in flight per connection and accumulates further replies meanwhile, so
//!   all replies produced by one batch of input leave in one write. Every send is answered
//!   by exactly one [`Completion::Sent`] unless [`Backend::close`] comes first (then it is
//!   dropped and only `Closed` follows): a send for a token that is closing or unknown
//!   (never attached, or already closed) gets its buffer back on the next wait with an
//!   [`io::ErrorKind::NotConnected`] error.
//! - **Close.** [`Backend::close`] ends the connection; [`Completion::Closed`] follows once
//!   the backend holds nothing of it (an in-flight send is dropped). Only then may the token's
//!   slot be reused. Each attached token gets exactly one `Closed`: [`Backend::close`] and
//!   [`Backend::set_receiving`] do nothing for a token that is closing or unknown.
//! - **Tokens.** A token is the worker's slot index plus a generation, so a completion that
//!   arrives late for a slot that has since been reused is recognized and ignored. Slots are
//!   below [`MAX_SLOTS`] (io_uring packs the slot into 24 bits of an operation's user data):
//!   both backends refuse to [`attach`](Backend::attach) any other with
//!   [`io::ErrorKind::InvalidInput`], closing the socket.
//! - **Timers.** The backend only sleeps: [`Backend::wait`] takes the time until the worker's
//!   next timer, and returns early for any completion or a [`Wake`] from another thread
//!   (the spool committer, the shutdown signal), reported as [`Completion::Woken`].
//! - **Counters.** Each backend keeps its own figures in [`IoStats`], under the same names on
//!   both; one that cannot happen on a backend stays 0 there.
//!
//! The worker never blocks anywhere but in [`Backend::wait`]. Which backend runs, and how it
//! is built from a [`BackendConfig`], is decided here too ([`choose`], [`open`]), so the rest
//! of the server names no backend and the worker stays generic over [`Backend`].

mod accept;
pub mod epoll;
mod select;
#[cfg(test)]
mod tests;
pub mod uring;

pub use select::{choose, open, Choice, WithBackend};

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ServerLimits;
pub use crate::wake::Wake;

/// A generation the worker never gives a connection, free for a backend's own tokens
/// (listeners, waker).
pub const RESERVED_GENERATION: u32 = u32::MAX;

/// Connection slots a backend takes: [`Token::slot`] must be below this (24 bits).
pub const MAX_SLOTS: u32 = 1 << 24;

/// What the backends are built with (see [`open`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConfig {
    /// Octets delivered per connection per [`Backend::wait`].
    pub read_budget: usize,
    /// Octets per receive buffer of the epoll backend (io_uring uses `uring_buffer_size`).
    pub recv_buffer_size: usize,
    /// Connection slots to reserve up front (address space only, as the worker's slab does),
    /// so the io_uring backend's table never moves, nor leaves its outgrown copies resident,
    /// as connections arrive. The epoll backend grows its table as needed.
    pub slot_reserve: usize,
    /// Submission queue entries of each ring (the completion queue gets four times as many).
    pub uring_entries: u32,
    /// Let a kernel thread poll the submission queue (`IORING_SETUP_SQPOLL`).
    pub uring_sqpoll: bool,
    /// Buffers in each ring's provided-buffer ring.
    pub uring_buffers: usize,
    /// Octets per provided buffer.
    pub uring_buffer_size: usize,
    /// How long a wait that submitted sends holds out for one more completion than those
    /// sends (IORING_FEAT_MIN_TIMEOUT, 6.12), in microseconds; 0: not at all. Sends to sockets
    /// with room complete during the submission, and without this their completions alone
    /// would end the wait, costing a second enter per turn to sleep for the next input.
    pub uring_min_wait_us: u32,
}

impl From<&ServerLimits> for BackendConfig {
    /// The operator's limits, as the backends take them.
    fn from(limits: &ServerLimits) -> BackendConfig {
        BackendConfig {
            read_budget: limits.read_budget,
            recv_buffer_size: limits.input_buffer,
            slot_reserve: limits.max_connections.min(1 << 16),
            uring_entries: limits.uring_entries,
            uring_sqpoll: limits.uring_sqpoll,
            uring_buffers: limits.uring_buffers,
            uring_buffer_size: limits.uring_buffer_size,
            uring_min_wait_us: limits.uring_min_wait_us,
        }
    }
}

/// Refuses a slot the token encoding cannot carry (see the contract); both backends' `attach`
/// start with it.
pub(crate) fn check_slot(token: Token) -> io::Result<()> {
    if token.slot >= MAX_SLOTS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connection slot beyond the backend's 24 bits",
        ));
    }
    Ok(())
}

/// A connection's name: the worker's slot index and that slot's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token {
    pub slot: u32,
    pub generation: u32,
}

impl Token {
    /// Packs the token into 64 bits (for epoll's and io_uring's user data).
    pub fn to_u64(self) -> u64 {
        u64::from(self.generation) << 32 | u64::from(self.slot)
    }

    /// The inverse of [`Token::to_u64`].
    pub fn from_u64(v: u64) -> Token {
        Token {
            slot: v as u32,
            generation: (v >> 32) as u32,
        }
    }
}

/// What happened, as reported by [`Backend::wait`].
#[derive(Debug)]
pub enum Completion {
    /// A new connection on the worker's listener number `listener` (its index in the list the
    /// backend was built with), so the worker can tell an implicit TLS listener from a plain one.
    Accepted {
        socket: OwnedFd,
        peer: SocketAddr,
        listener: usize,
    },
    /// A connection accepted with the backend's spare descriptor while the process is out of
    /// descriptors: the worker must [`reject`](Backend::reject) it (`421 4.3.2`), not attach
    /// it; the spare is re-opened on the next wait.
    Refused { socket: OwnedFd, peer: SocketAddr },
    /// Bytes from the client in a lent buffer (give it back with [`Backend::recycle`]); an
    /// empty buffer is the end of the stream, an error a broken connection.
    Received {
        token: Token,
        result: io::Result<Vec<u8>>,
    },
    /// The buffer of a [`Backend::send`], emptied, once all of it was written or it failed.
    Sent {
        token: Token,
        buf: Vec<u8>,
        result: io::Result<()>,
    },
    /// The connection is closed and the backend holds nothing of it.
    Closed { token: Token },
    /// Another thread called [`Wake::wake`].
    Woken,
}

/// Counters a backend keeps, reported in the worker's statistics (the stats file's `io`).
/// Both backends have every field; one that cannot happen on a backend stays 0 there.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IoStats {
    /// Receive system calls (or completions) that returned data or end of stream.
    pub reads: u64,
    /// Send system calls (or completions) that wrote bytes.
    pub writes: u64,
    /// Accepts that failed for want of descriptors (`EMFILE`, `ENFILE`).
    pub accept_no_fds: u64,
    /// Accepts that failed for want of memory (`ENOMEM`, `ENOBUFS`); accepting rested.
    pub accept_no_memory: u64,
    /// Accepts that failed for that one connection only (`ECONNABORTED` and the like).
    pub accept_aborted: u64,
    /// Connections accepted with the spare descriptor only to be refused
    /// ([`Completion::Refused`]).
    pub refused_no_fds: u64,
    /// Accepted connections already reset by their client, dropped before the worker saw
    /// them. io_uring only: its multishot accept returns no address, so the backend asks for
    /// the peer and finds none; epoll's accept returns the address with the socket, and such a
    /// connection reaches the worker and fails on its first read.
    pub vanished: u64,
    /// Receives ended because the provided-buffer ring was empty (`ENOBUFS`), re-armed as
    /// buffers came back. io_uring only: epoll reads into buffers of its own.
    pub enobufs: u64,
    /// The most submissions that waited at once for room in a full submission queue (the
    /// largest over all workers, not a sum). io_uring only: epoll submits nothing.
    pub backlog_peak: u64,
}

impl IoStats {
    /// Adds another worker's counters to these.
    pub fn merge(&mut self, other: &IoStats) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.accept_no_fds += other.accept_no_fds;
        self.accept_no_memory += other.accept_no_memory;
        self.accept_aborted += other.accept_aborted;
        self.refused_no_fds += other.refused_no_fds;
        self.vanished += other.vanished;
        self.enobufs += other.enobufs;
        self.backlog_peak = self.backlog_peak.max(other.backlog_peak);
    }
}

/// An I/O backend for one worker. See the module documentation for the contract.
pub trait Backend {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// Waits up to `timeout` (`None`: indefinitely) for completions and appends them to `out`.
    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()>;

    /// Takes an accepted socket under `token` and starts receiving from it; a slot of
    /// [`MAX_SLOTS`] or more is refused ([`io::ErrorKind::InvalidInput`]) and the socket closed.
    fn attach(&mut self, token: Token, socket: OwnedFd) -> io::Result<()>;

    /// Sends `reply` on an accepted socket as best it can, without waiting, and closes it.
    fn reject(&mut self, socket: OwnedFd, reply: &'static [u8]);

    /// Turns receiving on or off for a connection.
    fn set_receiving(&mut self, token: Token, on: bool);

    /// Gives back a buffer lent by [`Completion::Received`].
    fn recycle(&mut self, buf: Vec<u8>);

    /// Sends all of `buf`; [`Completion::Sent`] returns it (with `NotConnected` at once for a
    /// token that is closing or unknown).
    fn send(&mut self, token: Token, buf: Vec<u8>);

    /// Closes a connection; [`Completion::Closed`] follows (nothing for a token that is
    /// closing or unknown).
    fn close(&mut self, token: Token);

    /// Closes the listeners; connections already accepted are unaffected.
    fn stop_accepting(&mut self);

    /// A handle other threads use to end a [`Backend::wait`] early.
    fn waker(&self) -> Arc<dyn Wake>;

    /// The backend's counters.
    fn io_stats(&self) -> IoStats;
}
