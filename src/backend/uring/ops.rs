//! The io_uring operations: their kinds, the one codec between an operation and its user data, and the one path by which entries reach the kernel, which alone counts the operations in flight.
//!
//! What does not fit in a full submission queue waits, in order, in a backlog that is
//! submitted before anything newer (a cancellation must not overtake what it cancels). Every
//! completion without `IORING_CQE_F_MORE` is its operation's last, so the count of operations
//! in flight goes up in [`Ring::submit`] and down in [`Ring::reap`], nowhere else.

use crate::backend::{Token, MAX_SLOTS};
use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{cqueue, squeue, EnterFlags, IoUring};
use std::collections::VecDeque;
use std::io;
use std::time::Duration;

/// An operation in flight, as its user data names it: kind (8 bits), slot (24 bits),
/// generation (32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// The multishot accept of the listener with this index.
    Accept(usize),
    /// A connection's multishot receive.
    Recv(Token),
    /// A connection's send.
    Send(Token),
    /// A connection's `IORING_OP_CLOSE`.
    Close(Token),
    /// A cancellation: its completion only ends it.
    Cancel,
    /// The read pending on the waker's eventfd.
    Wake,
}

const ACCEPT: u8 = 1;
const RECV: u8 = 2;
const SEND: u8 = 3;
const CANCEL: u8 = 4;
const CLOSE: u8 = 5;
const WAKE: u8 = 6;

impl Op {
    pub(super) fn encode(self) -> u64 {
        let (kind, slot, generation) = match self {
            Op::Accept(i) => (ACCEPT, i as u32, 0),
            Op::Recv(t) => (RECV, t.slot, t.generation),
            Op::Send(t) => (SEND, t.slot, t.generation),
            Op::Close(t) => (CLOSE, t.slot, t.generation),
            Op::Cancel => (CANCEL, 0, 0),
            Op::Wake => (WAKE, 0, 0),
        };
        debug_assert!(slot < MAX_SLOTS, "attach refuses larger slots");
        u64::from(kind) << 56 | u64::from(slot) << 32 | u64::from(generation)
    }

    pub(super) fn decode(data: u64) -> Option<Op> {
        let token = Token {
            slot: (data >> 32) as u32 & (MAX_SLOTS - 1),
            generation: data as u32,
        };
        Some(match (data >> 56) as u8 {
            ACCEPT => Op::Accept(token.slot as usize),
            RECV => Op::Recv(token),
            SEND => Op::Send(token),
            CANCEL => Op::Cancel,
            CLOSE => Op::Close(token),
            WAKE => Op::Wake,
            _ => return None,
        })
    }
}

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub(super) struct Done {
    pub user_data: u64,
    pub res: i32,
    pub flags: u32,
}

impl Done {
    /// More completions of the same (multishot) operation will follow.
    pub(super) fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel filled, by id.
    pub(super) fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// The ring with its submission backlog and count of operations in flight.
pub(super) struct Ring {
    ring: IoUring,
    /// Submissions that did not fit in the submission queue, oldest first.
    backlog: VecDeque<squeue::Entry>,
    /// Operations whose last completion has not arrived.
    inflight: usize,
    /// The largest the backlog grew.
    pub backlog_peak: usize,
    /// Sends queued since the last enter.
    sends_queued: u32,
    sqpoll: bool,
    /// The kernel flags deferred completions in the SQ ring (`IORING_SETUP_TASKRUN_FLAG`).
    taskrun_flag: bool,
    min_wait_us: u32,
}

impl Ring {
    pub(super) fn new(ring: IoUring, taskrun_flag: bool, min_wait_us: u32) -> Ring {
        Ring {
            sqpoll: ring.params().is_setup_sqpoll(),
            ring,
            backlog: VecDeque::new(),
            inflight: 0,
            backlog_peak: 0,
            sends_queued: 0,
            taskrun_flag,
            min_wait_us,
        }
    }

    pub(super) fn io_uring(&self) -> &IoUring {
        &self.ring
    }

    /// Operations whose last completion has not arrived.
    pub(super) fn inflight(&self) -> usize {
        self.inflight
    }

    /// Nothing is waiting, neither in the backlog nor in the completion queue.
    pub(super) fn idle(&mut self) -> bool {
        self.backlog.is_empty() && self.ring.completion().is_empty()
    }

    /// Queues `entry` as `op`, behind the backlog if there is one, so submissions keep their
    /// order.
    ///
    /// # Safety
    ///
    /// Whatever the entry points to (a buffer, a descriptor) must stay valid until the
    /// operation's last completion has been reaped.
    pub(super) unsafe fn submit(&mut self, entry: squeue::Entry, op: Op) {
        let entry = entry.user_data(op.encode());
        self.inflight += 1;
        if matches!(op, Op::Send(_)) {
            self.sends_queued += 1;
        }
        if self.backlog.is_empty() {
            // SAFETY: the caller keeps what the entry points to alive until its completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(entry);
        self.backlog_peak = self.backlog_peak.max(self.backlog.len());
    }

    /// Moves the backlog into the submission queue, submitting whenever it is full; stops
    /// when the kernel takes nothing more (`EBUSY`: completions must be reaped first).
    pub(super) fn flush_backlog(&mut self) {
        loop {
            {
                let mut sq = self.ring.submission();
                while let Some(entry) = self.backlog.front() {
                    // SAFETY: as promised to `submit`, which queued the entry.
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

    /// Copies every completion out of the completion queue into `out`.
    pub(super) fn reap(&mut self, out: &mut Vec<Done>) {
        for cqe in self.ring.completion() {
            if !cqueue::more(cqe.flags()) {
                self.inflight -= 1;
            }
            out.push(Done {
                user_data: cqe.user_data(),
                res: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }

    /// Submits what is queued and, if `wait`, sleeps until a completion or `timeout`.
    /// `EBUSY`/`EAGAIN` (completions must be reaped first, or no memory for now) and `EINTR`
    /// mean "submit again on the next wait"; `ETIME` is the timeout.
    pub(super) fn enter(&mut self, wait: bool, timeout: Option<Duration>) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_names_kind_slot_and_generation() {
        let token = |slot, generation| Token { slot, generation };
        for op in [
            Op::Recv(token(0, 0)),
            Op::Send(token(MAX_SLOTS - 1, u32::MAX)),
            Op::Close(token(12345, 7)),
            Op::Accept(1),
            Op::Cancel,
            Op::Wake,
        ] {
            assert_eq!(Op::decode(op.encode()), Some(op));
        }
        assert_eq!(Op::decode(0), None);
    }
}
