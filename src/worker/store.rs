//! The worker's bridge to where messages go: a session's start, body chunks, end and abort become spool jobs, and the spool's results come back as commits.
//!
//! The worker's event loop never touches the disk: each job is a message to the worker's
//! committer thread (`crate::spool`), and its answer arrives through a channel and a wake.
//! In sink mode nothing is written and the end of data is acknowledged at once.

use crate::backend::Token;
use crate::proto::Envelope;
use crate::spool::{Done, IdGen, Job, MessageMeta, Spool, SpoolStats, TlsInfo};
use std::net::SocketAddr;
use std::time::SystemTime;

/// Where finished messages go.
pub enum Store {
    /// Count and drop (`--sink`): `250` right after the end of data.
    Sink(IdGen),
    /// Commit to the spool before `250`.
    Spool(Spool),
}

/// Where a connection's current message stands with the store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    None,
    /// Between `MessageStart` and `MessageEnd`, under this queue id (empty in sink mode).
    Streaming(String),
    /// Handed to the spool under this id; waiting for its result. The id tells a late result
    /// for a message the session gave up on from the result for its current one.
    Committing(String),
}

/// What the end of a message needs from the session now.
pub(crate) enum Ended {
    /// Stored already (sink): acknowledge it under this id.
    Queued(String),
    /// The spool has it; its result comes through [`Store::results`].
    Committing,
}

impl Store {
    /// Whether message content must be kept and handed over (not in sink mode).
    pub(crate) fn keeps_bodies(&self) -> bool {
        matches!(self, Store::Spool(_))
    }

    /// Whether the spool's body queue is full: sessions streaming a message stop being read.
    pub(crate) fn full(&self) -> bool {
        matches!(self, Store::Spool(s) if s.full())
    }

    /// A message begins: the spool gets its envelope (and the TLS session it came over, if
    /// any) under a new queue id.
    pub(crate) fn start(
        &mut self,
        token: Token,
        env: &Envelope,
        client: SocketAddr,
        tls: impl FnOnce() -> Option<TlsInfo>,
    ) -> Message {
        let Store::Spool(spool) = self else {
            return Message::Streaming(String::new());
        };
        let id = spool.ids.next_id();
        let meta = MessageMeta {
            id: id.clone(),
            helo: env.helo().to_vec(),
            esmtp: env.esmtp(),
            smtputf8: env.params().smtputf8,
            client,
            mail_from: env.mail_from().to_vec(),
            mail_params: env.mail_params().to_vec(),
            recipients: env.recipients().map(<[u8]>::to_vec).collect(),
            received: SystemTime::now(),
            tls: tls(),
        };
        spool.submit(Job::Start {
            key: token.to_u64(),
            meta: Box::new(meta),
        });
        Message::Streaming(id)
    }

    /// Hands the content gathered from one batch of input to the spool, as one job.
    pub(crate) fn chunk(&self, token: Token, data: Vec<u8>) {
        if let Store::Spool(spool) = self {
            spool.submit(Job::Chunk {
                key: token.to_u64(),
                data,
            });
        }
    }

    /// The message is complete: in sink mode it is acknowledged now, else the spool commits
    /// it and `message` waits for the result. `now` is the turn's clock, the start of the
    /// commit latency (no clock read per message).
    pub(crate) fn end(&mut self, token: Token, message: &mut Message, now: std::time::Instant) -> Ended {
        match self {
            Store::Sink(ids) => {
                *message = Message::None;
                Ended::Queued(ids.next_id())
            }
            Store::Spool(spool) => {
                spool.submit(Job::End {
                    key: token.to_u64(),
                    at: now,
                });
                *message = match std::mem::replace(message, Message::None) {
                    Message::Streaming(id) | Message::Committing(id) => Message::Committing(id),
                    Message::None => Message::Committing(String::new()),
                };
                Ended::Committing
            }
        }
    }

    /// Drops the message in progress, if any: the spool removes what it wrote of it.
    pub(crate) fn abort(&self, token: Token, message: &mut Message) {
        if *message != Message::None {
            if let Store::Spool(spool) = self {
                spool.submit(Job::Abort { key: token.to_u64() });
            }
        }
        *message = Message::None;
    }

    /// The commit results that arrived since the last call.
    pub(crate) fn results(&self) -> Vec<Done> {
        match self {
            Store::Spool(spool) => spool.results.try_iter().collect(),
            Store::Sink(_) => Vec::new(),
        }
    }

    /// What the committer has published so far, for a snapshot; none in sink mode.
    pub(crate) fn commit_metrics(&self) -> Option<&crate::spool::CommitMetrics> {
        match self {
            Store::Spool(spool) => Some(spool.metrics()),
            Store::Sink(_) => None,
        }
    }

    /// Lets the spool finish every job queued, then stops it; what it did.
    pub(crate) fn finish(&mut self) -> SpoolStats {
        match self {
            Store::Spool(spool) => spool.finish(),
            Store::Sink(_) => SpoolStats::default(),
        }
    }
}

/// Whether a commit result is for the message this connection waits for (not one its session
/// gave up on after a commit timeout).
pub(crate) fn awaited(message: &Message, done: &Done) -> bool {
    matches!(message, Message::Committing(id) if *id == done.id)
}
