//! One connection of the io_uring backend: where its receive, its send and its closing stand (as enums, so that impossible combinations cannot be written), and the received bytes it holds back for a later wait.

use crate::backend::{Completion, Token};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

/// Where a connection's multishot receive stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recv {
    /// None in flight: the worker wants no input, or the connection holds enough already.
    Idle,
    /// In flight, drawing buffers from the ring.
    Armed,
    /// In flight, its cancellation asked for.
    Cancelling,
    /// Ended by an empty buffer ring (`ENOBUFS`, the bytes stay in the socket); on the
    /// starved list until buffers come back.
    Starved,
    /// End of stream or an error was received: nothing more will come.
    Ended,
}

impl Recv {
    /// The kernel may still write into a provided buffer for this connection.
    pub(super) fn in_flight(self) -> bool {
        matches!(self, Recv::Armed | Recv::Cancelling)
    }
}

/// The send in flight: the kernel may read `buf` until its completion.
pub(super) struct Sending {
    pub buf: Vec<u8>,
    /// Octets already written (a short send continues here).
    pub sent: usize,
}

/// How far a connection is from closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Life {
    Open,
    /// [`crate::backend::Backend::close`] was called: its operations are being cancelled,
    /// and their last completions awaited (the kernel may use their buffers until then).
    Closing,
    /// Nothing is in flight but its `IORING_OP_CLOSE`.
    CloseSubmitted,
}

pub(super) struct Conn {
    pub generation: u32,
    pub fd: RawFd,
    /// The worker wants input.
    pub wanted: bool,
    pub recv: Recv,
    /// On the backend's ready list.
    pub queued: bool,
    pub send: Option<Sending>,
    pub life: Life,
    /// Received but not yet delivered (over the read budget, or receiving was off), in order.
    held: VecDeque<io::Result<Vec<u8>>>,
    held_bytes: usize,
    /// The wait in which `delivered` was counted.
    epoch: u64,
    delivered: usize,
}

/// The connection `token` names, if it is still the one attached under its slot.
pub(super) fn find(conns: &mut [Option<Conn>], token: Token) -> Option<&mut Conn> {
    conns
        .get_mut(token.slot as usize)
        .and_then(Option::as_mut)
        .filter(|c| c.generation == token.generation)
}

impl Conn {
    pub(super) fn new(generation: u32, fd: RawFd) -> Conn {
        Conn {
            generation,
            fd,
            wanted: true,
            recv: Recv::Idle,
            queued: false,
            send: None,
            life: Life::Open,
            held: VecDeque::new(),
            held_bytes: 0,
            epoch: 0,
            delivered: 0,
        }
    }

    pub(super) fn token(&self, slot: usize) -> Token {
        Token {
            slot: slot as u32,
            generation: self.generation,
        }
    }

    /// Whether a receive should be in flight: the worker wants input and the connection does
    /// not already hold a budget's worth.
    pub(super) fn wants_recv(&self, budget: usize) -> bool {
        self.wanted && self.life == Life::Open && self.held_bytes < budget
    }

    pub(super) fn holds(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether `len` more octets fit in the read budget of the wait `epoch` (the first item
    /// of a wait always does); counts them if so.
    fn fits(&mut self, epoch: u64, len: usize, budget: usize) -> bool {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.delivered = 0;
        }
        let fits = self.delivered == 0 || self.delivered + len <= budget;
        if fits {
            self.delivered += len;
        }
        fits
    }

    /// Hands `item` to the worker now, or holds it for a later wait (over budget, receiving
    /// off, or older bytes still held). Returns whether the connection must go on the ready
    /// list.
    pub(super) fn deliver(
        &mut self,
        slot: usize,
        item: io::Result<Vec<u8>>,
        (epoch, budget): (u64, usize),
        out: &mut Vec<Completion>,
    ) -> bool {
        let len = item.as_ref().map_or(0, Vec::len);
        if self.wanted && self.held.is_empty() && self.fits(epoch, len, budget) {
            let token = self.token(slot);
            out.push(Completion::Received { token, result: item });
            return false;
        }
        self.held_bytes += len;
        self.held.push_back(item);
        let queue = self.wanted && !self.queued;
        self.queued |= queue;
        queue
    }

    /// Delivers what was held, within this wait's budget. Returns whether some is left (the
    /// connection stays on the ready list).
    pub(super) fn deliver_held(
        &mut self,
        slot: usize,
        (epoch, budget): (u64, usize),
        out: &mut Vec<Completion>,
    ) -> bool {
        let token = self.token(slot);
        while let Some(item) = self.held.front() {
            let len = item.as_ref().map_or(0, Vec::len);
            if !self.fits(epoch, len, budget) {
                break;
            }
            self.held_bytes -= len;
            let result = self.held.pop_front().expect("checked above");
            out.push(Completion::Received { token, result });
        }
        self.holds()
    }

    /// Takes the held buffers, to go back into the ring (the connection is closing).
    pub(super) fn take_held(&mut self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.held_bytes = 0;
        self.held.drain(..).flatten()
    }
}
