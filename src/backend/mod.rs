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
//!   all replies produced by one batch of input leave in one write.
//! - **Close.** [`Backend::close`] ends the connection; [`Completion::Closed`] follows once
//!   the backend holds nothing of it (an in-flight send is dropped). Only then may the token's
//!   slot be reused.
//! - **Tokens.** A token is the worker's slot index plus a generation, so a completion that
//!   arrives late for a slot that has since been reused is recognized and ignored.
//! - **Timers.** The backend only sleeps: [`Backend::wait`] takes the time until the worker's
//!   next timer, and returns early for any completion or a [`Wake`] from another thread
//!   (the spool committer, the shutdown signal), reported as [`Completion::Woken`].
//!
//! The worker never blocks anywhere but in [`Backend::wait`].

pub mod epoll;
pub mod uring;

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

pub use crate::wake::Wake;

/// A generation the worker never gives a connection, free for a backend's own tokens
/// (listeners, waker).
pub const RESERVED_GENERATION: u32 = u32::MAX;

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
    /// A new connection on one of the worker's listeners.
    Accepted { socket: OwnedFd, peer: SocketAddr },
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

/// Counters a backend keeps, reported in the worker's statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IoStats {
    /// Receive system calls (or completions) that returned data or end of stream.
    pub reads: u64,
    /// Send system calls (or completions) that wrote bytes.
    pub writes: u64,
}

impl IoStats {
    /// Adds another worker's backend counters to these.
    pub fn merge(&mut self, other: &IoStats) {
        self.reads += other.reads;
        self.writes += other.writes;
    }
}

/// An I/O backend for one worker. See the module documentation for the contract.
pub trait Backend {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// Waits up to `timeout` (`None`: indefinitely) for completions and appends them to `out`.
    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()>;

    /// Takes an accepted socket under `token` and starts receiving from it.
    fn attach(&mut self, token: Token, socket: OwnedFd) -> io::Result<()>;

    /// Sends `reply` on an accepted socket as best it can, without waiting, and closes it.
    fn reject(&mut self, socket: OwnedFd, reply: &'static [u8]);

    /// Turns receiving on or off for a connection.
    fn set_receiving(&mut self, token: Token, on: bool);

    /// Gives back a buffer lent by [`Completion::Received`].
    fn recycle(&mut self, buf: Vec<u8>);

    /// Sends all of `buf`; [`Completion::Sent`] returns it.
    fn send(&mut self, token: Token, buf: Vec<u8>);

    /// Closes a connection; [`Completion::Closed`] follows.
    fn close(&mut self, token: Token);

    /// Closes the listeners; connections already accepted are unaffected.
    fn stop_accepting(&mut self);

    /// A handle other threads use to end a [`Backend::wait`] early.
    fn waker(&self) -> Arc<dyn Wake>;

    /// The backend's counters.
    fn io_stats(&self) -> IoStats;
}
