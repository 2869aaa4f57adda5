//! Proves that the hot path allocates nothing: a warmed-up session per command, a recipient check per lookup; every allocation on the test's thread is counted.

use ringmx::config::ProtoConfig;
use ringmx::proto::{Commit, Event, Session, Settings};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the thread-local
// counters are const-initialized Cells, which neither allocate nor re-enter the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Feeds `input` and commits every message, as a server with an instant disk would.
fn run(session: &mut Session, input: &[u8], out: &mut Vec<u8>, messages: &mut u64) {
    let now = Instant::now();
    let mut pos = 0;
    while pos < input.len() {
        let progress = session.handle_input(now, &input[pos..], out);
        pos += progress.consumed;
        if session.stats().should_fold() {
            *messages += u64::from(session.take_stats().messages);
        }
        std::hint::black_box(progress.body);
        while let Some(event) = session.poll_event() {
            if event == Event::MessageEnd {
                session.handle_commit(now, Commit::Queued("QID"), out);
            }
        }
        out.clear();
        assert!(progress.consumed > 0 || pos == input.len(), "stuck at {pos}");
    }
}

#[test]
fn a_warm_session_allocates_nothing_per_command() {
    let transaction: &[u8] = b"MAIL FROM:<sender@example.org> SIZE=2000 BODY=8BITMIME\r\n\
        RCPT TO:<one@example.net>\r\nRCPT TO:<two@example.net>\r\nRCPT TO:<three@example.net>\r\n\
        DATA\r\nSubject: x\r\n\r\nbody line\r\n..stuffed\r\nbare\nend\r\n.\r\n\
        MAIL FROM:<>\r\nRCPT TO:<four@example.net>\r\nBDAT 5\r\nhelloBDAT 0 LAST\r\n\
        HLEO typo\r\nNOOP\r\nRSET\r\nVRFY x\r\nEXPN list\r\nRCPT TO:<nomail@example.net>\r\n";
    let mut out = Vec::with_capacity(1 << 16);
    let settings = Settings::new(ProtoConfig {
        limits: max_errors_for_test(),
        ..ProtoConfig::default()
    });
    let mut session = Session::new(
        settings,
        ringmx::proto::Client {
            relay: true,
            tls: false,
        },
        Instant::now(),
        &mut out,
    );
    let mut messages = 0;
    run(&mut session, b"EHLO client.example\r\n", &mut out, &mut messages);
    // Warm-up: the envelope buffer reaches its working size.
    run(&mut session, transaction, &mut out, &mut messages);

    // The counter sees allocations at all.
    COUNTING.with(|c| c.set(true));
    std::hint::black_box(Box::new(7u64));
    COUNTING.with(|c| c.set(false));
    assert_eq!(
        ALLOCATIONS.with(|a| a.replace(0)),
        1,
        "the counting allocator counts"
    );

    COUNTING.with(|c| c.set(true));
    for _ in 0..200 {
        run(&mut session, transaction, &mut out, &mut messages);
    }
    COUNTING.with(|c| c.set(false));

    let allocations = ALLOCATIONS.with(Cell::get);
    assert_eq!(
        messages + u64::from(session.stats().messages),
        402,
        "every message in the loop was accepted"
    );
    assert_eq!(allocations, 0, "allocations during 200 warm transactions");
}

/// Typos, EXPN and a recipient without MAIL are errors; lift the error limit so 200
/// transactions' worth of them do not end the session.
fn max_errors_for_test() -> ringmx::config::ProtoLimits {
    ringmx::config::ProtoLimits {
        max_errors: 1000,
        ..Default::default()
    }
}

#[test]
fn a_recipient_check_allocates_nothing() {
    use ringmx::policy::recipients::{Recipients, Verdict};
    let domains = vec!["example.org".to_string(), "Example.NET".to_string()];
    let table = Recipients::from_text(&domains, "alice@example.org\n@example.net\n").unwrap();
    let probes: [&[u8]; 6] = [
        b"alice@EXAMPLE.org",
        b"bob@example.org",
        b"anyone@example.net",
        b"alice@example.com",
        b"Postmaster",
        b"PostMaster@example.org",
    ];
    COUNTING.with(|c| c.set(true));
    let accepted = probes
        .iter()
        .filter(|p| table.check(p) == Verdict::Accept)
        .count();
    COUNTING.with(|c| c.set(false));
    assert_eq!(accepted, 4);
    assert_eq!(
        ALLOCATIONS.with(Cell::get),
        0,
        "allocations during recipient checks"
    );
}
