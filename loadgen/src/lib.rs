//! ringmx_loadgen: the client side of SMTP that the load generator, ringmx's tests and its benchmarks share.
//!
//! Two primitives, written from the RFCs apart from ringmx's own server-side parser on
//! purpose: a checker that shares the code it checks shares its bugs.
//! - [`reply`]: cuts complete (multi-line) replies out of a byte stream and reads EHLO keywords;
//! - [`dot_stuff`]: a message as a client sends it after DATA.
//!
//! The `ringmx-loadgen` binary (`src/main.rs`) is built on this library.

pub mod reply;
mod stuff;

pub use stuff::dot_stuff;
