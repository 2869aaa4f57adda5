//! The configuration table: every limit ringmx enforces, with its default, its allowed range and the reason for it.
//!
//! Postfix keeps its limits as `{name, default, min, max}` table entries; this module does the
//! same with one macro invocation, so a limit cannot exist without a range and a reason. The
//! TOML keys are the field names. A value outside its range is refused at start with a message
//! naming the key, the value and the range (see [`ServerConfig::validate`]). The limits come in
//! two groups, [`ProtoLimits`] (what the session enforces) and [`ServerLimits`] (connections,
//! buffers, queues, backends); [`limits_table`] is the one table of both for the operator. A
//! value that reaches the wire is checked for its kind too (the hostname, RFC 5321 §4.1.2).

mod effective;
mod validate;

pub use crate::tls::CertEntry;
pub use effective::{all_keys, changed_keys, to_toml, unset};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use validate::check_ranges;
pub use validate::{is_domain_or_literal, ConfigError, RangeError};

/// How the DATA receiver treats a line feed that is not preceded by a carriage return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLf {
    /// Store a bare LF as CRLF and treat it as a line end (Postfix ≥ 3.9 `normalize`). The end
    /// of data is still only `<CR><LF>.<CR><LF>`, so no smuggling is possible.
    Normalize,
    /// Refuse a message that contains a bare LF, after its end (`550 5.5.2`).
    Reject,
}

macro_rules! limits {
    ($( $(#[doc = $gdoc:literal])* $group:ident {
        $( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr, $min:expr, $max:expr; )*
    } )*) => {
        $(
            $(#[doc = $gdoc])*
            #[derive(Debug, Clone, Deserialize)]
            #[serde(default, deny_unknown_fields)]
            pub struct $group {
                $( $(#[doc = $doc])* pub $name: $ty, )*
            }

            impl Default for $group {
                fn default() -> Self {
                    $group { $( $name: $default, )* }
                }
            }

            impl $group {
                /// This group's rows of the table: name, default, min, max and reason.
                pub const TABLE: &'static [LimitSpec] = &[
                    $( LimitSpec {
                        name: stringify!($name),
                        default: $default as u64,
                        min: $min as u64,
                        max: $max as u64,
                        doc: concat!($($doc, "\n"),*),
                    }, )*
                ];

                fn values(&self) -> Vec<(&'static str, u64)> {
                    vec![ $( (stringify!($name), self.$name as u64), )* ]
                }

                /// Every key with its value as TOML writes it (a `bool` as `true`/`false`).
                pub fn toml_values(&self) -> Vec<(&'static str, toml::Value)> {
                    vec![ $( (stringify!($name), toml::Value::try_from(self.$name)
                        .expect("a limit is a number or a bool")), )* ]
                }

                /// The keys whose values differ between `self` and `other`.
                pub fn changed(&self, other: &Self) -> Vec<&'static str> {
                    let mut keys = Vec::new();
                    $( if self.$name != other.$name { keys.push(stringify!($name)); } )*
                    keys
                }

                /// Checks every value against its range; the first one outside is reported.
                pub fn validate(&self) -> Result<(), RangeError> {
                    check_ranges(self.values(), Self::TABLE)
                }
            }
        )*

        /// Every limit of every group, in README order: the one table an operator sees
        /// (`tests/readme.rs` keeps README.md's copy equal to it).
        pub fn limits_table() -> impl Iterator<Item = &'static LimitSpec> {
            std::iter::empty() $( .chain($group::TABLE.iter()) )*
        }
    };
}

/// One row of the limits table.
#[derive(Debug, Clone, Copy)]
pub struct LimitSpec {
    pub name: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
    pub doc: &'static str,
}

limits! {
    /// The limits the protocol engine enforces, the ones a client can see.
    ProtoLimits {
    /// Longest command line in octets, CRLF included. RFC 5321 §4.5.3.1.4: 512.
    max_command_line: usize = 512, 512, 65536;
    /// Longest text line of a message in octets, CRLF included, not counting a stuffing dot.
    /// RFC 5321 §4.5.3.1.6: 1000. A longer line gets the message refused after its end.
    max_text_line: usize = 1000, 1000, 1 << 20;
    /// Largest message in octets, advertised as SIZE (RFC 1870). 25 MiB is common practice.
    max_message_size: u64 = 25 << 20, 1024, 1 << 30;
    /// Recipients per transaction. RFC 5321 §4.5.3.1.8: at least 100 must be accepted.
    max_recipients: usize = 100, 100, 100_000;
    /// Error replies before the session is ended with 421 (Postfix `smtpd_hard_error_limit`).
    max_errors: u32 = 20, 1, 1000;
    /// Seconds a session may wait for the next command. RFC 5321 §4.5.3.2.7: 5 minutes.
    command_timeout_secs: u64 = 300, 1, 3600;
    /// Seconds between two data blocks during DATA or BDAT. RFC 5321 §4.5.3.2.5/6: 3 minutes.
    data_timeout_secs: u64 = 180, 1, 3600;
    /// Seconds the storage may take to commit a message before the session gives up with 451.
    /// RFC 5321 §4.5.3.2.8: a client waits 10 minutes for the reply to the end of data.
    commit_timeout_secs: u64 = 600, 1, 3600;
    /// Reply octets a session may hold before it stops reading input until the client reads
    /// its replies (RFC 2920 §3.1 lets the client pipeline; this keeps memory bounded).
    max_reply_backlog: usize = 16384, 1024, 1 << 20;
    /// Recipients over `max_recipients` per transaction answered `452 4.5.3` before each
    /// further one counts as an error (Postfix's `smtpd_recipient_overshoot_limit`): RFC 5321
    /// §4.5.3.1.10 has the client send them in another transaction.
    recipient_overshoot_limit: u32 = 1000, 0, 1_000_000;
    /// Refused recipients (relay denied, unknown user) a session may send before each further
    /// one is answered only after `invalid_rcpt_delay_secs` (Stalwart's default): a directory
    /// harvest slows to a crawl, a typo costs nothing.
    invalid_rcpt_limit: u32 = 5, 0, 1000;
    /// Seconds each refused recipient past `invalid_rcpt_limit` waits for its reply (on the
    /// worker's timer; the replies pipelined behind it wait too, in order).
    invalid_rcpt_delay_secs: u64 = 5, 0, 60;
    /// Octets per second a message must average once `min_data_rate_grace_secs` have passed
    /// since its DATA or first BDAT, or the session is closed with `421 4.4.2`; 0 = off. A
    /// client dribbling a byte per timeout could otherwise hold a slot for days.
    min_data_rate: u64 = 1024, 0, 1 << 30;
    /// Seconds a message may take before `min_data_rate` applies (slow links, big messages).
    min_data_rate_grace_secs: u64 = 30, 0, 3600;
    /// Seconds a session may last whatever it does (`421 4.4.2`), so no client holds a slot
    /// for ever; an hour covers hundreds of messages on a slow link.
    max_session_secs: u64 = 3600, 1, 86_400;
    /// Octets of a refused BDAT chunk the session reads and drops (RFC 3030 §4.2 has it read)
    /// before the reply; a larger chunk (`BDAT 99999999999`) is answered at once and the
    /// session closed, rather than reading gigabytes for nothing.
    bdat_discard_limit: u64 = 32 << 20, 0, 1 << 30;
    /// Milliseconds between the greeting's first line (`220-`) and the rest; a client that
    /// talks meanwhile is refused (`554 5.5.1`, postscreen's pregreet test). 0 = off, the
    /// default: it costs every client the delay. The worker's timer wheel has 100 ms slots,
    /// so the rest comes between `greet_delay_ms` and 100 ms more.
    greet_delay_ms: u64 = 0, 0, 30_000;
    }

    /// The limits of the server around the protocol: connections, buffers, the spool queue,
    /// the backends.
    ServerLimits {
    /// Connections open at once across all workers; one more is answered `421 4.3.2` and
    /// closed, so a flood costs a reply instead of running the process out of descriptors.
    max_connections: usize = 10_000, 1, 1_000_000;
    /// Seconds a session inside a transaction may take to finish it after SIGTERM/SIGINT
    /// before it is cut off (idle sessions get `421 4.3.2` at once).
    shutdown_grace_secs: u64 = 30, 0, 3600;
    /// Octets read from one connection per event-loop turn, so one flooding client cannot
    /// starve the others on its worker; the rest is read on the next turn.
    read_budget: usize = 65536, 1024, 1 << 24;
    /// Size of one receive buffer; also the unconsumed input a session may hold before the
    /// server stops reading from it. At least `max_command_line`, so one line always fits.
    input_buffer: usize = 16384, 1024, 1 << 20;
    /// Body octets a worker may have queued for its spool writer before sessions in DATA stop
    /// being read; keeps memory bounded when the disk is slower than the network.
    spool_queue_bytes: usize = 32 << 20, 1 << 16, 1 << 30;
    /// Octets each segment of the `log` spool is preallocated to: commits never create an
    /// inode or change a file's size until it is used up (a message in progress then finishes
    /// in it, past this size). 64 MiB is a few seconds of a busy worker, and the unit of space
    /// reclaimed; at least 64 KiB, so a segment holds more than its header.
    spool_segment_size: u64 = 64 << 20, 1 << 16, 1 << 30;
    /// Submission queue entries of each worker's io_uring (`--backend uring`); its completion
    /// queue gets four times as many. Submissions beyond it wait in a backlog, so this bounds
    /// a batch, not the connections; 1024 covers a turn of a busy worker in one submission.
    uring_entries: u32 = 1024, 8, 32768;
    /// Let a kernel thread poll each worker's submission queue (IORING_SETUP_SQPOLL), which
    /// saves the submitting system call but burns a core per worker while busy: off, because
    /// an MX frontend shares its cores with its workers.
    uring_sqpoll: bool = false, 0, 1;
    /// Receive buffers in each worker's provided-buffer ring, shared by all its connections
    /// (an idle connection holds none). 512 lets that many connections have a receive
    /// completion waiting at once; when they run out, receives wait for buffers to come back.
    uring_buffers: usize = 512, 1, 32768;
    /// Octets per provided receive buffer, the most one receive completion carries; 16 KiB
    /// like `input_buffer`, so a pipelined batch of commands usually arrives in one.
    uring_buffer_size: usize = 16384, 1024, 1 << 20;
    /// Microseconds a wait that submitted sends holds out for one completion more than those
    /// sends (IORING_FEAT_MIN_TIMEOUT, kernel 6.12); 0, the default, turns it off. It saves an
    /// enter per turn, but measured here it bought at most 2% with a core to spare and cost
    /// 15% of the messages/s on cores shared with other busy threads (tuning/README.md).
    uring_min_wait_us: u32 = 0, 0, 10_000;
    /// Seconds a TLS handshake may take, from STARTTLS's `220` or the accept on an implicit TLS
    /// listener, so a client that stops mid-handshake holds its slot this long, not for the
    /// command timeout. 30 s covers a slow client across the world several times over.
    tls_handshake_timeout_secs: u64 = 30, 1, 600;
    /// TLS sessions kept per process for resumption by session id (TLS 1.2 clients without
    /// tickets; tickets need no server state); the oldest go first. Each costs a few hundred
    /// octets; 0 turns the cache off.
    tls_session_cache: usize = 10_000, 0, 1_000_000;
    /// Seconds a balancer has to send the PROXY header on a `proxy` listener (Postfix's
    /// `smtpd_upstream_proxy_timeout`).
    proxy_header_timeout_secs: u64 = 5, 1, 60;
    /// Largest PROXY v2 header accepted, TLVs included (the protocol allows 16 + 65535;
    /// balancers send a few hundred octets at most). A v1 header is at most 107 octets.
    proxy_header_max: usize = 4096, 232, 65551;
    /// Connections at once from one client address (IPv6: one prefix of
    /// `client_ipv6_prefix`); one more gets `421 4.7.0` (Postfix's
    /// `smtpd_client_connection_count_limit`). 0 = off.
    max_connections_per_client: u32 = 50, 0, 100_000;
    /// New connections per minute from one client; more get `421 4.7.0` (Postfix's
    /// `smtpd_client_connection_rate_limit`). 0 = off, the default.
    connection_rate_per_client: u32 = 0, 0, 1_000_000;
    /// The IPv6 prefix that counts as one client: a host gets a /64, and holds all of it.
    client_ipv6_prefix: u8 = 64, 32, 128;
    /// Client addresses tracked at once for the per-client limits; the oldest idle one is
    /// dropped for a new one, so a flood of addresses cannot grow the table.
    client_table_size: usize = 100_000, 64, 10_000_000;
    /// Apply the per-client limits to `relay_networks` too (off: they are exempt).
    client_limits_for_relay_networks: bool = false, 0, 1;
    /// Log lines queued for the log writer thread; when stderr (the journal) falls this far
    /// behind, new lines are dropped and counted (`ringmx_log_lines_dropped_total`) rather
    /// than a worker waiting for the write: about 16 MiB of lines at most.
    log_buffer_lines: usize = 65_536, 1024, 1 << 22;
    }

    /// The limits of delivery to the next hop (`relay_to`, `[routes]`).
    DeliveryLimits {
    /// Connections at once to one destination (Postfix's
    /// `default_destination_concurrency_limit`).
    destination_concurrency: usize = 20, 1, 1000;
    /// Recipients per transaction to one destination (Postfix's
    /// `default_destination_recipient_limit`); RFC 5321 §4.5.3.1.8 has servers take 100.
    destination_recipients: usize = 50, 1, 1000;
    /// Seconds before the first retry of a deferred recipient; each retry waits twice the last
    /// (Postfix's `minimal_backoff_time`).
    min_backoff_secs: u64 = 300, 1, 86_400;
    /// The longest wait between two attempts (Postfix's `maximal_backoff_time`).
    max_backoff_secs: u64 = 4000, 1, 86_400;
    /// Seconds a destination stays dead after a connection to it failed: its recipients are
    /// deferred at once with that connection's error, without connecting, then one probe
    /// decides. 0 takes `min_backoff_secs`, as Postfix's qmgr does (a dead destination is
    /// suspended for `minimal_backoff_time`); at most `min_backoff_secs`, so a probe comes no
    /// later than the first retry of a deferred recipient.
    destination_dead_secs: u64 = 0, 0, 86_400;
    /// Seconds a message may stay queued before its deferred recipients fail (Postfix's
    /// `maximal_queue_lifetime`, 5 days; RFC 5321 §4.5.4.1: at least 4-5 days).
    max_queue_lifetime_secs: u64 = 432_000, 1, 30 * 86_400;
    /// Seconds to wait for a TCP connection to the next hop (Postfix's
    /// `smtp_connect_timeout`).
    relay_connect_timeout_secs: u64 = 30, 1, 600;
    /// Seconds to wait for each reply of the next hop. RFC 5321 §4.5.3.2: 5 minutes for MAIL
    /// and RCPT; the reply to the end of data gets twice this (§4.5.3.2.6: 10 minutes).
    relay_reply_timeout_secs: u64 = 300, 1, 3600;
    /// Seconds an idle connection to a destination is kept for the next message (Postfix's
    /// `smtp_connection_cache_time_limit`).
    relay_idle_secs: u64 = 2, 0, 300;
    /// Longest reply line from the next hop, CRLF included. RFC 5321 §4.5.3.1.5 says 512;
    /// real servers send longer, so four times that before the connection is dropped.
    relay_reply_line_max: usize = 2048, 512, 65536;
    /// Lines of one multi-line reply (an EHLO reply has one per extension) before the
    /// connection is dropped: an endless reply cannot grow memory.
    relay_reply_lines_max: usize = 128, 8, 4096;
    /// Octets of the original message's header attached to a delivery status notification
    /// (RFC 3464 §2 `text/rfc822-headers`; Postfix's `bounce_size_limit`, 50,000).
    bounce_size_limit: usize = 50_000, 1024, 1 << 20;
    /// Messages of the queue runner's in-memory schedule; more stay on disk, untouched until
    /// the queue shrinks, so a huge queue cannot grow memory (Postfix's `qmgr_message_active_limit`).
    delivery_active_limit: usize = 20_000, 16, 1_000_000;
    }
}

/// Everything the protocol engine needs to know about the operator's choices.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtoConfig {
    /// The name in the greeting, the HELO/EHLO reply and the `Received:` header.
    pub hostname: String,
    /// Policy for a bare LF inside message data.
    pub bare_lf: BareLf,
    /// Refuse MAIL, RCPT, DATA and BDAT before STARTTLS with `530 5.7.0`. Off by default:
    /// RFC 3207 §4 says a publicly referenced MX must not require TLS.
    pub tls_required: bool,
    /// Whether STARTTLS is offered: set by the server when a certificate is configured, not a
    /// key of its own.
    #[serde(skip)]
    pub starttls: bool,
    /// The protocol's numeric limits.
    #[serde(flatten)]
    pub limits: ProtoLimits,
}

impl Default for ProtoConfig {
    fn default() -> Self {
        ProtoConfig {
            hostname: "localhost".to_string(),
            bare_lf: BareLf::Normalize,
            tls_required: false,
            starttls: false,
            limits: ProtoLimits::default(),
        }
    }
}

/// Which I/O backend drives the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// io_uring when the kernel has everything it uses, else epoll (the log says why).
    Auto,
    /// Readiness-based, through mio.
    Epoll,
    /// Completion-based io_uring: multishot accept and receive, provided buffers.
    Uring,
}

/// How the spool makes a batch of messages durable before acknowledging them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolSync {
    /// Start writeback of every file of the batch, then `fdatasync` each: only the spool's own
    /// files are flushed, whatever else shares the filesystem. The default.
    File,
    /// One `syncfs` for the whole batch: about twice the throughput, but it also flushes every
    /// other dirty file on that filesystem, so a commit waits for unrelated writers. For a
    /// spool on its own filesystem. Write-back errors are still reported (Linux ≥ 5.8) and
    /// fail the whole batch.
    Filesystem,
}

/// How the spool stores messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SpoolFormat {
    /// Per worker, preallocated append-only segments of framed records, one `fdatasync` per
    /// segment per batch: the default, at the speed of the disk's appends.
    Log,
    /// Two files per message, `DIR/<id>.eml` and `DIR/<id>.json`, for tools that read the
    /// spool directly; every message costs two inodes and a directory fsync.
    Files,
}

/// Everything `ringmx serve` needs: where to listen, how many workers, where messages go, and
/// the protocol settings. The TOML keys of `--config` are these field names plus every key of
/// [`ProtoConfig`] at the top level (see [`ServerConfig::from_toml`]).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses to listen on; every worker gets its own `SO_REUSEPORT` socket for each.
    pub listen: Vec<Listen>,
    /// Implicit TLS listeners (RFC 8314, port 465): the handshake comes before the greeting.
    pub listen_tls: Vec<Listen>,
    /// Balancers allowed to send a PROXY header on a `proxy` listener; a connection from
    /// anywhere else there is closed.
    pub proxy_trusted: Vec<ipnet::IpNet>,
    /// The default certificate chain (PEM, leaf first) and its key (PEM: PKCS#8, SEC1 or
    /// PKCS#1): with one, every plain listener offers STARTTLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// More certificates, chosen by the name the client asks for (SNI, RFC 6066); without
    /// `tls_cert`, the first is the default.
    pub tls_certificates: Vec<CertEntry>,
    /// Clients that may send to any domain; the others only to `domains` (with none
    /// configured, they may not send at all: a public listener is never an open relay).
    pub relay_networks: Vec<ipnet::IpNet>,
    /// The domains this MX accepts mail for.
    pub domains: Vec<String>,
    /// The users of those domains, one address (or `@domain`) per line; without it every
    /// user of an accepted domain is accepted. Reloaded on SIGHUP.
    pub recipients: Option<PathBuf>,
    /// Worker threads, one per core; 0 means one per CPU this process may run on.
    pub workers: usize,
    /// The I/O backend.
    pub backend: BackendKind,
    /// The spool directory, where each accepted message is committed before its `250`.
    pub spool: PathBuf,
    /// Count and drop message bodies and answer `250` at once (benchmarks, like smtp-sink).
    pub sink: bool,
    /// How the spool stores messages.
    pub spool_format: SpoolFormat,
    /// How a batch of spool files is made durable (the `files` format).
    pub spool_sync: SpoolSync,
    /// The server's limits (connections, buffers, queues, backends).
    pub limits: ServerLimits,
    /// Where committed messages are delivered (none: the spool keeps them), and how.
    pub delivery: DeliveryConfig,
    /// The protocol settings and its limits.
    pub proto: ProtoConfig,
    /// The user to run as once the listeners are bound (its primary group too); without it
    /// the server stays who it was started as.
    pub user: Option<String>,
    /// Where `/metrics` is served (Prometheus text format); off without it.
    pub metrics_listen: Option<SocketAddr>,
    /// What is logged, as `RUST_LOG` directives (`info`, `warn,ringmx::delivery=debug`);
    /// `RUST_LOG`, when set, wins. Reloaded on SIGHUP.
    pub log_level: String,
    /// How log lines are written.
    pub log_format: LogFormat,
}

/// The server's own keys; the rest of the file is [`ProtoConfig`]'s.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerKeys {
    listen: Option<Vec<Listen>>,
    listen_tls: Option<Vec<Listen>>,
    proxy_trusted: Option<Vec<ipnet::IpNet>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_certificates: Option<Vec<CertEntry>>,
    relay_networks: Option<Vec<ipnet::IpNet>>,
    domains: Option<Vec<String>>,
    recipients: Option<PathBuf>,
    workers: Option<usize>,
    backend: Option<BackendKind>,
    spool: Option<PathBuf>,
    sink: Option<bool>,
    spool_sync: Option<SpoolSync>,
    spool_format: Option<SpoolFormat>,
    relay_to: Option<String>,
    routes: Option<std::collections::BTreeMap<String, String>>,
    relay_tls: Option<RelayTls>,
    relay_tls_ca_file: Option<PathBuf>,
    user: Option<String>,
    metrics_listen: Option<SocketAddr>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` fields after the message, one line per event: for people and grep.
    Text,
    /// One JSON object per line (timestamp, level, target, fields): for log pipelines.
    Json,
}

/// Whether delivery to the next hop uses STARTTLS (Postfix's `smtp_tls_security_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// Never, even when offered.
    None,
    /// When the next hop offers it, without checking its certificate (opportunistic, RFC 7435):
    /// the default, as Postfix's `may`.
    May,
    /// Always, with the certificate verified against `relay_tls_ca_file` (or the system's
    /// roots) for the destination's host name; a next hop without STARTTLS is deferred.
    Require,
}

/// Delivery's part of the configuration: the routes, TLS, and the limits.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// The default route, `relay_to`: `smtp:HOST:PORT`, `lmtp:HOST:PORT` or `lmtp:unix:PATH`.
    pub relay_to: Option<String>,
    /// Per-domain routes (`[routes] "example.com" = "lmtp:10.0.0.5:24"`); a key starting with
    /// `.` matches every subdomain.
    pub routes: Vec<(String, String)>,
    pub relay_tls: RelayTls,
    /// PEM roots for `relay_tls = "require"`; without, `/etc/ssl/certs/ca-certificates.crt`.
    pub relay_tls_ca_file: Option<PathBuf>,
    pub limits: DeliveryLimits,
}

impl DeliveryLimits {
    /// How long a destination stays dead after a failed connection: `destination_dead_secs`,
    /// or with 0 `min_backoff_secs` (Postfix suspends a dead destination for
    /// `minimal_backoff_time`).
    pub fn destination_dead(&self) -> std::time::Duration {
        let secs = match self.destination_dead_secs {
            0 => self.min_backoff_secs,
            n => n,
        };
        std::time::Duration::from_secs(secs)
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            relay_to: None,
            routes: Vec::new(),
            relay_tls: RelayTls::May,
            relay_tls_ca_file: None,
            limits: DeliveryLimits::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![Listen::plain(SocketAddr::from(([127, 0, 0, 1], 2525)))],
            listen_tls: Vec::new(),
            proxy_trusted: loopback(),
            tls_cert: None,
            tls_key: None,
            tls_certificates: Vec::new(),
            relay_networks: loopback(),
            domains: Vec::new(),
            recipients: None,
            workers: 0,
            backend: BackendKind::Auto,
            spool: PathBuf::from("./spool"),
            sink: false,
            spool_sync: SpoolSync::File,
            spool_format: SpoolFormat::Log,
            limits: ServerLimits::default(),
            delivery: DeliveryConfig::default(),
            proto: ProtoConfig::default(),
            user: None,
            metrics_listen: None,
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
        }
    }
}

/// 127.0.0.0/8 and ::1: the default of `relay_networks` and `proxy_trusted`.
fn loopback() -> Vec<ipnet::IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .map(|net| net.parse().expect("a valid network"))
        .collect()
}

impl Serialize for Listen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        if !self.proxy {
            return self.addr.serialize(s);
        }
        let mut t = s.serialize_struct("Listen", 2)?;
        t.serialize_field("address", &self.addr)?;
        t.serialize_field("proxy", &true)?;
        t.end()
    }
}

/// One listen address, and whether each connection on it starts with a PROXY header from a
/// balancer (HAProxy's PROXY protocol, v1 or v2). In TOML either `"ADDR"` or
/// `{ address = "ADDR", proxy = true }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub proxy: bool,
}

impl Listen {
    /// A listener without PROXY headers.
    pub fn plain(addr: SocketAddr) -> Listen {
        Listen { addr, proxy: false }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Listen, D::Error> {
        // A misspelt key is an error, as everywhere else in the file.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            address: SocketAddr,
            #[serde(default)]
            proxy: bool,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Address(SocketAddr),
            Table(Table),
        }
        Ok(match Form::deserialize(d)? {
            Form::Address(addr) => Listen::plain(addr),
            Form::Table(t) => Listen {
                addr: t.address,
                proxy: t.proxy,
            },
        })
    }
}

/// The largest worker count accepted; far above any core count, it only catches typos.
pub const MAX_WORKERS: usize = 1024;

impl ServerConfig {
    /// Reads a `--config` file. serde's `deny_unknown_fields` does not see through nested
    /// `flatten`, so the server keys are split off first and each part is strict on its own:
    /// a misspelt key is an error, never silently ignored.
    pub fn from_toml(text: &str) -> Result<ServerConfig, String> {
        const SERVER_KEYS: [&str; 23] = [
            "user",
            "metrics_listen",
            "log_level",
            "log_format",
            "relay_to",
            "routes",
            "relay_tls",
            "relay_tls_ca_file",
            "listen",
            "listen_tls",
            "proxy_trusted",
            "tls_cert",
            "tls_key",
            "tls_certificates",
            "relay_networks",
            "domains",
            "recipients",
            "workers",
            "backend",
            "spool",
            "sink",
            "spool_sync",
            "spool_format",
        ];
        let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut server = toml::Table::new();
        for key in SERVER_KEYS {
            if let Some(value) = table.remove(key) {
                server.insert(key.to_string(), value);
            }
        }
        // The names the delivery issue and Postfix's users know, beside the table's own.
        for (alias, name) in [
            ("min_backoff", "min_backoff_secs"),
            ("max_backoff", "max_backoff_secs"),
            ("max_queue_lifetime", "max_queue_lifetime_secs"),
        ] {
            if let Some(value) = table.remove(alias) {
                table.insert(name.to_string(), value);
            }
        }
        let take = |table: &mut toml::Table, specs: &[LimitSpec]| {
            let mut part = toml::Table::new();
            for spec in specs {
                if let Some(value) = table.remove(spec.name) {
                    part.insert(spec.name.to_string(), value);
                }
            }
            part
        };
        let limits = take(&mut table, ServerLimits::TABLE);
        let delivery_limits = take(&mut table, DeliveryLimits::TABLE);
        let keys: ServerKeys = server.try_into().map_err(|e: toml::de::Error| e.to_string())?;
        let limits: ServerLimits = limits.try_into().map_err(|e: toml::de::Error| e.to_string())?;
        let delivery_limits: DeliveryLimits = delivery_limits
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        let proto: ProtoConfig = table.try_into().map_err(|e: toml::de::Error| e.to_string())?;
        let default = ServerConfig::default();
        Ok(ServerConfig {
            listen: keys.listen.unwrap_or(default.listen),
            listen_tls: keys.listen_tls.unwrap_or_default(),
            proxy_trusted: keys.proxy_trusted.unwrap_or(default.proxy_trusted),
            tls_cert: keys.tls_cert,
            tls_key: keys.tls_key,
            tls_certificates: keys.tls_certificates.unwrap_or_default(),
            relay_networks: keys.relay_networks.unwrap_or(default.relay_networks),
            domains: keys.domains.unwrap_or_default(),
            recipients: keys.recipients,
            workers: keys.workers.unwrap_or(default.workers),
            backend: keys.backend.unwrap_or(default.backend),
            spool: keys.spool.unwrap_or(default.spool),
            sink: keys.sink.unwrap_or(default.sink),
            spool_sync: keys.spool_sync.unwrap_or(default.spool_sync),
            spool_format: keys.spool_format.unwrap_or(default.spool_format),
            limits,
            delivery: DeliveryConfig {
                relay_to: keys.relay_to,
                routes: keys.routes.unwrap_or_default().into_iter().collect(),
                relay_tls: keys.relay_tls.unwrap_or(RelayTls::May),
                relay_tls_ca_file: keys.relay_tls_ca_file,
                limits: delivery_limits,
            },
            proto,
            user: keys.user,
            metrics_listen: keys.metrics_listen,
            log_level: keys.log_level.unwrap_or(default.log_level),
            log_format: keys.log_format.unwrap_or(default.log_format),
        })
    }

    /// Every certificate configured, the default first: `tls_cert` and `tls_key`, then
    /// `tls_certificates`.
    pub fn cert_entries(&self) -> Vec<CertEntry> {
        let mut entries = Vec::new();
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            entries.push(CertEntry {
                names: Vec::new(),
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        entries.extend(self.tls_certificates.iter().cloned());
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_inside_their_ranges() {
        ProtoLimits::default().validate().unwrap();
        ServerLimits::default().validate().unwrap();
        for spec in limits_table() {
            assert!(
                spec.min <= spec.default && spec.default <= spec.max,
                "{}",
                spec.name
            );
            assert!(!spec.doc.is_empty(), "{} has no reason", spec.name);
        }
    }

    #[test]
    fn destination_dead_secs_follows_min_backoff_and_may_not_exceed_it() {
        let config = ServerConfig::from_toml("min_backoff = 7\nmax_backoff = 60\n").unwrap();
        config.validate().unwrap();
        assert_eq!(config.delivery.limits.destination_dead_secs, 0);
        assert_eq!(
            config.delivery.limits.destination_dead(),
            std::time::Duration::from_secs(7)
        );
        let config =
            ServerConfig::from_toml("min_backoff = 7\nmax_backoff = 60\ndestination_dead_secs = 3\n")
                .unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.delivery.limits.destination_dead(),
            std::time::Duration::from_secs(3)
        );
        let equal = ServerConfig::from_toml("min_backoff = 7\nmax_backoff = 60\ndestination_dead_secs = 7\n")
            .unwrap();
        equal.validate().unwrap();
        let longer =
            ServerConfig::from_toml("min_backoff = 7\nmax_backoff = 60\ndestination_dead_secs = 8\n")
                .unwrap();
        let err = longer.validate().unwrap_err();
        assert_eq!(err.key(), "destination_dead_secs");
        assert!(err.to_string().contains("min_backoff_secs"), "{err}");
        let over = ServerConfig::from_toml("destination_dead_secs = 86401\n").unwrap();
        assert_eq!(over.validate().unwrap_err().key(), "destination_dead_secs");
        assert!(ServerConfig::from_toml("destination_dead_secs = -1\n").is_err());
    }

    #[test]
    fn server_config_reads_every_key_and_refuses_unknown_ones() {
        let config = ServerConfig::from_toml(
            "spool_sync = \"filesystem\"\nlisten = [\"127.0.0.1:25\"]\nworkers = 3\nsink = true\nhostname = \"mx.test\"\n\
             max_connections = 5\nmax_recipients = 200\n",
        )
        .unwrap();
        assert_eq!(config.workers, 3);
        assert_eq!(config.spool_sync, SpoolSync::Filesystem);
        assert!(config.sink);
        assert_eq!(config.proto.hostname, "mx.test");
        assert_eq!(config.limits.max_connections, 5);
        assert_eq!(config.proto.limits.max_recipients, 200);
        let err = ServerConfig::from_toml("max_conections = 5\n").unwrap_err();
        assert!(err.contains("max_conections"), "{err}");
        let err = ServerConfig::from_toml("workers = \"two\"\n").unwrap_err();
        assert!(err.contains("workers"), "{err}");
    }

    #[test]
    fn a_listener_is_an_address_or_a_table_with_proxy() {
        let config = ServerConfig::from_toml(
            "listen = [\"127.0.0.1:25\", { address = \"127.0.0.1:26\", proxy = true }]\n\
             relay_networks = [\"10.0.0.0/8\"]\nproxy_trusted = [\"10.1.2.3/32\", \"2001:db8::/32\"]\n",
        )
        .unwrap();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            config.listen,
            [
                Listen::plain(addr("127.0.0.1:25")),
                Listen {
                    addr: addr("127.0.0.1:26"),
                    proxy: true
                }
            ]
        );
        assert!(config.relay_networks[0].contains(&"10.9.9.9".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(config.proxy_trusted.len(), 2);
        config.validate().unwrap();
        let mut untrusting = config.clone();
        untrusting.proxy_trusted.clear();
        assert_eq!(untrusting.validate().unwrap_err().key(), "listen");
        assert!(
            ServerConfig::from_toml("listen = [{ address = \"127.0.0.1:25\", proxi = true }]\n").is_err()
        );
    }

    #[test]
    fn input_buffer_must_hold_a_command_line() {
        let mut config = ServerConfig::default();
        config.proto.limits.max_command_line = 4096;
        config.limits.input_buffer = 2048;
        assert_eq!(config.validate().unwrap_err().key(), "input_buffer");
    }

    #[test]
    fn out_of_range_names_key_value_and_range() {
        let limits = ProtoLimits {
            max_command_line: 100,
            ..ProtoLimits::default()
        };
        let err = limits.validate().unwrap_err();
        assert_eq!(err.key, "max_command_line");
        assert_eq!(
            err.to_string(),
            "config key `max_command_line` = 100 is outside its allowed range 512..=65536"
        );
    }

    #[test]
    fn hostname_must_be_a_domain_or_an_address_literal() {
        for good in [
            "localhost",
            "mx1.example.net",
            "a-b.c0",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
        ] {
            assert!(is_domain_or_literal(good), "{good}");
        }
        for bad in [
            "",
            "evil\r\n250 injected",
            "a b",
            "-a.example",
            "a-.example",
            "a..example",
            "[300.1.1.1]",
            "[2001:db8::1]",
            "mx_1.example",
        ] {
            assert!(!is_domain_or_literal(bad), "{bad:?}");
        }
        let mut config = ServerConfig::default();
        config.proto.hostname = "evil\r\n250 injected".into();
        let err = config.validate().unwrap_err();
        assert_eq!(err.key(), "hostname");
        assert!(err.to_string().contains("RFC 5321"), "{err}");
        assert!(!is_domain_or_literal(&"a".repeat(64)));
        assert!(is_domain_or_literal(&["a".repeat(63), "b".into()].join(".")));
    }

    #[test]
    fn the_operator_table_holds_every_group_once() {
        let names: Vec<_> = limits_table().map(|s| s.name).collect();
        assert_eq!(
            names.len(),
            ProtoLimits::TABLE.len() + ServerLimits::TABLE.len() + DeliveryLimits::TABLE.len()
        );
        assert_eq!(names.first(), Some(&"max_command_line"));
        assert!(names.contains(&"max_connections") && names.contains(&"uring_min_wait_us"));
    }
}
