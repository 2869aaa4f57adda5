//! One attempt, from the runner's side: a message's recipients handed to their destinations (or deferred at once when a destination is dead), the outcomes folded back into the message, and the message settled: rescheduled with backoff, or its failures notified and the message let go.

use super::{new_pool, Runner};
use crate::delivery::dsn;
use crate::delivery::health::{Admit, Health, Then};
use crate::delivery::log::{self, Status};
use crate::delivery::message::Rcpt;
use crate::delivery::pool::{Attempt, Outcome, Work};
use crate::delivery::reply::Reply;
use crate::delivery::route::Dest;
use crate::delivery::state::{backoff, unix_now};
use crate::spool::{Job, MessageMeta};
use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

impl Runner {
    /// Hands every recipient not done, failed or in flight to its destination: to its pool
    /// when alive, deferred at once when dead, parked beside the probe when probing.
    pub(super) fn dispatch(&mut self, id: &str) {
        let Some(msg) = self.msgs.get_mut(id) else { return };
        if msg.held || msg.in_flight > 0 {
            return;
        }
        let mut by_dest: HashMap<Arc<Dest>, Vec<(usize, Vec<u8>)>> = HashMap::new();
        let mut deferred_here = false;
        for (i, r) in msg.state.iter_mut().enumerate() {
            if !matches!(r, Rcpt::Pending | Rcpt::Deferred(_)) {
                continue;
            }
            match self.routes.route(&msg.rcpts[i]) {
                Some(dest) => {
                    *r = Rcpt::InFlight;
                    let dest = Arc::new(dest.clone());
                    by_dest.entry(dest).or_default().push((i, msg.rcpts[i].clone()));
                }
                None => {
                    let reply = Reply::local(451, "4.4.4 no route for the recipient's domain");
                    log::recipient(&log::Outcome {
                        id,
                        rcpt: &msg.rcpts[i],
                        relay: None,
                        reply: &reply,
                        received: msg.received,
                        attempts: msg.attempts + 1,
                        status: Status::Deferred,
                    });
                    *r = Rcpt::Deferred(reply);
                    deferred_here = true;
                }
            }
        }
        let per = self.shared.limits.destination_recipients;
        let now = Instant::now();
        for (dest, rcpts) in by_dest {
            let health = self.health.entry(dest.clone()).or_insert(Health::Alive);
            let admit = health.admit(id, now);
            if let Admit::Defer(reply) = &admit {
                // Postfix's qmgr defers a dead destination's recipients with its last error,
                // without a delivery agent: no connection, no thread, no wait.
                for (i, addr) in &rcpts {
                    log::recipient(&log::Outcome {
                        id,
                        rcpt: addr,
                        relay: Some(&dest),
                        reply,
                        received: msg.received,
                        attempts: msg.attempts + 1,
                        status: Status::Deferred,
                    });
                    msg.state[*i] = Rcpt::Deferred(reply.clone());
                }
                let d = self.stats.dest(&dest);
                d.deferred += rcpts.len() as u64;
                d.dead_deferrals += rcpts.len() as u64;
                deferred_here = true;
                continue;
            }
            let pool = self
                .pools
                .entry(dest.clone())
                .or_insert_with(|| new_pool(&dest, &self.shared, &self.queue, &self.outcomes_tx));
            for (n, chunk) in rcpts.chunks(per).enumerate() {
                msg.in_flight += 1;
                let work = Work {
                    id: id.to_string(),
                    from: msg.from.clone(),
                    size: msg.size,
                    eight_bit: msg.eight_bit,
                    smtputf8: msg.smtputf8,
                    rcpts: chunk.to_vec(),
                    queued: Instant::now(),
                };
                // The probe is one work item: the message's other chunks wait with the rest.
                let send = matches!(admit, Admit::Send) || (admit == Admit::Probe && n == 0);
                if send {
                    pool.submit(work);
                } else if let Some(work) = health.park(work) {
                    pool.submit(work);
                }
            }
        }
        if deferred_here && msg.in_flight == 0 {
            self.settle(id);
        }
    }

    /// The replies of one work item, and what they say of the destination's health.
    pub(super) fn outcome(&mut self, o: Outcome) {
        let then = self.health.entry(o.dest.clone()).or_insert(Health::Alive).learn(
            &o.id,
            o.attempt,
            o.replies.first().map(|(_, r)| r),
            Instant::now(),
            self.shared.limits.destination_dead(),
        );
        let dest = o.dest.clone();
        self.replies(o);
        match then {
            Then::Nothing => {}
            Then::Submit(parked) => {
                let pool = self
                    .pools
                    .entry(dest.clone())
                    .or_insert_with(|| new_pool(&dest, &self.shared, &self.queue, &self.outcomes_tx));
                for mut work in parked {
                    work.queued = Instant::now();
                    pool.submit(work);
                }
            }
            Then::Probe(mut work) => {
                work.queued = Instant::now();
                self.pools
                    .entry(dest.clone())
                    .or_insert_with(|| new_pool(&dest, &self.shared, &self.queue, &self.outcomes_tx))
                    .submit(work);
            }
            Then::Defer(parked, reply) => {
                for work in parked {
                    self.replies(Outcome {
                        id: work.id,
                        dest: dest.clone(),
                        replies: work.rcpts.iter().map(|(i, _)| (*i, reply.clone())).collect(),
                        attempt: Attempt::Dead,
                    });
                }
            }
        }
    }

    /// Each recipient's reply of one work item into its message; the message settled when
    /// its last work item is back.
    fn replies(&mut self, o: Outcome) {
        let dest = self.stats.dest(&o.dest);
        match o.attempt {
            Attempt::ConnectFailed | Attempt::Lost => dest.connection_failures += 1,
            Attempt::Dead => dest.dead_deferrals += o.replies.len() as u64,
            Attempt::Answered | Attempt::Unread => {}
        }
        let Some(msg) = self.msgs.get_mut(&o.id) else {
            return;
        };
        for (i, reply) in o.replies {
            let (Some(r), Some(rcpt)) = (msg.state.get_mut(i), msg.rcpts.get(i)) else {
                continue;
            };
            let status = Status::of(&reply);
            log::recipient(&log::Outcome {
                id: &o.id,
                rcpt,
                relay: Some(&o.dest),
                reply: &reply,
                received: msg.received,
                attempts: msg.attempts + 1,
                status,
            });
            *r = match status {
                Status::Sent => {
                    self.marks.push((o.id.clone(), i));
                    dest.delivered += 1;
                    if let Some(since) = msg.since {
                        dest.record_latency(since.elapsed());
                    }
                    Rcpt::Done
                }
                Status::Bounced => {
                    dest.failed += 1;
                    Rcpt::Failed(reply)
                }
                Status::Deferred | Status::Expired => {
                    dest.deferred += 1;
                    Rcpt::Deferred(reply)
                }
            };
        }
        msg.in_flight = msg.in_flight.saturating_sub(1);
        if msg.in_flight == 0 {
            let id = o.id;
            self.settle(&id);
        }
    }

    /// After an attempt: schedule the deferred recipients, or, with none left, notify the
    /// sender of the failed ones and let the message go.
    pub(super) fn settle(&mut self, id: &str) {
        let lifetime = Duration::from_secs(self.shared.limits.max_queue_lifetime_secs);
        let Some(msg) = self.msgs.get_mut(id) else { return };
        let expired = SystemTime::now()
            .duration_since(msg.received)
            .is_ok_and(|age| age >= lifetime);
        let mut deferred = 0;
        for (r, rcpt) in msg.state.iter_mut().zip(&msg.rcpts) {
            if let Rcpt::Deferred(reply) = r {
                if expired {
                    // RFC 3463 §3.5: X.4.7, delivery time expired; the last reply is kept.
                    let failed = Reply::local(
                        reply.code.max(400),
                        format!("4.4.7 delivery time expired; last reply: {}", reply.one_line()),
                    );
                    log::recipient(&log::Outcome {
                        id,
                        rcpt,
                        relay: None,
                        reply: &failed,
                        received: msg.received,
                        attempts: msg.attempts,
                        status: Status::Expired,
                    });
                    *r = Rcpt::Failed(failed);
                    self.stats.expired += 1;
                } else {
                    deferred += 1;
                }
            }
        }
        if deferred > 0 {
            msg.attempts += 1;
            let limits = &self.shared.limits;
            let wait = backoff(
                msg.attempts,
                Duration::from_secs(limits.min_backoff_secs),
                Duration::from_secs(limits.max_backoff_secs),
                self.jitter.unit(),
            );
            msg.next_attempt = unix_now() + wait.as_secs().max(1);
            self.stats.deferred += deferred;
            self.writer.save(id, msg.state_file());
            self.due.push(Reverse((msg.next_attempt, id.to_string())));
            return;
        }
        let failed: Vec<usize> = (0..msg.state.len())
            .filter(|&i| matches!(msg.state[i], Rcpt::Failed(_)))
            .collect();
        if !failed.is_empty() && msg.from.is_empty() {
            // RFC 5321 §4.5.5: nothing is ever sent to the null reverse-path.
            tracing::info!(id = %id, failed = failed.len(), "no delivery status notification: null sender");
        }
        if !failed.is_empty() && !msg.from.is_empty() {
            if let Err(e) = self.notify(id, &failed) {
                // Kept, failed recipients and all, and tried again later: never dropped
                // without its notification.
                tracing::error!(id, error = %e, "cannot queue the delivery status notification");
                if let Some(msg) = self.msgs.get_mut(id) {
                    msg.next_attempt = unix_now() + self.shared.limits.min_backoff_secs;
                    self.due.push(Reverse((msg.next_attempt, id.to_string())));
                }
                return;
            }
        }
        self.stats.bounced += failed.len() as u64;
        for i in failed {
            self.marks.push((id.to_string(), i));
        }
        self.msgs.remove(id);
        self.writer.remove(id);
        self.stats.completed += 1;
        self.refill();
    }

    /// Commits the notification for `failed` recipients of `id` and waits for its commit.
    fn notify(&mut self, id: &str, failed: &[usize]) -> std::io::Result<()> {
        let Some(msg) = self.msgs.get(id) else {
            return Ok(());
        };
        let mut original = self.queue.content(id)?;
        let report = dsn::Report {
            hostname: &self.shared.hostname,
            id,
            sender: &msg.from,
            arrival: msg.received,
            failed: failed
                .iter()
                .filter_map(|&i| match &msg.state[i] {
                    Rcpt::Failed(reply) => Some(dsn::Failed {
                        address: &msg.rcpts[i],
                        reply,
                    }),
                    _ => None,
                })
                .collect(),
        };
        let text = dsn::build(&report, &mut original, self.shared.limits.bounce_size_limit)?;
        let dsn_id = self.dsn_spool.ids.next_id();
        let meta = MessageMeta {
            id: dsn_id.clone(),
            helo: self.shared.hostname.as_bytes().to_vec(),
            esmtp: true,
            smtputf8: msg.smtputf8,
            client: SocketAddr::from(([127, 0, 0, 1], 0)),
            mail_from: Vec::new(),
            mail_params: Vec::new(),
            recipients: vec![msg.from.to_vec()],
            received: SystemTime::now(),
            tls: None,
        };
        let key = self.stats.dsn_sent;
        self.dsn_spool.submit(Job::Start {
            key,
            meta: Box::new(meta),
        });
        self.dsn_spool.submit(Job::Chunk { key, data: text });
        self.dsn_spool.submit(Job::End {
            key,
            at: std::time::Instant::now(),
        });
        match self.dsn_spool.results.recv_timeout(Duration::from_secs(60)) {
            Ok(done) if done.ok => {
                self.stats.dsn_sent += 1;
                tracing::info!(
                    id,
                    notification = %dsn_id,
                    to = %format_args!("<{}>", crate::logging::Escaped(&msg.from)),
                    failed = failed.len(),
                    "delivery status notification queued"
                );
                Ok(())
            }
            Ok(_) => Err(std::io::Error::other("the spool refused the notification")),
            Err(_) => Err(std::io::Error::other("the spool did not commit the notification")),
        }
    }
}
