//! ringmx: a thread-per-core SMTP server for inbound MX frontends.
//!
//! `proto` is the sans-IO protocol engine; `config` is the table of limits it and the server
//! enforce; `backend` is the I/O contract and its epoll implementation; `worker` the per-core
//! event loop; `spool` the durable message store; `server` starts it all. See ARCHITECTURE.md
//! for the data path from accept to fsync.

pub mod backend;
pub mod config;
pub mod proto;
pub mod server;
pub mod spool;
pub mod wake;
pub mod worker;
