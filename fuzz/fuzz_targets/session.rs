//! Fuzzes the sans-IO session: arbitrary bytes at arbitrary split points must never panic, must answer the same however they are split, and must keep every reply a well-formed line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmx::config::ProtoConfig;
use ringmx::proto::{Commit, Event, Session, Settings};
use std::time::Instant;

fn run(config: &ProtoConfig, input: &[u8], step: usize) -> (Vec<u8>, u64) {
    let now = Instant::now();
    let mut out = Vec::new();
    let mut session = Session::new(Settings::new(config.clone()), ringmx::proto::Client { relay: true, tls: false }, now, &mut out);
    let mut pending = Vec::new();
    // Content of committed messages only: how much of a refused message was handed out
    // before its flaw showed depends on the split, and it is discarded anyway.
    let (mut body_bytes, mut current) = (0u64, 0u64);
    for chunk in input.chunks(step.max(1)) {
        pending.extend_from_slice(chunk);
        loop {
            let progress = session.handle_input(now, &pending, &mut out);
            let n = progress.consumed;
            if session.stats().should_fold() {
                session.take_stats();
            }
            current += progress.body.octets() as u64;
            pending.drain(..n);
            let mut evented = false;
            while let Some(event) = session.poll_event() {
                evented = true;
                match event {
                    Event::MessageEnd => {
                        body_bytes += std::mem::take(&mut current);
                        session.handle_commit(now, Commit::Queued("F"), &mut out);
                    }
                    Event::MessageStart | Event::MessageAbort => current = 0,
                    Event::StartTls => {
                        pending.clear();
                        session.handle_tls_established(now, &mut out);
                    }
                    Event::Close(_) => {}
                }
            }
            if n == 0 && !evented {
                break;
            }
        }
        assert!(pending.len() <= input.len());
    }
    (out, body_bytes)
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the split size and the config, the rest is the client's bytes.
    let Some((&knob, input)) = data.split_first() else { return };
    let mut config = ProtoConfig::default();
    config.limits.max_message_size = 2048;
    if knob & 0x80 != 0 {
        config.bare_lf = ringmx::config::BareLf::Reject;
    }
    let whole = run(&config, input, input.len());
    let split = run(&config, input, usize::from(knob & 0x7f) + 1);
    assert_eq!(whole, split, "a split changed the answer");
    for line in whole.0.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.ends_with(b"\r") && line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit));
    }
});
