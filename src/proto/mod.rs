//! The SMTP protocol engine, sans-IO: client bytes and the clock go in, reply bytes and message events come out.
//!
//! Nothing here opens a socket, reads a clock or allocates per command: the caller lends the
//! output buffer and passes `now`. Methods follow quinn-proto's vocabulary: `handle_*` takes
//! input (bytes, a commit result, a timeout, shutdown), `poll_*` yields output (events, the next
//! deadline). Given the same bytes, split anywhere, a session answers the same.
//!
//! The files, in the order a command line meets them: `session` (the state machine),
//! `sniff` (other protocols on the port), `verb` (verbs and the octet check), `address`
//! (paths and MAIL parameters), `envelope` (what a transaction collected), `data` (the DATA
//! receiver's SIMD scan), `reply` (every reply's exact text), `event` (what the session asks
//! of its caller), `settings` (the configuration and the replies rendered from it), `stats`
//! (the session's counters and their totals).

mod address;
mod data;
mod envelope;
mod event;
mod reply;
mod session;
mod settings;
mod sniff;
mod stats;
mod verb;

pub use address::MailParams;
pub use data::{Body, DataReceiver, Fed, Flaw, MAX_PIECES};
pub use envelope::Envelope;
pub use event::{CloseReason, Commit, Event, Progress};
pub use reply::Reply;
pub use session::{Client, Session};
pub use settings::Settings;
pub use sniff::NonSmtp;
pub use stats::{SessionStats, Stats};
