//! One transaction over an open connection: MAIL, the RCPTs and the message (BDAT when offered, else DATA with dot-stuffing), pipelined when the next hop allows it, and the outcome for each recipient.
//!
//! RFC 5321 §3.3 and RFC 2920: with PIPELINING, MAIL, every RCPT and DATA (or the first BDAT
//! chunk, RFC 3030 §4.2) leave in one write and their replies are read in order. LMTP (RFC
//! 2033 §4.2) answers the end of data once per accepted recipient, SMTP once for all.

use super::client::{Conn, Failure};
use super::reply::Reply;
use super::route::Protocol;
use std::io::{self, Read};

/// What the next hop must know of a message to take it.
pub struct Message<'a> {
    pub from: &'a [u8],
    /// Octets that will be sent (trace header included): passed as `SIZE=` (RFC 1870).
    pub size: u64,
    /// `BODY=8BITMIME` was given by the client (RFC 6152).
    pub eight_bit: bool,
    /// `SMTPUTF8` was given by the client (RFC 6531).
    pub smtputf8: bool,
}

/// Octets of one BDAT chunk: large enough that a typical message is one chunk, sent with
/// MAIL and RCPT in one write.
const CHUNK: usize = 256 * 1024;

/// Delivers `body` to `rcpts` over `conn`. Returns each recipient's final reply (2xx
/// delivered, 4xx deferred, 5xx failed), or a failure of the connection itself, after which
/// it must be dropped and the whole transaction deferred.
pub fn send(
    conn: &mut Conn,
    msg: &Message<'_>,
    rcpts: &[&[u8]],
    body: &mut dyn Read,
) -> Result<Vec<Reply>, Failure> {
    if let Some(refusal) = unsupported(conn, msg) {
        return Ok(vec![refusal; rcpts.len()]);
    }
    let pipelining = conn.caps.pipelining;
    let chunking = conn.caps.chunking;
    conn.push_bytes(b"MAIL FROM:<");
    conn.push_bytes(msg.from);
    conn.push_bytes(b">");
    if conn.caps.size.is_some() {
        conn.push(format_args!(" SIZE={}", msg.size));
    }
    if msg.eight_bit {
        conn.push_bytes(b" BODY=8BITMIME");
    }
    if msg.smtputf8 {
        conn.push_bytes(b" SMTPUTF8");
    }
    conn.push_bytes(b"\r\n");
    if !pipelining {
        let mail = conn.command(b"")?;
        if !mail.is_positive() {
            reset(conn)?;
            return Ok(vec![mail; rcpts.len()]);
        }
        return send_rest(conn, Some(mail), rcpts, body, false, chunking);
    }
    send_rest(conn, None, rcpts, body, true, chunking)
}

/// What the next hop lacks for this message, as the recipients' reply.
fn unsupported(conn: &Conn, msg: &Message<'_>) -> Option<Reply> {
    let caps = conn.caps;
    if msg.smtputf8 && !caps.smtputf8 {
        // RFC 6531 §3.2: not sent without the extension; returned to the sender.
        return Some(Reply::local(
            550,
            "5.6.7 the next hop does not support SMTPUTF8 (RFC 6531)",
        ));
    }
    if msg.eight_bit && !caps.eightbitmime {
        // RFC 6152 §3: returned rather than sent as 8-bit to a server that did not offer it
        // (converting to 7 bit would change what was stored).
        return Some(Reply::local(
            554,
            "5.6.3 the next hop does not support 8BITMIME (RFC 6152)",
        ));
    }
    if let Some(max) = caps.size.filter(|&n| n > 0 && msg.size > n) {
        return Some(Reply::local(
            552,
            format!(
                "5.3.4 message of {} octets exceeds the next hop's SIZE {max}",
                msg.size
            ),
        ));
    }
    None
}

/// The RCPTs, then the data, then the final replies. With pipelining, `mail` is `None` and
/// its reply is still to be read.
fn send_rest(
    conn: &mut Conn,
    mut mail: Option<Reply>,
    rcpts: &[&[u8]],
    body: &mut dyn Read,
    pipelining: bool,
    chunking: bool,
) -> Result<Vec<Reply>, Failure> {
    let mut replies: Vec<Option<Reply>> = vec![None; rcpts.len()];
    for (i, rcpt) in rcpts.iter().enumerate() {
        conn.push_bytes(b"RCPT TO:<");
        conn.push_bytes(rcpt);
        conn.push_bytes(b">\r\n");
        if !pipelining {
            replies[i] = Some(conn.command(b"")?);
        }
    }
    // The first chunk goes with the commands: most messages are one `BDAT n LAST`.
    let mut chunk = Vec::new();
    let mut last = false;
    if chunking {
        last = fill(body, &mut chunk)?;
        if pipelining {
            push_chunk(conn, &chunk, last);
        }
    } else if pipelining {
        conn.push_bytes(b"DATA\r\n");
    }
    conn.flush()?;
    if mail.is_none() {
        mail = Some(conn.reply()?);
    }
    for r in replies.iter_mut().filter(|r| r.is_none()) {
        *r = Some(conn.reply()?);
    }
    let mail = mail.unwrap_or_else(|| Reply::local(451, "4.3.0 no reply to MAIL"));
    let mut replies: Vec<Reply> = replies.into_iter().flatten().collect();
    if !mail.is_positive() {
        replies.iter_mut().for_each(|r| *r = mail.clone());
    }
    let accepted: Vec<usize> = (0..replies.len()).filter(|&i| replies[i].is_positive()).collect();
    let final_replies = if chunking {
        bdat(conn, body, chunk, last, pipelining, accepted.len())?
    } else {
        data(conn, body, pipelining, accepted.len())?
    };
    let clean = match final_replies {
        Some(finals) => {
            // SMTP: one reply for everyone accepted; LMTP: one each, in RCPT order.
            for (n, &i) in accepted.iter().enumerate() {
                replies[i] = finals
                    .get(n)
                    .or(finals.first())
                    .cloned()
                    .unwrap_or_else(|| Reply::local(451, "4.3.0 no reply to the end of data"));
            }
            !accepted.is_empty() && finals.iter().all(Reply::is_positive)
        }
        None => false,
    };
    // Only after a refusal: a transaction that went through leaves nothing to reset.
    if !clean {
        reset(conn)?;
    }
    Ok(replies)
}

/// How many replies the end of data gets.
fn finals(conn: &Conn, accepted: usize) -> usize {
    match conn.protocol {
        Protocol::Smtp => 1,
        Protocol::Lmtp => accepted.max(1),
    }
}

/// DATA, then the message dot-stuffed, then the final reply or replies (a refused DATA is
/// every accepted recipient's reply); `None` if there was nobody to send to.
fn data(
    conn: &mut Conn,
    body: &mut dyn Read,
    pipelining: bool,
    accepted: usize,
) -> Result<Option<Vec<Reply>>, Failure> {
    let go = if pipelining {
        conn.reply()?
    } else if accepted > 0 {
        conn.command(b"DATA\r\n")?
    } else {
        return Ok(None);
    };
    if go.code != 354 {
        return Ok((accepted > 0).then(|| vec![go; accepted]));
    }
    if accepted == 0 {
        // RFC 2920 §3.1: a server that said 354 with no recipient gets an empty message.
        conn.push_bytes(b".\r\n");
        conn.flush()?;
        conn.reply()?;
        return Ok(None);
    }
    let mut stuffer = Stuffer::default();
    let (mut buf, mut out) = std::mem::take(&mut conn.scratch);
    buf.resize(64 * 1024, 0);
    let sent = stream_stuffed(conn, body, &mut stuffer, &mut buf, &mut out);
    conn.scratch = (buf, out);
    sent?;
    let mut replies = Vec::new();
    for _ in 0..finals(conn, accepted) {
        replies.push(conn.final_reply()?);
    }
    Ok(Some(replies))
}

/// The message through `stuffer` onto the connection, then the end of data.
fn stream_stuffed(
    conn: &mut Conn,
    body: &mut dyn Read,
    stuffer: &mut Stuffer,
    buf: &mut [u8],
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    loop {
        let n = read_some(body, buf)?;
        if n == 0 {
            break;
        }
        out.clear();
        stuffer.stuff(&buf[..n], out);
        conn.push_bytes(out);
        if conn.queued() >= 64 * 1024 {
            conn.flush()?;
        }
    }
    out.clear();
    stuffer.finish(out);
    conn.push_bytes(out);
    conn.flush()
}

/// The message as BDAT chunks (no stuffing, RFC 3030 §2); the first may have left with the
/// commands already. Returns the final replies, as [`data`].
fn bdat(
    conn: &mut Conn,
    body: &mut dyn Read,
    mut chunk: Vec<u8>,
    mut last: bool,
    pipelining: bool,
    accepted: usize,
) -> Result<Option<Vec<Reply>>, Failure> {
    if !pipelining {
        if accepted == 0 {
            return Ok(None);
        }
        push_chunk(conn, &chunk, last);
        conn.flush()?;
    }
    loop {
        if last {
            let mut replies = vec![conn.final_reply()?];
            if replies[0].is_positive() || conn.protocol == Protocol::Lmtp {
                for _ in 1..finals(conn, accepted) {
                    replies.push(conn.final_reply()?);
                }
            }
            return Ok((accepted > 0).then_some(replies));
        }
        let reply = conn.reply()?;
        if !reply.is_positive() {
            return Ok((accepted > 0).then(|| vec![reply; accepted]));
        }
        last = fill(body, &mut chunk)?;
        push_chunk(conn, &chunk, last);
        conn.flush()?;
    }
}

fn push_chunk(conn: &mut Conn, chunk: &[u8], last: bool) {
    let tail = if last { " LAST" } else { "" };
    conn.push(format_args!("BDAT {}{tail}\r\n", chunk.len()));
    conn.push_bytes(chunk);
}

/// Fills `chunk` with up to [`CHUNK`] octets; true when the message ended.
fn fill(body: &mut dyn Read, chunk: &mut Vec<u8>) -> io::Result<bool> {
    chunk.clear();
    // Grows with what is read, so a 1 KiB message costs no 256 KiB buffer.
    body.take(CHUNK as u64).read_to_end(chunk)?;
    if chunk.len() < CHUNK {
        return Ok(true);
    }
    // Exactly full: the end is known only by reading on, so this chunk is not the last (a
    // `BDAT 0 LAST` closes the message then).
    Ok(false)
}

fn read_some(body: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match body.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// RSET after a transaction that did not go through (RFC 5321 §4.1.1.5), so the connection
/// can take the next; a refusal makes it useless.
fn reset(conn: &mut Conn) -> Result<(), Failure> {
    let reply = conn.command(b"RSET\r\n")?;
    if reply.is_positive() {
        Ok(())
    } else {
        Err(Failure::Refused(reply))
    }
}

/// Dot-stuffing (RFC 5321 §4.5.2) across chunk boundaries: every line that begins with `.`
/// gets one more, and the data ends with `CRLF.CRLF`, a CRLF first if the message lacks it.
#[derive(Debug)]
pub struct Stuffer {
    at_line_start: bool,
    /// The last two octets written, to know whether the message ended with CRLF.
    tail: [u8; 2],
}

impl Default for Stuffer {
    fn default() -> Self {
        Stuffer {
            at_line_start: true,
            tail: [0; 2],
        }
    }
}

impl Stuffer {
    pub fn stuff(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if input.is_empty() {
            return;
        }
        match input {
            [.., a, b] => self.tail = [*a, *b],
            [b] => self.tail = [self.tail[1], *b],
            [] => {}
        }
        while !input.is_empty() {
            if self.at_line_start && input[0] == b'.' {
                out.push(b'.');
            }
            match memchr::memchr(b'\n', input) {
                Some(lf) => {
                    out.extend_from_slice(&input[..=lf]);
                    input = &input[lf + 1..];
                    self.at_line_start = true;
                }
                None => {
                    out.extend_from_slice(input);
                    self.at_line_start = false;
                    input = &[];
                }
            }
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.tail != *b"\r\n" && !(self.tail == [0, 0] && self.at_line_start) {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = Stuffer::default();
        let mut out = Vec::new();
        for c in chunks {
            s.stuff(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn every_line_starting_with_a_dot_is_stuffed_across_chunks() {
        assert_eq!(stuffed(&[b".a\r\n..b\r\nc.\r\n"]), b"..a\r\n...b\r\nc.\r\n.\r\n");
        assert_eq!(
            stuffed(&[b"x\r\n", b".y\r", b"\n.", b"\r\n"]),
            b"x\r\n..y\r\n..\r\n.\r\n"
        );
        // A message without a final line end gets one, so the end of data stays on its own line.
        assert_eq!(stuffed(&[b"no end"]), b"no end\r\n.\r\n");
        assert_eq!(stuffed(&[]), b".\r\n");
        assert_eq!(stuffed(&[b"a\r", b"\n"]), b"a\r\n.\r\n");
    }
}
