//! Dot-stuffing: turns a message into the octets a client sends after DATA.

/// RFC 5321 4.5.2: double a leading '.' on every line, then end the data with `.` CRLF,
/// adding the CRLF that ends the last line if `raw` lacks it.
pub fn dot_stuff(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 64 + 5);
    let mut at_line_start = true;
    for &b in raw {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_dots_doubled_and_data_ended() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n"), b"..a\r\nb\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\r\n.\r\n..b\r\n"), b"a\r\n..\r\n...b\r\n.\r\n");
        assert_eq!(dot_stuff(b"no line end"), b"no line end\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        // Only a dot at the start of a line is stuffed.
        assert_eq!(dot_stuff(b"a.b\r\n"), b"a.b\r\n.\r\n");
    }
}
