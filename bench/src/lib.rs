//! Builds the byte streams the benchmarks feed to ringmx and its peers, so every peer parses identical input.

use ringmx_loadgen::dot_stuff;

/// A message body of about `size` octets: header lines, then text lines of up to 76 octets,
/// one in eight of them starting with a dot (so they are dot-stuffed on the wire).
/// Returns the wire form, ending with the `.` line that ends the data.
pub fn data_stream(size: usize) -> Vec<u8> {
    body_stream(size, true)
}

/// The same body without any line that starts with a dot, as most real mail is.
pub fn plain_data_stream(size: usize) -> Vec<u8> {
    body_stream(size, false)
}

fn body_stream(size: usize, dotted: bool) -> Vec<u8> {
    let mut raw = Vec::with_capacity(size + 128);
    raw.extend_from_slice(
        b"From: <sender@example.org>\r\nTo: <rcpt@example.net>\r\nSubject: benchmark\r\n\r\n",
    );
    let words = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "elit",
    ];
    let mut line = 0usize;
    // `size` is the size on the wire: each dotted line gets one more dot there.
    let mut stuffing = 0usize;
    while raw.len() + stuffing < size {
        if dotted && line % 8 == 7 {
            raw.push(b'.');
            stuffing += 1;
        }
        let mut len = 0;
        let mut w = line;
        while len < 70 {
            let word = words[w % words.len()];
            raw.extend_from_slice(word.as_bytes());
            raw.push(b' ');
            len += word.len() + 1;
            w = w.wrapping_mul(31).wrapping_add(7);
        }
        raw.extend_from_slice(b"\r\n");
        line += 1;
    }
    dot_stuff(&raw)
}

/// `sessions` pipelined SMTP sessions: EHLO, MAIL, RCPT×3, DATA, a 1 KiB body, QUIT. About 5%
/// of the command lines are extra typo'd or overlong lines, which a server answers with 500
/// before the session goes on.
pub fn command_stream(sessions: usize) -> Vec<u8> {
    let body = data_stream(1024);
    let mut out = Vec::new();
    let mut lines = 0usize;
    let bad = |out: &mut Vec<u8>, lines: &mut usize| {
        *lines += 1;
        // One extra bad line every 20 lines: alternately a typo and a 600-octet line.
        if lines.is_multiple_of(20) {
            if lines.is_multiple_of(40) {
                out.extend_from_slice(b"NOOP ");
                out.extend(std::iter::repeat_n(b'x', 600));
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(b"MIAL FROM:<typo@example.org>\r\n");
            }
        }
    };
    for i in 0..sessions {
        out.extend_from_slice(b"EHLO client.example.org\r\n");
        bad(&mut out, &mut lines);
        out.extend_from_slice(format!("MAIL FROM:<sender{i}@example.org> SIZE=1100\r\n").as_bytes());
        bad(&mut out, &mut lines);
        for r in 0..3 {
            out.extend_from_slice(format!("RCPT TO:<rcpt{r}.{i}@example.net>\r\n").as_bytes());
            bad(&mut out, &mut lines);
        }
        out.extend_from_slice(b"DATA\r\n");
        out.extend_from_slice(&body);
        out.extend_from_slice(b"QUIT\r\n");
    }
    out
}
