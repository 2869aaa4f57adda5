#!/usr/bin/env python3
"""Queues N messages while ringmx's next hop is down, brings it up, and prints how fast the queue drains.

Usage: dead_destination_drain.py RINGMX_BIN N DOWN_SECS
ringmx (one worker, `log` spool in a temporary directory, `min_backoff_secs = 1`,
`max_backoff_secs = 5` as the soak) relays to a loopback port where nothing listens; Postfix's
smtp-source sends it N 512-octet messages over 10 sessions; DOWN_SECS later a pipelining sink
(asyncio, in this process, counting each end of data) starts on that port. Prints one JSON
line: the CPU seconds of the `ringmx-queue` thread while the next hop was down, the seconds
from the sink's start to the Nth message and the rate that makes, and the runner's counters
(`ringmx queue stats`). Run it under `flock /work/bench.lock` on a shared machine.
"""
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

delivered = 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def session(reader, writer):
    """One SMTP session: every command answered 250 (354 for DATA), replies flushed only when
    no further command is buffered, so a pipelined group gets one write."""
    global delivered
    writer.write(b"220 sink ESMTP\r\n")
    in_data = False
    while line := await reader.readline():
        if in_data:
            if line == b".\r\n":
                in_data = False
                delivered += 1
                writer.write(b"250 2.0.0 ok\r\n")
            continue
        verb = line[:4].upper()
        if verb == b"EHLO":
            writer.write(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        elif verb == b"DATA":
            in_data = True
            writer.write(b"354 go ahead\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            break
        else:
            writer.write(b"250 ok\r\n")
        if b"\n" not in reader._buffer:
            await writer.drain()
    await writer.drain()
    writer.close()


def thread_cpu(pid, name):
    """User + system seconds of the process's threads called `name`."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def main():
    binary, n, down_secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    work = tempfile.mkdtemp(prefix="dead-drain-")
    smtp, next_hop = free_port(), free_port()
    config = os.path.join(work, "ringmx.toml")
    with open(config, "w") as f:
        f.write(
            f'relay_to = "smtp:127.0.0.1:{next_hop}"\nrelay_tls = "none"\n'
            "min_backoff_secs = 1\nmax_backoff_secs = 5\n"
        )
    spool = os.path.join(work, "spool")
    with open(os.path.join(work, "log"), "w") as log:
        server = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{smtp}", "--workers", "1",
             "--hostname", "mx.test", "--spool", spool, "--config", config],
            stderr=log, env={**os.environ, "RUST_LOG": "warn"},
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", smtp)).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("ringmx did not start")
                time.sleep(0.1)
        began = time.monotonic()
        subprocess.run(
            ["smtp-source", "-s", "10", "-m", str(n), "-l", "512", "-f", "a@client.test",
             "-t", "b@x.test", f"127.0.0.1:{smtp}"],
            check=True,
        )
        injected = time.monotonic() - began
        cpu = thread_cpu(server.pid, "ringmx-queue")
        time.sleep(down_secs)
        cpu_down = thread_cpu(server.pid, "ringmx-queue") - cpu
        loop = asyncio.new_event_loop()
        loop.run_until_complete(asyncio.start_server(session, "127.0.0.1", next_hop))
        up = time.monotonic()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        while delivered < n and time.monotonic() < up + 600:
            time.sleep(0.05)
        drained = time.monotonic() - up
        stats = json.loads(
            subprocess.run([binary, "queue", "stats", "--spool", spool],
                           capture_output=True, text=True, timeout=120, check=True).stdout
        )
    finally:
        server.terminate()
        server.wait()
    dest = next(iter(stats["destinations"].values()), {})
    print(json.dumps({
        "n": n,
        "inject_secs": round(injected, 2),
        "down_secs": down_secs,
        "queue_thread_cpu_secs_while_down": round(cpu_down, 2),
        "delivered": delivered,
        "up_to_drained_secs": round(drained, 2),
        "drain_per_sec": round(delivered / drained, 1),
        "deferred": stats["deferred"],
        "connection_failures": dest.get("connection_failures"),
        "dead_deferrals": dest.get("dead_deferrals"),
    }))


main()
