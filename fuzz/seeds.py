#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into OUT/TARGET/ (python3 fuzz/seeds.py OUT).

The seeds are made from the repository's own inputs (the session transcripts, the packaged
configuration) and from hand-made ones of each kind; each target's first octets are its
knobs (see the target). The committed corpus, fuzz/corpus/TARGET/, is what campaigns found
from them, minimized; CI fuzzes from both.
"""

import glob
import os
import re
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name + ".seed"), "wb") as f:
        f.write(data)


def transcripts(out):
    for path in sorted(glob.glob(os.path.join(ROOT, "tests/transcripts/*.in"))):
        name = os.path.basename(path)
        with open(path, "rb") as f:
            text = f.read()
        write(out, "session", name, b"\x07" + text)
        # tls_session's four knobs: implicit TLS 1.3; STARTTLS with the first 5 octets
        # injected after it; STARTTLS halfway through in plaintext, then TLS 1.2. Writes of
        # 8, packets of 10.
        for n, knobs in enumerate([b"\x00\x07\x09\x00", b"\x01\x07\x09\x05", b"\x82\x07\x09\x80"], 1):
            write(out, "tls_session", "%s.%d" % (name, n), knobs + text)


def data(out):
    # The knob is the split size less one.
    write(out, "data", "plain", b"\x06Subject: x\r\n\r\nbody\r\n..stuffed\r\n.\r\n")
    write(out, "data", "bare-lf", b"\x02a\nb\r\n.\n.\r\nc\r\n.\r\n")
    write(out, "data", "empty", b"\x00.\r\n")


def proxy(out):
    # The first octet is the target's cap on v2 headers (\xff: the spec's 16 + 65535).
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    seeds = {
        "v1-tcp4": b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 25\r\nEHLO x\r\n",
        "v1-tcp6": b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 40000 25\r\n",
        "v1-unknown": b"PROXY UNKNOWN\r\n",
        "v2-tcp4": sig + b"\x21\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x02\x9c\x40\x00\x19",
        "v2-tcp6-tlv": sig
        + b"\x21\x21\x00\x2c"
        + bytes.fromhex("20010db8000000000000000000000001")
        + bytes.fromhex("20010db8000000000000000000000002")
        + b"\x9c\x40\x00\x19\x04\x00\x05\x00\x00\x00\x00\x00",
        "v2-local": sig + b"\x20\x00\x00\x00",
    }
    for name, header in seeds.items():
        write(out, "proxy", name, b"\xff" + header)


def reply(out):
    # The first octet picks the bounds (line and line-count caps).
    write(out, "reply", "ehlo", b"\xff250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    write(out, "reply", "short", b"\x01550 5.1.1 no\r\n250 x\r\n")


def config(out):
    path = os.path.join(ROOT, "packaging/ringmx.toml")
    with open(path, "rb") as f:
        packaged = f.read()
    write(out, "config", "packaged", packaged)
    # Every key the packaged file shows, uncommented (the example value where there is one):
    # a file that sets every key.
    lines = {}
    for line in packaged.decode().splitlines():
        m = re.match(r"^(?:# )?([a-z_0-9]+) = (.*?)(  # example)?$", line)
        if m and (m.group(1) not in lines or m.group(3)):
            lines[m.group(1)] = "%s = %s" % (m.group(1), m.group(2))
    # The TLS keys need their files only when a start loads them: validation takes paths.
    write(out, "config", "every-key", ("\n".join(lines.values()) + "\n").encode())
    for path in sorted(glob.glob(os.path.join(ROOT, "tests/transcripts/*.toml"))):
        with open(path, "rb") as f:
            write(out, "config", os.path.basename(path), f.read())
    write(
        out,
        "config",
        "tables",
        b'listen = ["127.0.0.1:25", { address = "[::1]:26", proxy = true }]\n'
        b'proxy_trusted = ["10.0.0.0/8"]\nmin_backoff = 60\nmax_queue_lifetime = 86400\n'
        b'[routes]\n".example.org" = "lmtp:unix:/run/lmtp"\n"example.com" = "smtp:[2001:db8::1]:25"\n',
    )


def recipients(out):
    # The first octet picks the accepted domains from the target's pool (all of them: \xff).
    doc = (
        "# whole-line comment\nalice@example.org\n"
        "Bob.Smith@Example.ORG     # a trailing comment starts at a `#` after whitespace\n"
        "jörg@bücher.example       # SMTPUTF8 (RFC 6531): the file is UTF-8\n"
        "@example.net              # every user of example.net\n"
        "a#b@x.test\n\"quoted\"@[192.0.2.1]\r\n  postmaster@a-b.c0\t# note\n"
    )
    write(out, "recipients", "doc", b"\xff" + doc.encode())
    write(out, "recipients", "some-domains", b"\x05" + doc.encode())
    write(out, "recipients", "bad-line", b"\xff" + b"alice@example.org\n\nnobody\n")
    write(out, "recipients", "not-utf8", b"\xff" + b"alice@example.org\nj\xf6rg@example.org\n")
    write(out, "recipients", "long", b"\xff" + b"x" * 64 + b"@example.org\n" + b"y" * 65 + b"@x.test\n")


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def record(kind, msg, payload):
    # src/spool/log/record.rs: CRC32C of the rest, payload length, kind, three zeros, message.
    rest = struct.pack("<IB3xQ", len(payload), kind, msg) + payload
    return struct.pack("<I", crc32c(rest)) + rest


def b16(b):
    return struct.pack("<H", len(b)) + b


def envelope(msg_id, recipients, tls=False):
    # record::encode_envelope: id, helo, flags (ESMTP 1, SMTPUTF8 2, TLS 4, SNI 8), address,
    # port, MAIL FROM and its parameters, microseconds since the epoch, the recipients, TLS.
    flags = 1 | (12 if tls else 0)
    e = b16(msg_id) + b16(b"client.example") + bytes([flags])
    e += b"\x04\xc0\x00\x02\x01" if not tls else b"\x06" + bytes.fromhex("20010db8000000000000000000000001")
    e += struct.pack("<H", 40000) + b16(b"a@b.example") + b16(b"SIZE=10 BODY=8BITMIME")
    e += struct.pack("<QI", 1795919104123456, len(recipients)) + b"".join(b16(r) for r in recipients)
    if tls:
        e += b16(b"TLSv1.3") + b16(b"TLS13_AES_256_GCM_SHA384") + b16(b"mx.test")
    return e


def varint(v):
    out = b""
    while v >= 0x80:
        out += bytes([v & 0x7F | 0x80])
        v >>= 7
    return out + bytes([v])


def extents(runs):
    # record.rs: (gap since the previous run's end, length) per run of a message's records.
    out, end = b"", 0
    for start, stop in runs:
        out += varint(start - end) + varint(stop - start)
        end = stop
    return out


def interleaved(head):
    # Two messages whose records interleave, each with the extents record of its runs.
    recs = [(2, 1, envelope(b"0ABC", [b"c@d.example"])), (2, 2, envelope(b"0ABD", [b"e@f.example"]))]
    recs += [(3, 1, b"Received: x\r\n\r\none"), (3, 1, b"more"), (3, 2, b"two" * 9), (3, 1, b"last")]
    seg, runs = head, {1: [], 2: []}
    for kind, msg, payload in recs:
        r = runs[msg]
        if r and r[-1][1] == len(seg):
            r[-1] = (r[-1][0], len(seg) + 20 + len(payload))
        else:
            r.append((len(seg), len(seg) + 20 + len(payload)))
        seg += record(kind, msg, payload)
    for msg, data in ((1, 26), (2, 27)):
        seg += record(6, msg, extents(runs[msg])) + record(4, msg, struct.pack("<QQ", data, data))
    return seg


def spool_scan(out):
    # The first octet: bit 0 a done file, bit 1 the CRCs set by the target, the rest the
    # zeros appended (see the target). Record kinds: 1 segment, 2 envelope, 3 data, 4 end,
    # 5 done, 6 extents.
    head = record(1, 0, b"ringmx-log-1" + struct.pack("<Q", 7))
    body = b"Received: from x\r\n\r\nhello\r\n"
    one = record(2, 1, envelope(b"0ABC", [b"c@d.example"])) + record(3, 1, body)
    one += record(4, 1, struct.pack("<QQ", 7, len(body)))
    two = record(2, 2, envelope(b"0ABD", [b"e@f.example", b"g@h.example"], tls=True))
    segment = head + record(2, 1, envelope(b"0ABC", [b"c@d.example"]))
    segment += two + record(3, 1, body) + record(3, 2, b"x" * 40)
    segment += record(4, 1, struct.pack("<QQ", 7, len(body))) + record(4, 2, struct.pack("<QQ", 40, 40))
    write(out, "spool_scan", "segment", b"\x00" + segment + b"\x00" * 64)
    write(out, "spool_scan", "segment-sealed", b"\x02" + head + one)
    write(out, "spool_scan", "torn", b"\x00" + head + one + two[:30])
    write(out, "spool_scan", "unfinished", b"\x00" + head + two + record(3, 2, b"y" * 10))
    write(out, "spool_scan", "extents", b"\x02" + interleaved(head) + b"\x00" * 16)
    done = record(5, 1, b"") + record(5, 2, struct.pack("<II", 0, 1))
    write(out, "spool_scan", "done", b"\x01" + done + b"\x00" * 20)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: seeds.py OUT")
    out = sys.argv[1]
    for make in (transcripts, data, proxy, reply, config, recipients, spool_scan):
        make(out)


if __name__ == "__main__":
    main()
