//! The one thing threads other than a worker may do to it: wake it from its wait.
//!
//! Kept apart from any backend (as mio keeps `Waker` apart from its selectors), so that the
//! spool committer and the signal thread can wake a worker without knowing how it waits.

/// Ends a worker's current (or next) wait early, from any thread. A wake while the worker
/// is awake is not lost: its next wait returns at once.
pub trait Wake: Send + Sync {
    fn wake(&self);
}
