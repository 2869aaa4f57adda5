//! The `ringmx` command line: `ringmx serve` reads the configuration, lets flags override it, and runs the server.

use clap::{Args, Parser, Subcommand};
use ringmx::config::{BackendKind, Listen, ServerConfig, SpoolFormat};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringmx",
    version,
    about = "A thread-per-core SMTP server for inbound MX frontends"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept mail over SMTP and commit it to the spool (or count and drop it with --sink).
    Serve(Box<Serve>),
    /// Look at a spool (either format), read-only: safe beside a running server.
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// Check a configuration file as a start would (the file, its certificates, recipients
    /// table, user and spool directory) and print the effective configuration; exit status 1
    /// if anything would stop a start.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print only the problems, not the configuration.
        #[arg(long, short)]
        quiet: bool,
    },
    /// The delivery queue: list, flush, delete, hold, release (through the running server's
    /// control socket DIR/control.sock, or on the spool of a stopped one).
    #[command(subcommand)]
    Queue(QueueCommand),
}

#[derive(Subcommand)]
enum QueueCommand {
    /// One line per message, like mailq: id, age, size, sender, each recipient and its state
    /// (pending, deferred with its last reply and next attempt, held, failed).
    List {
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
        /// One JSON object per message instead.
        #[arg(long)]
        json: bool,
    },
    /// Attempt every deferred message now (or only ID), whatever its backoff.
    Flush {
        id: Option<String>,
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
    },
    /// Remove a message from the spool without delivering it.
    Delete {
        id: String,
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
    },
    /// Keep a message from being delivered until released.
    Hold {
        id: String,
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
    },
    /// Deliver a held message again (now).
    Release {
        id: String,
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
    },
    /// The running server's delivery counters, as JSON.
    Stats {
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
    },
}

/// Runs `ringmx check`: the configuration on stdout, problems and notes on stderr.
fn check_command(path: &std::path::Path, quiet: bool) -> ExitCode {
    let checked = ringmx::check::check(path);
    if let (Some(text), false) = (&checked.effective, quiet) {
        print!("{text}");
    }
    for note in &checked.notes {
        eprintln!("ringmx check: note: {note}");
    }
    for problem in &checked.problems {
        eprintln!("ringmx check: {problem}");
    }
    if checked.problems.is_empty() {
        eprintln!("ringmx check: {}: ok", path.display());
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `ringmx queue ...`.
fn queue_command(cmd: QueueCommand) -> ExitCode {
    use ringmx::delivery::control::{self, Request};
    let (spool, req) = match cmd {
        QueueCommand::List { spool, json } => (spool, Request::List { json }),
        QueueCommand::Flush { id, spool } => (spool, Request::Flush(id)),
        QueueCommand::Delete { id, spool } => (spool, Request::Delete(id)),
        QueueCommand::Hold { id, spool } => (spool, Request::Hold(id)),
        QueueCommand::Release { id, spool } => (spool, Request::Release(id)),
        QueueCommand::Stats { spool } => (spool, Request::Stats),
    };
    // The id reaches the socket as part of a line: checked the way the server checks it.
    if let Err(e) = Request::parse(&req.line()) {
        eprintln!("ringmx: {e}");
        return ExitCode::from(2);
    }
    match control::run(&spool, &req) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringmx: queue {}: {e}", spool.display());
            ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Write every committed message as OUT/<id>.eml and OUT/<id>.json, exactly as the files
    /// format stores them.
    Export {
        /// The spool directory.
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
        /// Where to write the messages (created if missing).
        #[arg(long, value_name = "OUT")]
        to: PathBuf,
    },
    /// Verify every record of every segment and every message file; exit status 1 if any is
    /// damaged.
    Check {
        /// The spool directory.
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
    },
}

/// Runs `ringmx spool ...`.
fn spool_command(cmd: SpoolCommand) -> ExitCode {
    match cmd {
        SpoolCommand::Export { spool, to } => match ringmx::spool::tool::export(&spool, &to) {
            Ok(n) => {
                println!("exported {n} messages to {}", to.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ringmx: spool {}: {e}", spool.display());
                ExitCode::FAILURE
            }
        },
        SpoolCommand::Check { spool } => match ringmx::spool::tool::check(&spool) {
            Ok(c) => {
                print!("{}", c.report);
                if c.problems == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("ringmx: spool {}: {e}", spool.display());
                ExitCode::from(2)
            }
        },
    }
}

/// The tools log to stderr directly: they are short-lived and have no event loop to protect.
fn init_plain_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

#[derive(Args)]
struct Serve {
    /// TOML file with any of the server keys (listen, listen_tls, tls_cert, tls_key,
    /// tls_certificates = [{ names, cert, key }], workers, backend, spool, sink,
    /// spool_format = "log"|"files", spool_sync = "file"|"filesystem") and every key of the limits table (hostname, bare_lf,
    /// tls_required, max_message_size, ...); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on; repeat for several. Port 0 picks a free port (logged at start).
    /// [default: 127.0.0.1:2525]
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Implicit TLS listener (RFC 8314, like port 465): the TLS handshake comes first and the
    /// greeting follows inside it; repeat for several. Needs --tls-cert.
    #[arg(long = "listen-tls", value_name = "ADDR")]
    listen_tls: Vec<SocketAddr>,
    /// The --listen and --listen-tls listeners expect a PROXY header (v1 or v2) from a
    /// balancer in proxy_trusted (default loopback) before anything else.
    #[arg(long)]
    proxy_protocol: bool,
    /// Certificate chain (PEM, leaf first): plain listeners offer STARTTLS. More certificates,
    /// chosen by SNI, go in the config file's tls_certificates. SIGHUP reloads them.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// A domain this MX accepts mail for; repeat for several. Clients outside relay_networks
    /// (default loopback) may send only to these.
    #[arg(long = "domain", value_name = "NAME")]
    domains: Vec<String>,
    /// The users of those domains: one address or @domain per line, # comments. Reloaded on
    /// SIGHUP.
    #[arg(long, value_name = "FILE")]
    recipients: Option<PathBuf>,
    /// Private key of --tls-cert (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Worker threads, each pinned to a core with its own listener. [default: number of CPUs]
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// I/O backend; auto picks io_uring if the kernel has what it needs, else epoll. The
    /// environment variable RINGMX_BACKEND (auto, epoll, uring) overrides it. [default: auto]
    #[arg(long, value_enum, value_name = "BACKEND")]
    backend: Option<BackendKind>,
    /// Spool directory: each message is on disk (in DIR/log/, or with --spool-format files
    /// as DIR/<id>.eml and DIR/<id>.json) before its 250. [default: ./spool]
    #[arg(long, value_name = "DIR", conflicts_with = "sink")]
    spool: Option<PathBuf>,
    /// How the spool stores messages: log (per-worker preallocated segments, one fdatasync
    /// per batch) or files (DIR/<id>.eml and DIR/<id>.json per message). [default: log]
    #[arg(long, value_enum, value_name = "FORMAT", conflicts_with = "sink")]
    spool_format: Option<SpoolFormat>,
    /// Count and drop message bodies and answer 250 at once, like Postfix's smtp-sink.
    #[arg(long)]
    sink: bool,
    /// Deliver every committed message to DEST: smtp:HOST:PORT, lmtp:HOST:PORT or
    /// lmtp:unix:PATH (per-domain routes go in the config file's [routes]). Without it (and
    /// without routes) the spool keeps the messages.
    #[arg(long, value_name = "DEST", conflicts_with = "sink")]
    relay_to: Option<String>,
    /// Name in the greeting, the EHLO reply and the Received: header. [default: localhost]
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// Connections open at once; more get "421 4.3.2 Too many connections". Lowered at start,
    /// with a warning, to what the open-files limit can serve. [default: 10000]
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Largest message in octets, advertised as SIZE. [default: 26214400]
    #[arg(long, value_name = "BYTES")]
    max_message_size: Option<u64>,
    /// Recipients per message (at least 100, RFC 5321 §4.5.3.1.8). [default: 100]
    #[arg(long, value_name = "N")]
    max_recipients: Option<usize>,
    /// Run as this user (and its group) once the listeners are bound: start as root to listen
    /// on port 25 without keeping root.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (its own thread, never a worker's).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log lines as text (key=value) or one JSON object per line. [default: text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<ringmx::config::LogFormat>,
    /// Write the counters to FILE at exit, as one JSON object (accepted, commands, messages,
    /// errors, and the backend's figures under "io").
    #[arg(long, value_name = "FILE")]
    stats_file: Option<PathBuf>,
}

impl Serve {
    fn config(&self) -> Result<ServerConfig, String> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                ServerConfig::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => ServerConfig::default(),
        };
        let listen = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(|&addr| Listen {
                    addr,
                    proxy: self.proxy_protocol,
                })
                .collect()
        };
        if !self.listen.is_empty() {
            config.listen = listen(&self.listen);
        }
        if !self.listen_tls.is_empty() {
            config.listen_tls = listen(&self.listen_tls);
        }
        if !self.domains.is_empty() {
            config.domains.clone_from(&self.domains);
        }
        if let Some(file) = &self.recipients {
            config.recipients = Some(file.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls_cert = Some(cert.clone());
            config.tls_key = Some(key.clone());
        }
        if let Some(n) = self.workers {
            config.workers = n;
        }
        if let Some(b) = self.backend {
            config.backend = b;
        }
        if let Some(dir) = &self.spool {
            config.spool.clone_from(dir);
            config.sink = false;
        }
        if let Some(format) = self.spool_format {
            config.spool_format = format;
        }
        if self.sink {
            config.sink = true;
        }
        if let Some(dest) = &self.relay_to {
            config.delivery.relay_to = Some(dest.clone());
        }
        if let Some(name) = &self.hostname {
            config.proto.hostname.clone_from(name);
        }
        if let Some(n) = self.max_connections {
            config.limits.max_connections = n;
        }
        if let Some(user) = &self.user {
            config.user = Some(user.clone());
        }
        if let Some(addr) = self.metrics_listen {
            config.metrics_listen = Some(addr);
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
        let limits = &mut config.proto.limits;
        if let Some(n) = self.max_message_size {
            limits.max_message_size = n;
        }
        if let Some(n) = self.max_recipients {
            limits.max_recipients = n;
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serve = match cli.command {
        Command::Serve(serve) => serve,
        Command::Spool(cmd) => {
            init_plain_logging();
            return spool_command(cmd);
        }
        Command::Queue(cmd) => {
            init_plain_logging();
            return queue_command(cmd);
        }
        Command::Check { config, quiet } => return check_command(&config, quiet),
    };
    let stats_file = serve.stats_file.clone();
    let result = serve.config().and_then(|config| {
        ringmx::logging::init(
            config.log_format,
            &config.log_level,
            config.limits.log_buffer_lines,
        )?;
        // SIGHUP reads the file again, with the same flags over it.
        let source: ringmx::reload::Source = Box::new(move || serve.config());
        ringmx::server::serve(config, source, stats_file)
    });
    ringmx::logging::finish();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("ringmx: {msg}");
            ExitCode::FAILURE
        }
    }
}
