//! Shared by the integration tests: loads the golden transcripts and drives a sans-IO session.
#![allow(dead_code)] // each test binary uses a different part of this module

use ringmx::config::ProtoConfig;
use ringmx::proto::{Commit, Event, Session, Settings};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The hostname every transcript's replies are written for.
pub const HOSTNAME: &str = "mx.test";
/// The queue id written in transcripts' `250 2.0.0 Ok: queued as TESTID` replies.
pub const QUEUE_ID: &str = "TESTID";

/// One golden transcript: `NAME.in` (client bytes) → `NAME.ref` (server bytes), with an
/// optional `NAME.toml` (config overrides) and `NAME.msg` (the committed messages, joined by
/// `==\r\n`).
pub struct Transcript {
    pub name: String,
    pub input: Vec<u8>,
    pub expected: Vec<u8>,
    pub config: ProtoConfig,
    pub config_toml: Option<String>,
    /// The `NAME.toml` itself, for tests that hand it to the server as `--config`.
    pub config_file: Option<PathBuf>,
    pub messages: Option<Vec<u8>>,
}

pub fn transcripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts")
}

/// Every transcript in `tests/transcripts`, sorted by name.
pub fn transcripts() -> Vec<Transcript> {
    let dir = transcripts_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".in").map(str::to_string))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no transcripts in {}", dir.display());
    names
        .into_iter()
        .map(|name| {
            let path = |ext: &str| dir.join(format!("{name}.{ext}"));
            let read = |ext: &str| std::fs::read(path(ext));
            let config_toml = read("toml").ok().map(|b| String::from_utf8(b).unwrap());
            let mut config: ProtoConfig =
                toml::from_str(config_toml.as_deref().unwrap_or("")).expect("transcript config");
            config.hostname = HOSTNAME.to_string();
            Transcript {
                input: read("in").unwrap(),
                expected: read("ref").unwrap_or_else(|_| panic!("{name}.ref missing")),
                config,
                config_file: config_toml.is_some().then(|| path("toml")),
                config_toml,
                messages: read("msg").ok(),
                name,
            }
        })
        .collect()
}

/// What a session produced for some input.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub output: Vec<u8>,
    pub messages: Vec<Vec<u8>>,
    pub closed: bool,
    /// The session's error replies, as counted in its stats.
    pub errors: u64,
}

impl Outcome {
    /// The committed messages joined as in `NAME.msg`.
    pub fn joined_messages(&self) -> Vec<u8> {
        self.messages.join(&b"==\r\n"[..])
    }
}

/// Feeds `chunks` to a fresh session, committing every message at once, as a server would
/// with an instant disk. Unconsumed input is kept and offered again with the next chunk.
pub fn drive<'a>(config: &ProtoConfig, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let now = Instant::now();
    let mut output = Vec::new();
    let mut session = Session::new(
        Settings::new(config.clone()),
        ringmx::proto::Client {
            relay: true,
            tls: false,
        },
        now,
        &mut output,
    );
    let mut messages = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let mut closed = false;
    let mut pending: Vec<u8> = Vec::new();
    let mut steps = 0usize;
    let mut errors = 0u64;
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        loop {
            steps += 1;
            assert!(steps < 10_000_000, "session does not make progress");
            let progress = session.handle_input(now, &pending, &mut output);
            let n = progress.consumed;
            if session.stats().should_fold() {
                errors += u64::from(session.take_stats().errors);
            }
            assert!(
                n > 0 || progress.body.is_empty(),
                "content handed out without consuming input"
            );
            for piece in progress.body.pieces() {
                current
                    .as_mut()
                    .expect("body outside a message")
                    .extend_from_slice(piece);
            }
            pending.drain(..n);
            let mut evented = false;
            while let Some(event) = session.poll_event() {
                evented = true;
                match event {
                    Event::MessageStart => current = Some(Vec::new()),
                    Event::MessageEnd => {
                        messages.push(current.take().expect("end outside a message"));
                        session.handle_commit(now, Commit::Queued(QUEUE_ID), &mut output);
                    }
                    Event::MessageAbort => current = None,
                    // As the worker does: what followed the STARTTLS line is discarded, and
                    // the handshake is taken as done.
                    Event::StartTls => {
                        pending.clear();
                        session.handle_tls_established(now, &mut output);
                    }
                    Event::Close(_) => closed = true,
                }
            }
            if n == 0 && !evented {
                break;
            }
        }
    }
    Outcome {
        output,
        messages,
        closed,
        errors: errors + u64::from(session.stats().errors),
    }
}

/// Shows bytes with CR and LF visible, for assertion messages.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace('\r', "\\r")
        .replace('\n', "\\n\n")
}
