//! Golden transcripts against the sans-IO session: each `NAME.in` must produce exactly `NAME.ref`.

mod support;
use support::{drive, show, transcripts};

fn check(split: &str, chunk: usize) {
    let mut failures = Vec::new();
    for t in transcripts() {
        let outcome = drive(&t.config, t.input.chunks(chunk));
        if outcome.output != t.expected {
            failures.push(format!(
                "{} ({split}):\n--- expected\n{}\n--- got\n{}",
                t.name,
                show(&t.expected),
                show(&outcome.output)
            ));
            continue;
        }
        if let Some(msg) = &t.messages {
            if &outcome.joined_messages() != msg {
                failures.push(format!(
                    "{} ({split}) stored message:\n--- expected\n{}\n--- got\n{}",
                    t.name,
                    show(msg),
                    show(&outcome.joined_messages())
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} transcript(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn transcripts_all_at_once() {
    check("all at once", usize::MAX);
}

#[test]
fn transcripts_byte_at_a_time() {
    check("byte at a time", 1);
}

#[test]
fn nonsmtp_sessions_close_and_smtp_sessions_with_quit_close() {
    for t in transcripts() {
        let outcome = drive(&t.config, [&t.input[..]]);
        let ends_with_quit_or_error = t.expected.ends_with(b"221 2.0.0 Bye\r\n")
            || t.expected.windows(4).any(|w| w == b"554 ")
            || t.expected.windows(4).any(|w| w == b"421 ");
        assert_eq!(outcome.closed, ends_with_quit_or_error, "{}", t.name);
    }
}

#[test]
fn error_replies_are_counted() {
    let all = transcripts();
    let count = |name: &str| {
        let t = all.iter().find(|t| t.name == name).unwrap();
        drive(&t.config, [&t.input[..]]).errors
    };
    assert_eq!(count("too_many_errors"), 20, "the 20 unrecognized commands");
    assert_eq!(count("typo_then_corrected"), 4, "HLEO, MIAL, RCTP, DTAA");
    assert_eq!(count("basic_data"), 0);
}
