#!/usr/bin/env python3
"""Reads smtp-sink's shared dump (-D) from a FIFO and writes, per message it holds, ringmx's queue id and its recipients.

smtp-sink (Postfix's test server) appends each message it has taken to the dump only once the
final "." has arrived, just before it answers 250 (smtpstone/smtp-sink.c, mail_file_finish
then dot_response), and one message at a time (the process is single-threaded). Each one
starts with the -S string, here "\\001SOAK <incarnation>\\n" (the incarnation: how many times
the downstream was started before this one), then smtp-sink's own header lines (X-Rcpt-Args:
one per recipient) and Received, then the message as ringmx sent it, whose first field is
ringmx's Received with "(ringmx) with ESMTP id <queue id>". Only those head lines are kept:
the bodies go no further than this process, so a soak moving gigabytes writes nothing of them
to disk.

Output, one line per message: incarnation, the time it was read (time.time()), the queue id
(or "-" if the head has none), the recipients comma-separated. Runs until SIGTERM, then reads
what is left in the pipe, writes the last message and a final "#end" line.

Usage: sinkread.py FIFO OUT
"""

import fcntl
import os
import re
import select
import signal
import sys
import time

MARK = b"\x01SOAK "
# The head: smtp-sink's lines (at most ringmx's destination_recipients X-Rcpt-Args lines of
# up to 256 octets each) and the first header fields; ringmx's Received is the first field.
HEAD_MAX = 64 * 1024
ID_RE = re.compile(rb"\n\s+by \S+ \(ringmx\) with \S+ id ([0-9A-Za-z]+)")
RCPT_RE = re.compile(rb"^X-Rcpt-Args: <([^>]*)>", re.M)
F_SETPIPE_SZ = 1031


def parse_head(head):
    nl = head.find(b"\n")
    incarnation = head[len(MARK):nl].decode("ascii", "replace") if nl > 0 else "?"
    m = ID_RE.search(head)
    qid = m.group(1).decode("ascii") if m else "-"
    rcpts = [r.decode("utf-8", "replace") for r in RCPT_RE.findall(head)]
    return incarnation, qid, rcpts


class Reader:
    def __init__(self, out):
        self.out = out
        self.carry = b""  # a head not yet complete, or what could start a split marker
        self.count = 0

    def emit(self, head):
        inc, qid, rcpts = parse_head(head)
        self.out.write("%s\t%.3f\t%s\t%s\n" % (inc, time.time(), qid, ",".join(rcpts)))
        self.count += 1

    def feed(self, chunk, final=False):
        """Each octet is copied about once: the chunk joins what was carried over, the heads
        are sliced out, the bodies only searched for the next marker."""
        data = self.carry + chunk if self.carry else chunk
        pos = 0
        while True:
            i = data.find(MARK, pos)
            if i < 0:
                self.carry = data[-(len(MARK) - 1):] if len(data) >= len(MARK) else data
                return
            nxt = data.find(MARK, i + len(MARK), i + HEAD_MAX)
            if nxt < 0 and len(data) < i + HEAD_MAX and not final:
                self.carry = data[i:]  # the head may not be complete yet
                return
            self.emit(data[i: nxt if nxt >= 0 else i + HEAD_MAX])
            pos = nxt if nxt >= 0 else i + len(MARK)


def main():
    fifo, out_path = sys.argv[1], sys.argv[2]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    # Read-write, so the pipe never reads as closed between smtp-sink's appends (it opens and
    # closes the dump for each message) nor while the downstream is down.
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    with open(out_path, "w", buffering=1 << 16) as out:
        reader = Reader(out)
        last_flush = time.monotonic()
        while not stop:
            try:
                ready, _, _ = select.select([fd], [], [], 0.2)
            except InterruptedError:
                continue
            if ready:
                try:
                    chunk = os.read(fd, 1 << 20)
                except BlockingIOError:
                    chunk = b""
                if chunk:
                    reader.feed(chunk)
            if time.monotonic() - last_flush > 0.5:
                out.flush()
                last_flush = time.monotonic()
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            reader.feed(chunk)
        if reader.carry.startswith(MARK):
            reader.feed(b"", final=True)
        out.write("#end %d\n" % reader.count)


if __name__ == "__main__":
    main()
