//! Property tests: any split of any transcript answers byte-identically, and no input panics the session or makes it misbehave.

mod support;
use proptest::prelude::*;
use ringmx::config::ProtoConfig;
use support::{drive, transcripts, Transcript};

/// Cuts `input` at the given fractions of its length.
fn split<'a>(input: &'a [u8], cuts: &[f64]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|f| (f * input.len() as f64) as usize).collect();
    points.push(0);
    points.push(input.len());
    points.sort_unstable();
    points.windows(2).map(|w| &input[w[0]..w[1]]).collect()
}

fn all() -> &'static [Transcript] {
    static ALL: std::sync::OnceLock<Vec<Transcript>> = std::sync::OnceLock::new();
    ALL.get_or_init(transcripts)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn any_split_of_any_transcript_answers_the_same(
        index in 0usize..1000,
        cuts in proptest::collection::vec(0.0f64..1.0, 0..40),
    ) {
        let t = &all()[index % all().len()];
        let whole = drive(&t.config, [&t.input[..]]);
        let pieces = drive(&t.config, split(&t.input, &cuts));
        prop_assert_eq!(&pieces.output, &t.expected, "{}", t.name);
        prop_assert_eq!(pieces, whole, "{}", t.name);
    }
}

/// Pieces of SMTP and of its failure modes, so random sequences reach deep states.
const TOKENS: &[&[u8]] = &[
    b"EHLO x\r\n",
    b"HELO x\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<j\xc3\xb6@b> SMTPUTF8\r\n",
    b"RCPT TO:<c@d.example>\r\n",
    b"DATA\r\n",
    b".\r\n",
    b"..\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\x00",
    b"GET / HTTP/1.1\r\n",
    b"SSH-2.0-x\r\n",
    b"\x16\x03\x01",
    b"HLEO x\r\n",
    b"x",
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];

fn smtpish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => proptest::sample::select(TOKENS).prop_map(|t| t.to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => (0usize..3000).prop_map(|n| vec![b'y'; n]),
    ];
    proptest::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn hostile_input_never_panics_and_splits_do_not_matter(
        input in smtpish(),
        cuts in proptest::collection::vec(0.0f64..1.0, 0..20),
        reject_bare_lf in any::<bool>(),
    ) {
        let mut config = ProtoConfig::default();
        if reject_bare_lf {
            config.bare_lf = ringmx::config::BareLf::Reject;
        }
        config.limits.max_message_size = 4096;
        let whole = drive(&config, [&input[..]]);
        let pieces = drive(&config, split(&input, &cuts));
        prop_assert_eq!(&whole, &pieces);
        // Every reply is a complete CRLF-terminated line with a 3-digit code.
        for line in whole.output.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            prop_assert!(line.ends_with(b"\r"));
            prop_assert!(line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit));
        }
        for message in &whole.messages {
            prop_assert!(message.len() <= 4096);
        }
    }
}
