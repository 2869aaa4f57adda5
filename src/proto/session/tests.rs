use super::*;
use crate::config::ProtoConfig;
use crate::proto::reply::write_rcpt_refusal;
use crate::proto::MailParams;
use proptest::prelude::*;

/// A client in `relay_networks`, as the tests' loopback clients are.
const RELAY: Client = Client {
    relay: true,
    tls: false,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever arrives, in whatever pieces, the session's own buffers stay within their
    /// limits and its reply backlog stops growing once it reaches `max_reply_backlog`.
    #[test]
    fn buffers_stay_bounded(
        chunks in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..700),
                proptest::collection::vec(proptest::sample::select(b"EHLO x\r\nMAIL FROM:<a@b>RCPT TO:<c@d>DATA.BDAT 9 LAST\n".to_vec()), 0..300),
            ],
            0..30,
        ),
        drain_output in any::<bool>(),
    ) {
        let config = ProtoConfig::default();
        let limits = config.limits.clone();
        let now = Instant::now();
        let mut out = Vec::new();
        let mut s = Session::new(Settings::new(config), RELAY, now, &mut out);
        for chunk in &chunks {
            let mut rest = &chunk[..];
            for _ in 0..10_000 {
                let progress = s.handle_input(now, rest, &mut out);
                let n = progress.consumed;
                prop_assert!(progress.body.octets() <= n || progress.body.octets() <= 3);
                rest = &rest[n..];
                prop_assert!(s.line.len() <= limits.max_command_line);
                prop_assert!(s.line.capacity() <= limits.max_command_line);
                prop_assert!(out.len() <= limits.max_reply_backlog + 512);
                let mut ended = false;
                while let Some(event) = s.poll_event() {
                    ended |= event == Event::MessageEnd;
                }
                if ended {
                    s.handle_commit(now, Commit::Queued("X"), &mut out);
                }
                if drain_output {
                    out.clear();
                }
                if rest.is_empty() || (n == 0 && !ended) {
                    break;
                }
            }
        }
    }
}

#[test]
fn envelope_describes_the_message() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut s = Session::new(Settings::new(ProtoConfig::default()), RELAY, t0, &mut out);
    let input = b"EHLO client.example\r\nMAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME\r\n\
        RCPT TO:<c@d.example>\r\nRCPT TO:<e@f.example>\r\nDATA\r\n";
    assert_eq!(s.handle_input(t0, input, &mut out).consumed, input.len());
    assert_eq!(s.poll_event(), Some(Event::MessageStart));
    let env = s.envelope();
    assert_eq!(env.helo(), b"client.example");
    assert!(env.esmtp());
    assert_eq!(env.mail_from(), b"a@b.example");
    assert_eq!(env.mail_params(), b"SIZE=10 BODY=8BITMIME");
    assert_eq!(
        env.params(),
        MailParams {
            size: Some(10),
            eight_bit_mime: true,
            smtputf8: false
        }
    );
    let rcpts: Vec<&[u8]> = env.recipients().collect();
    assert_eq!(rcpts, [&b"c@d.example"[..], b"e@f.example"]);
    assert_eq!(s.handle_input(t0, b".\r\nMAIL FROM:<>\r\n", &mut out).consumed, 3);
    assert_eq!(s.poll_event(), Some(Event::MessageEnd));
    s.handle_commit(t0, Commit::Queued("Q"), &mut out);
    assert_eq!(s.handle_input(t0, b"MAIL FROM:<>\r\n", &mut out).consumed, 14);
    assert_eq!(
        s.envelope().helo(),
        b"client.example",
        "the HELO name outlives transactions"
    );
    assert_eq!(s.envelope().mail_from(), b"");
    assert_eq!(s.envelope().recipients().count(), 0);
}

#[test]
fn timeouts_follow_the_state() {
    let mut config = ProtoConfig::default();
    config.limits.min_data_rate = 0;
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut s = Session::new(Settings::new(config), RELAY, t0, &mut out);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(300)));
    let t1 = t0 + Duration::from_secs(10);
    let input = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n";
    assert_eq!(s.handle_input(t1, input, &mut out).consumed, input.len());
    assert_eq!(s.poll_event(), Some(Event::MessageStart));
    assert_eq!(
        s.poll_timeout(),
        Some(t1 + Duration::from_secs(180)),
        "RFC 5321 §4.5.3.2.6"
    );
    s.handle_timeout(t1 + Duration::from_secs(179), &mut out);
    assert_eq!(s.poll_event(), None);
    out.clear();
    s.handle_timeout(t1 + Duration::from_secs(180), &mut out);
    assert_eq!(out, b"421 4.4.2 Error: timeout exceeded\r\n");
    assert_eq!(s.poll_event(), Some(Event::MessageAbort));
    assert_eq!(s.poll_event(), Some(Event::Close(CloseReason::Timeout)));
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn commit_wait_times_out_with_451() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut s = Session::new(Settings::new(ProtoConfig::default()), RELAY, t0, &mut out);
    let input = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 2 LAST\r\nhiNOOP\r\n";
    let n = s.handle_input(t0, input, &mut out).consumed;
    assert_eq!(&input[n..], b"hiNOOP\r\n", "the session stops at the start event");
    assert_eq!(s.poll_event(), Some(Event::MessageStart));
    let progress = s.handle_input(t0, &input[n..], &mut out);
    assert_eq!(
        (progress.consumed, progress.body.pieces()),
        (2, &[&b"hi"[..]][..])
    );
    assert_eq!(s.poll_event(), Some(Event::MessageEnd));
    let waiting = s.handle_input(t0, &input[n + 2..], &mut out);
    assert_eq!(waiting.consumed, 0, "input after the end waits for the commit");
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(600)));
    out.clear();
    s.handle_timeout(t0 + Duration::from_secs(600), &mut out);
    assert_eq!(out, b"451 4.3.0 Error: storage did not answer in time\r\n");
    assert_eq!(s.poll_event(), Some(Event::MessageAbort));
    assert_eq!(s.poll_event(), Some(Event::Close(CloseReason::CommitTimeout)));
}

#[test]
fn shutdown_waits_for_the_transaction() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut idle = Session::new(Settings::new(ProtoConfig::default()), RELAY, t0, &mut out);
    out.clear();
    idle.handle_shutdown(&mut out);
    assert_eq!(out, b"421 4.3.2 Service shutting down\r\n");
    assert_eq!(idle.poll_event(), Some(Event::Close(CloseReason::Shutdown)));

    let mut busy = Session::new(Settings::new(ProtoConfig::default()), RELAY, t0, &mut out);
    let input = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n";
    assert_eq!(busy.handle_input(t0, input, &mut out).consumed, input.len());
    assert_eq!(busy.poll_event(), Some(Event::MessageStart));
    out.clear();
    busy.handle_shutdown(&mut out);
    assert!(out.is_empty());
    let progress = busy.handle_input(t0, b"x\r\n.\r\n", &mut out);
    // The content and the end of data in one call: the content comes first.
    assert_eq!(
        (progress.consumed, progress.body.pieces()),
        (6, &[&b"x\r\n"[..]][..])
    );
    assert_eq!(busy.poll_event(), Some(Event::MessageEnd));
    busy.handle_commit(t0, Commit::Queued("ID1"), &mut out);
    assert_eq!(
        out,
        b"250 2.0.0 Ok: queued as ID1\r\n421 4.3.2 Service shutting down\r\n"
    );
    assert_eq!(busy.poll_event(), Some(Event::Close(CloseReason::Shutdown)));
    assert_eq!(busy.stats().messages, 1);

    // Inside a refused BDAT chunk: the chunk is read, answered, then the session ends.
    let mut chunk = Session::new(Settings::new(ProtoConfig::default()), RELAY, t0, &mut out);
    let input = b"EHLO x\r\nBDAT 4\r\nab";
    assert_eq!(chunk.handle_input(t0, input, &mut out).consumed, input.len());
    out.clear();
    chunk.handle_shutdown(&mut out);
    assert!(out.is_empty());
    assert_eq!(chunk.handle_input(t0, b"cdNOOP\r\n", &mut out).consumed, 2);
    assert_eq!(
        out,
        b"503 5.5.1 Error: need MAIL command\r\n421 4.3.2 Service shutting down\r\n"
    );
    assert_eq!(chunk.poll_event(), Some(Event::Close(CloseReason::Shutdown)));
}

fn tls_settings(required: bool) -> Arc<Settings> {
    Settings::new(ProtoConfig {
        starttls: true,
        tls_required: required,
        ..ProtoConfig::default()
    })
}

#[test]
fn starttls_stops_at_its_line_and_starts_over_after_the_handshake() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut s = Session::new(tls_settings(false), RELAY, t0, &mut out);
    out.clear();
    let input = b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<a@b.example>\r\n";
    let n = s.handle_input(t0, input, &mut out).consumed;
    assert_eq!(
        &input[n..],
        b"MAIL FROM:<a@b.example>\r\n",
        "nothing after STARTTLS is taken"
    );
    let text = String::from_utf8(std::mem::take(&mut out)).unwrap();
    assert!(text.contains("250-STARTTLS\r\n"), "{text}");
    assert!(text.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{text}");
    assert_eq!(s.poll_event(), Some(Event::StartTls));
    assert_eq!(
        s.handle_input(t0, b"NOOP\r\n", &mut out).consumed,
        0,
        "waits for TLS"
    );
    s.handle_tls_established(t0, &mut out);
    assert!(out.is_empty(), "no second greeting after STARTTLS");
    assert!(s.is_tls());
    s.handle_input(t0, b"MAIL FROM:<a@b.example>\r\nEHLO x\r\nSTARTTLS\r\n", &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("503 5.5.1 Error: send HELO/EHLO first\r\n"),
        "{text}"
    );
    assert!(!text.contains("STARTTLS"), "{text}");
    assert!(
        text.ends_with("554 5.5.1 Error: TLS already active\r\n"),
        "{text}"
    );
}

#[test]
fn an_implicit_tls_session_greets_once_established() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut s = Session::pending(tls_settings(true), t0);
    assert_eq!(s.handle_input(t0, b"EHLO x\r\n", &mut out).consumed, 0);
    assert!(out.is_empty(), "nothing before the start");
    s.handle_start(
        t0,
        Client {
            relay: true,
            tls: true,
        },
        &mut out,
    );
    assert!(s.is_tls());
    assert_eq!(out, b"220 localhost ESMTP ringmx\r\n");
    out.clear();
    let input = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n";
    assert_eq!(s.handle_input(t0, input, &mut out).consumed, input.len());
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("STARTTLS"), "{text}");
    assert!(text.ends_with("250 2.1.0 Ok\r\n"), "tls_required is met: {text}");
}

#[test]
fn tls_required_refuses_the_transaction_before_tls() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut s = Session::new(tls_settings(true), RELAY, t0, &mut out);
    out.clear();
    let input =
        b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nBDAT 1 LAST\r\nxNOOP\r\n";
    assert_eq!(s.handle_input(t0, input, &mut out).consumed, input.len());
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text.matches("530 5.7.0 Must issue a STARTTLS command first\r\n")
            .count(),
        4,
        "{text}"
    );
    assert!(text.ends_with("250 2.0.0 Ok\r\n"), "{text}");
}

/// Feeds everything, answering commits, and returns what the session said.
fn talk(s: &mut Session, now: Instant, input: &[u8]) -> String {
    talk_until_close(s, now, input).0
}

/// As [`talk`], with the reason the session closed for, if it did.
fn talk_until_close(s: &mut Session, now: Instant, mut input: &[u8]) -> (String, Option<CloseReason>) {
    let (mut out, mut closed) = (Vec::new(), None);
    loop {
        let n = s.handle_input(now, input, &mut out).consumed;
        input = &input[n..];
        let mut evented = false;
        while let Some(event) = s.poll_event() {
            evented = true;
            match event {
                Event::MessageEnd => s.handle_commit(now, Commit::Queued("Q"), &mut out),
                Event::Close(reason) => closed = Some(reason),
                _ => {}
            }
        }
        if input.is_empty() || (n == 0 && !evented) {
            return (String::from_utf8(out).unwrap(), closed);
        }
    }
}

fn session_with(limits: impl FnOnce(&mut ProtoConfig), client: Client, t0: Instant) -> Session {
    let mut config = ProtoConfig::default();
    limits(&mut config);
    let mut out = Vec::new();
    Session::new(Settings::new(config), client, t0, &mut out)
}

#[test]
fn a_command_line_has_one_deadline_whatever_its_bytes() {
    let t0 = Instant::now();
    let mut s = session_with(|_| {}, RELAY, t0);
    let deadline = t0 + Duration::from_secs(300);
    for (i, byte) in b"NOOP\r".iter().enumerate() {
        talk(&mut s, t0 + Duration::from_secs(60 * i as u64), &[*byte]);
        assert_eq!(s.poll_timeout(), Some(deadline), "a byte moved the deadline");
    }
    let t1 = t0 + Duration::from_secs(299);
    assert_eq!(talk(&mut s, t1, b"\n"), "250 2.0.0 Ok\r\n");
    assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(300)));
}

#[test]
fn slow_data_and_long_sessions_are_cut_off() {
    let t0 = Instant::now();
    let mut s = session_with(|_| {}, RELAY, t0);
    talk(
        &mut s,
        t0,
        b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
    );
    // 1 KiB/s after 30 s: 40 KiB by t0 + 40 s keeps it going until then.
    talk(&mut s, t0 + Duration::from_secs(10), &[b'x'; 40 * 1024]);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(40)));
    let mut out = Vec::new();
    s.handle_timeout(t0 + Duration::from_secs(39), &mut out);
    assert!(out.is_empty());
    s.handle_timeout(t0 + Duration::from_secs(40), &mut out);
    assert_eq!(out, b"421 4.4.2 Error: data arriving too slowly\r\n");
    while let Some(event) = s.poll_event() {
        assert!(
            matches!(
                event,
                Event::MessageStart | Event::MessageAbort | Event::Close(CloseReason::SlowData)
            ),
            "{event:?}"
        );
    }

    let mut s = session_with(|c| c.limits.max_session_secs = 60, RELAY, t0);
    for i in 1..=5 {
        talk(&mut s, t0 + Duration::from_secs(10 * i), b"NOOP\r\n");
    }
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    let mut out = Vec::new();
    s.handle_timeout(t0 + Duration::from_secs(60), &mut out);
    assert_eq!(out, b"421 4.4.2 Error: session lasted too long\r\n");
    assert_eq!(s.poll_event(), Some(Event::Close(CloseReason::SessionTooLong)));
}

#[test]
fn a_pregreeting_client_is_refused() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let settings = Settings::new(ProtoConfig {
        limits: crate::config::ProtoLimits {
            greet_delay_ms: 2000,
            ..Default::default()
        },
        ..ProtoConfig::default()
    });
    let mut patient = Session::new(settings.clone(), RELAY, t0, &mut out);
    assert_eq!(out, b"220-localhost ESMTP ringmx\r\n");
    assert_eq!(patient.poll_timeout(), Some(t0 + Duration::from_millis(2000)));
    out.clear();
    patient.handle_timeout(t0 + Duration::from_millis(2000), &mut out);
    assert_eq!(out, b"220 localhost ESMTP ringmx\r\n");
    assert_eq!(
        talk(&mut patient, t0 + Duration::from_secs(3), b"NOOP\r\n"),
        "250 2.0.0 Ok\r\n"
    );

    let mut eager = Session::new(settings, RELAY, t0, &mut out);
    let said = talk_until_close(&mut eager, t0, b"EHLO spam.example\r\n");
    let refused = "554 5.5.1 Error: protocol error\r\n";
    assert_eq!(said, (refused.to_string(), Some(CloseReason::Pregreet)));
    assert_eq!(eager.stats().replies[Reply::Greeting as usize], 0);
}

#[test]
fn recipients_over_the_limit_are_refused_without_losing_the_transaction() {
    let t0 = Instant::now();
    let mut s = session_with(|_| {}, RELAY, t0);
    let mut input = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n".to_vec();
    for i in 0..150 {
        input.extend_from_slice(format!("RCPT TO:<r{i}@d.example>\r\n").as_bytes());
    }
    input.extend_from_slice(b"DATA\r\nhi\r\n.\r\n");
    let said = talk(&mut s, t0, &input);
    assert_eq!(said.matches("250 2.1.5 Ok\r\n").count(), 100);
    assert_eq!(
        said.matches("452 4.5.3 Error: too many recipients\r\n").count(),
        50
    );
    assert!(
        said.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as Q\r\n"),
        "{said}"
    );
    assert_eq!(
        s.stats().errors,
        0,
        "the excess is not an error (RFC 5321 §4.5.3.1.10)"
    );
}

#[test]
fn an_oversized_bdat_is_refused_at_once_and_a_huge_one_hangs_up() {
    let t0 = Instant::now();
    let mut s = session_with(|c| c.limits.max_message_size = 1024, RELAY, t0);
    let said = talk(
        &mut s,
        t0,
        b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 2000 LAST\r\n",
    );
    assert!(
        said.ends_with("552 5.3.4 Error: message too big\r\n"),
        "said before the chunk: {said}"
    );
    assert_eq!(
        talk(&mut s, t0, &[b'z'; 2000]),
        "",
        "the chunk is read and dropped"
    );
    assert_eq!(talk(&mut s, t0, b"NOOP\r\n"), "250 2.0.0 Ok\r\n");
    let (said, closed) = talk_until_close(
        &mut s,
        t0,
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 99999999999 LAST\r\nNOOP\r\n",
    );
    assert!(said.ends_with("552 5.3.4 Error: message too big\r\n"), "{said}");
    assert_eq!(closed, Some(CloseReason::ChunkTooBig));
}

#[test]
fn refused_recipients_are_tarpitted_past_the_limit() {
    let t0 = Instant::now();
    let outsider = Client {
        relay: false,
        tls: false,
    };
    let mut s = session_with(|_| {}, outsider, t0);
    let mut input = b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n".to_vec();
    for i in 0..7 {
        input.extend_from_slice(format!("RCPT TO:<u{i}@elsewhere.example>\r\n").as_bytes());
    }
    input.extend_from_slice(b"NOOP\r\n");
    let said = talk(&mut s, t0, &input);
    // Five answered at once; the sixth is held, and nothing behind it is read.
    assert_eq!(said.matches(">: Relay access denied\r\n").count(), 5, "{said}");
    assert!(
        said.contains("554 5.7.1 <u0@elsewhere.example>: Relay access denied\r\n"),
        "{said}"
    );
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    let rest = b"RCPT TO:<u6@elsewhere.example>\r\nNOOP\r\n";
    assert_eq!(s.handle_input(t0, rest, &mut Vec::new()).consumed, 0, "waits");
    let mut out = Vec::new();
    s.handle_timeout(t0 + Duration::from_secs(5), &mut out);
    assert_eq!(out, b"554 5.7.1 <u5@elsewhere.example>: Relay access denied\r\n");
    let t1 = t0 + Duration::from_secs(5);
    assert_eq!(talk(&mut s, t1, rest), "", "the seventh is held in turn");
    let mut out = Vec::new();
    s.handle_timeout(t1 + Duration::from_secs(5), &mut out);
    assert_eq!(out, b"554 5.7.1 <u6@elsewhere.example>: Relay access denied\r\n");
    assert_eq!(
        talk(&mut s, t1 + Duration::from_secs(5), b"NOOP\r\n"),
        "250 2.0.0 Ok\r\n"
    );
}

#[test]
fn a_refused_address_is_echoed_escaped() {
    let mut out = Vec::new();
    write_rcpt_refusal(&mut out, Reply::UnknownUser, b"a\xc3\xa9\r@x");
    assert_eq!(
        out,
        b"550 5.1.1 <a\\xC3\\xA9\\x0D@x>: Recipient address rejected: User unknown\r\n"
    );
}

#[test]
fn counters_are_folded_before_they_could_wrap() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut s = Session::new(Settings::new(ProtoConfig::default()), RELAY, t0, &mut out);
    let input = b"NOOP\r\n".repeat(3 * usize::from(SessionStats::FOLD_AT));
    let (mut pos, mut noops) = (0, 0u64);
    while pos < input.len() {
        let n = s.handle_input(t0, &input[pos..], &mut out).consumed;
        out.clear();
        if n == 0 {
            assert!(s.stats().should_fold(), "stopped at {pos} for no reason");
            noops += u64::from(s.take_stats().replies[Reply::Ok as usize]);
        }
        assert!(s.stats().commands <= SessionStats::FOLD_AT);
        pos += n;
    }
    noops += u64::from(s.stats().replies[Reply::Ok as usize]);
    assert_eq!(
        noops,
        3 * u64::from(SessionStats::FOLD_AT),
        "every NOOP counted once"
    );
}
