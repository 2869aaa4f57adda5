//! The provided-buffer ring (`IORING_REGISTER_PBUF_RING`): the receive buffers the kernel picks from, each kept alive by this table while the kernel may write into it.

use io_uring::types::BufRingEntry;
use io_uring::IoUring;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// The buffer group of the worker's provided-buffer ring (one group per io_uring).
pub(super) const BGID: u16 = 0;

/// The provided-buffer ring (`IORING_REGISTER_PBUF_RING`): the kernel takes a buffer from it
/// for each receive completion and names it by id in the CQE flags.
pub(super) struct BufRing {
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
    pub(super) fn new(ring: &IoUring, count: usize, size: usize) -> io::Result<BufRing> {
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
    pub(super) fn take(&mut self, bid: u16, len: usize) -> Vec<u8> {
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
    pub(super) fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() < self.size {
            return;
        }
        if let Some(bid) = self.out.pop() {
            self.provide(bid, buf);
        }
    }

    /// Gives up the buffers the kernel may still write into (it did not finish in time): a
    /// leak, rather than memory freed under the kernel.
    pub(super) fn leak(&mut self) {
        std::mem::forget(std::mem::take(&mut self.held));
    }

    /// Buffers in the ring, free for the kernel to take.
    pub(super) fn available(&self) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

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
