//! ringmx: a thread-per-core SMTP server for inbound MX frontends.
//!
//! `proto` is the sans-IO protocol engine; `config` is the table of limits it and the server
//! enforce. See ARCHITECTURE.md for the data path from accept to fsync.

pub mod config;
pub mod proto;
