//! ringmx: a thread-per-core SMTP server for inbound MX frontends.
//!
//! The modules follow a received buffer's path: `backend` (the I/O contract, its io_uring
//! and epoll implementations, and the choice between them) lends the bytes to `worker` (the
//! per-core event loop: `conn` feeds them to the session, `store` takes its messages to the
//! spool), `proto` (the sans-IO session: replies and events out) answers them, and `spool`
//! (a committer thread per worker, grouped fsync) makes messages durable before their `250`.
//! `config` is the table of every limit; `tls` turns the certificate files into the rustls
//! configuration; `wake` the one cross-thread wake-up; `metrics` the Prometheus endpoint; `server` starts it
//! all. See ARCHITECTURE.md.

pub mod backend;
pub mod check;
pub mod config;
pub mod delivery;
mod descriptors;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod privileges;
pub mod proto;
pub mod proxy;
pub mod reload;
pub mod server;
mod signals;
pub mod spool;
pub mod tls;
pub mod wake;
pub mod worker;
