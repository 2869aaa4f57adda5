//! Replies against the plan: each complete reply checked against what its command expects, counted and timed, and the plan extended where a reply decides the rest (EHLO, the pregreet answer, a slowloris `421`).

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ringmx_loadgen::reply::{ehlo_caps, parse_reply, Caps, Parse, Reply};

use super::check::{ehlo_size, judge, teaser_len};
use super::conn::{append_transcript, micros, Failure, State};
use super::{Worker, TRANSCRIPTS_PER_STEP};
use crate::script::{self, BigMsg, Cmd, Expect, Piece};
use crate::vocab::{Class, Outcome, Step, TlsMode, STEP_COUNT};

impl Worker {
    /// Check every complete reply buffered. Returns false once the session has ended.
    pub(super) fn process_replies(&mut self, slot: usize, now: Instant) -> bool {
        loop {
            let c = &mut self.conns[slot];
            if c.plan.get(c.acked).is_some_and(|x| x.expect == Expect::Pregreet) {
                // A delayed greeting's first lines: the verdict is in the line after them.
                let n = teaser_len(c.pending());
                if n > 0 && self.record {
                    let (h, t) = (c.in_head, &mut c.transcript);
                    append_transcript(t, b"S: ", &c.inbuf[h..h + n]);
                }
                c.in_head += n;
            }
            let reply = match parse_reply(c.pending()) {
                Parse::Incomplete => return true,
                Parse::Invalid(why) => {
                    let step = c.plan.get(c.acked).map_or(Step::Quit, |x| x.step);
                    self.mismatch(slot, step, why, now);
                    return false;
                }
                Parse::Complete(r) => r,
            };
            if self.record {
                let (h, l) = (c.in_head, reply.len);
                let (t, b) = (&mut c.transcript, &c.inbuf[h..h + l]);
                append_transcript(t, b"S: ", b);
            }
            let reply_start = c.in_head;
            c.in_head += reply.len;
            if c.acked >= c.sent {
                let step = c
                    .plan
                    .get(c.acked.min(c.plan.len().saturating_sub(1)))
                    .map_or(Step::Quit, |x| x.step);
                self.mismatch(slot, step, "reply to no command (unsolicited or extra)", now);
                return false;
            }
            let cmd = c.plan[c.acked];
            let text = reply_start..reply_start + reply.len;
            if !self.reply_matches(slot, cmd, reply, text.clone(), now) {
                return false;
            }
            if !self.accept(slot, cmd, reply, text, now) {
                return false;
            }
            let c = &self.conns[slot];
            if c.acked == c.plan.len() {
                self.end_session(slot, None, now);
                return false;
            }
            if c.handshaking {
                return true;
            }
            if c.acked == c.sent {
                self.next_batch(slot, now);
                if self.conns[slot].state != State::Running {
                    return false;
                }
            }
        }
    }

    /// Whether `reply` (in `inbuf[text]`) is what `cmd` expects; a mismatch ends the session.
    fn reply_matches(
        &mut self,
        slot: usize,
        cmd: Cmd,
        reply: Reply,
        text: Range<usize>,
        now: Instant,
    ) -> bool {
        let c = &self.conns[slot];
        if let Err(why) = judge(cmd.expect, reply, &c.inbuf[text], c.saw_452) {
            self.mismatch(slot, cmd.step, why, now);
            return false;
        }
        // RFC 3463 / RFC 2034: once advertised, every 2xx/4xx/5xx reply after EHLO
        // carries an enhanced code whose class matches the reply's first digit.
        let class = (reply.code / 100) as u8;
        if c.caps.enhancedstatuscodes && matches!(class, 2 | 4 | 5) {
            match reply.enhanced_class {
                Some(e) if e != class => {
                    self.mismatch(
                        slot,
                        cmd.step,
                        "enhanced status class differs from reply code",
                        now,
                    );
                    return false;
                }
                Some(_) => {}
                None => self.counters.enhanced_missing += 1,
            }
        }
        true
    }

    /// Count and time the expected reply to `cmd`, in `inbuf[text]`; the EHLO reply's
    /// extensions decide the rest of the script, a 220 to STARTTLS starts the handshake.
    /// Returns false once the session has ended.
    fn accept(&mut self, slot: usize, cmd: Cmd, reply: Reply, text: Range<usize>, now: Instant) -> bool {
        let c = &mut self.conns[slot];
        c.acked += 1;
        c.deadline = now + self.shared.cfg.timeout;
        let (lag, took) = (c.lag_us, micros(now - c.batch_at));
        if cmd.piece != Piece::Nothing {
            self.counters.commands += 1;
        }
        if matches!(cmd.step, Step::Eod | Step::Bdat) && reply.code == 250 {
            self.counters.messages += 1;
            if let Some(acked) = &mut self.acked {
                // acked.txt: the reply's last line (`250 text`) names the message.
                let r = &c.inbuf[text.clone()];
                let r = r.strip_suffix(b"\n").unwrap_or(r);
                let r = r.strip_suffix(b"\r").unwrap_or(r);
                let last = memchr::memrchr(b'\n', r).map_or(r, |i| &r[i + 1..]);
                acked.extend_from_slice(last);
                acked.push(b'\n');
            }
        }
        if let Some(p) = cmd.phase {
            self.record(p, took, lag);
        }
        match cmd.expect {
            Expect::Pregreet => {
                let accepted = reply.code == 220;
                let o = if accepted {
                    Outcome::PregreetAccepted
                } else {
                    Outcome::PregreetRejected
                };
                self.outcome(o);
                script::pregreet_answered(accepted, &mut self.conns[slot].plan);
            }
            Expect::Held => {
                // The 421 ends the drip; the close must follow (RFC 5321 3.8).
                let c = &mut self.conns[slot];
                c.dripping = false;
                c.plan.push(Cmd {
                    piece: Piece::Nothing,
                    expect: Expect::Close,
                    step: Step::Slowloris,
                    phase: None,
                    flush: true,
                });
                self.outcome(Outcome::Slowloris421);
            }
            Expect::OkOrFive if self.conns[slot].kind.class == Class::Smuggle => {
                self.outcome(if reply.code == 250 {
                    Outcome::SmuggleAccepted
                } else {
                    Outcome::SmuggleRejected
                });
            }
            Expect::Surplus => {
                let c = &mut self.conns[slot];
                let first_452 = reply.code == 452 && !c.saw_452;
                c.saw_452 |= reply.code == 452;
                let last = c.plan.get(c.acked).is_none_or(|x| x.expect != Expect::Surplus);
                let all_250 = last && !c.saw_452;
                if first_452 {
                    self.outcome(Outcome::Overshoot452);
                } else if all_250 {
                    self.outcome(Outcome::OvershootAccepted);
                }
            }
            _ => {}
        }
        // The STARTTLS command's 220 starts the handshake; the starttls class's QUIT is counted
        // under the same step but its 221 ends the session.
        if matches!(cmd.piece, Piece::Starttls | Piece::StarttlsNoop) {
            if self.conns[slot].in_head < self.conns[slot].in_len {
                // RFC 3207 4: nothing may follow the 220 in plaintext.
                self.mismatch(slot, cmd.step, "plaintext after the 220 to STARTTLS", now);
                return false;
            }
            // RFC 3207 4.2: the client forgets what the first EHLO told it, so the second
            // EHLO's reply is exempt from the enhanced-code check as the first one was.
            self.conns[slot].caps = Caps::default();
            self.start_tls(slot, now);
        }
        if cmd.step == Step::Ehlo {
            return self.after_ehlo(slot, text, now);
        }
        true
    }

    /// The EHLO reply's extensions decide the rest of the script: STARTTLS first when
    /// `--tls starttls` or in the tls class and not yet in TLS, else the class's commands.
    fn after_ehlo(&mut self, slot: usize, reply: Range<usize>, now: Instant) -> bool {
        let mode = self.shared.cfg.tls.as_ref().and_then(|t| t.mode);
        let c = &mut self.conns[slot];
        c.caps = ehlo_caps(&c.inbuf[reply.clone()]);
        let starttls = mode == Some(TlsMode::Starttls) || c.kind.class == Class::Tls;
        let (in_tls, offered) = (c.tls.is_some(), c.caps.starttls);
        if starttls && !in_tls {
            if !offered {
                self.mismatch(slot, Step::Ehlo, "STARTTLS not offered", now);
                return false;
            }
            script::starttls(c.kind, &mut c.plan);
            return true;
        }
        if in_tls && offered && starttls {
            // RFC 3207 4.2: a server must not offer STARTTLS again once in TLS.
            self.mismatch(slot, Step::Ehlo, "STARTTLS offered again inside TLS", now);
            return false;
        }
        if c.kind.class == Class::Bigmsg {
            let Some(limit) = ehlo_size(&c.inbuf[reply]) else {
                self.mismatch(slot, Step::Ehlo, "no SIZE limit advertised (RFC 1870)", now);
                return false;
            };
            // Rendered once per worker and limit: a reload may change the limit mid-run.
            if self.big.as_ref().is_none_or(|b| b.limit != limit) {
                self.big = Some(Arc::new(BigMsg::new(limit)));
            }
            c.big = self.big.clone();
        }
        self.caps_seen.get_or_insert(c.caps);
        script::after_ehlo(c.kind, c.caps, &self.opts, &mut self.rng, &mut c.plan);
        true
    }

    pub(super) fn expire(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let c = &self.conns[slot];
            if c.state == State::Idle || now < c.deadline {
                continue;
            }
            let waiting = c.plan.get(c.acked).filter(|_| c.state == State::Running);
            match waiting.map(|x| (x.expect, x.step)) {
                // The server answered but never closed: that breaks the rule for
                // non-SMTP input, it is not a slow server.
                Some((Expect::Close, step)) => {
                    self.mismatch(slot, step, "connection not closed within the timeout", now)
                }
                Some((Expect::Held, step)) => {
                    self.mismatch(slot, step, "connection not closed within --slowloris-max", now)
                }
                _ => self.end_session(slot, Some(Failure::Timeout), now),
            }
        }
    }

    pub(super) fn mismatch(&mut self, slot: usize, step: Step, why: &str, now: Instant) {
        let class = self.conns[slot].kind.class;
        self.counters.mismatch_steps[class as usize][step as usize] += 1;
        if let Some(dir) = &self.shared.mismatch_dir {
            let i = class as usize * STEP_COUNT + step as usize;
            let n = self.shared.saved[i].fetch_add(1, Ordering::Relaxed);
            if n < TRANSCRIPTS_PER_STEP {
                let c = &self.conns[slot];
                let expected = c
                    .plan
                    .iter()
                    .find(|x| x.step == step)
                    .map_or("-".into(), |x| x.expect.describe());
                let mut text = format!(
                    "class: {}\nvariant: {}\nstep: {}\nexpected: {}\nproblem: {}\nunparsed: {:?}\n\n",
                    class.name(),
                    class.variants()[usize::from(c.kind.variant)],
                    step.name(),
                    expected,
                    why,
                    String::from_utf8_lossy(c.pending()),
                )
                .into_bytes();
                text.extend_from_slice(&c.transcript);
                let path = dir.join(format!("{}-{}-{}.txt", class.name(), step.name(), n + 1));
                // Losing a transcript must not stop the run; the counters still count it.
                let _ = std::fs::write(path, text);
            }
        }
        self.end_session(slot, Some(Failure::Mismatch), now);
    }
}
