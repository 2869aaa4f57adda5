//! Parser throughput: ringmx's sans-IO session and DATA receiver against Stalwart's smtp-proto and a bare memchr scan, over identical bytes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringmx::config::{BareLf, ProtoConfig};
use ringmx::proto::{Commit, DataReceiver, Event, Session, Settings, Stats};
use ringmx_bench::{command_stream, data_stream, plain_data_stream};
use std::hint::black_box;
use std::time::Instant;

/// Runs ringmx's full session over a stream of back-to-back sessions: every reply is
/// rendered (and dropped, as if written), every message committed at once.
fn ringmx_sessions(
    settings: &std::sync::Arc<Settings>,
    stream: &[u8],
    out: &mut Vec<u8>,
    stats: &mut Stats,
) -> usize {
    let now = Instant::now();
    let mut pos = 0;
    let mut sessions = 0;
    while pos < stream.len() {
        let mut session = Session::new(
            settings.clone(),
            ringmx::proto::Client {
                relay: true,
                tls: false,
            },
            now,
            out,
        );
        sessions += 1;
        'session: loop {
            let progress = session.handle_input(now, &stream[pos..], out);
            let n = progress.consumed;
            black_box(progress.body);
            pos += n;
            out.clear();
            let mut evented = false;
            while let Some(event) = session.poll_event() {
                evented = true;
                match event {
                    Event::MessageEnd => session.handle_commit(now, Commit::Queued("Q"), out),
                    Event::Close(_) => break 'session,
                    Event::MessageStart | Event::MessageAbort | Event::StartTls => {}
                }
            }
            if n == 0 && !evented {
                break;
            }
        }
        // As a worker does when a session ends.
        stats.add(session.stats());
    }
    sessions
}

/// Runs smtp-proto's receivers the way a server built on it does: requests line by line,
/// DATA content through its `DataReceiver` into a buffer.
fn smtp_proto_sessions(stream: &[u8], body: &mut Vec<u8>) -> usize {
    use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};
    use smtp_proto::{Error, Request};
    let mut iter = stream.iter();
    let mut receiver = RequestReceiver::default();
    let mut requests = 0;
    loop {
        match receiver.ingest(&mut iter, stream) {
            Ok(Request::Data) => {
                let mut data = DataReceiver::new();
                data.ingest(&mut iter, body);
                black_box(&body);
                body.clear();
            }
            Ok(request) => {
                black_box(request);
            }
            Err(Error::NeedsMoreData { .. }) => break,
            Err(error) => {
                black_box(error);
            }
        }
        requests += 1;
    }
    requests
}

fn commands(c: &mut Criterion) {
    let stream = command_stream(200);
    let config = ProtoConfig {
        hostname: "mx.bench".into(),
        ..ProtoConfig::default()
    };
    let settings = Settings::new(config);
    let mut group = c.benchmark_group("commands");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    let (mut out, mut stats) = (Vec::with_capacity(1 << 16), Stats::default());
    assert_eq!(ringmx_sessions(&settings, &stream, &mut out, &mut stats), 200);
    assert_eq!(stats.messages, 200, "every message in the stream is accepted");
    group.bench_function("ringmx", |b| {
        b.iter(|| ringmx_sessions(&settings, black_box(&stream), &mut out, &mut stats))
    });
    let mut body = Vec::with_capacity(1 << 16);
    group.bench_function("smtp-proto", |b| {
        b.iter(|| smtp_proto_sessions(black_box(&stream), &mut body))
    });
    group.finish();
}

fn data(c: &mut Criterion) {
    for (name, stream) in [
        ("1MiB", data_stream(1 << 20)),
        ("1MiB-unstuffed", plain_data_stream(1 << 20)),
    ] {
        data_group(c, name, &stream);
    }
}

fn data_group(c: &mut Criterion, name: &str, stream: &[u8]) {
    let mut group = c.benchmark_group("data");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    let mut out = Vec::with_capacity(stream.len());
    // ringmx hands the content out as slices of its input (no copy); smtp-proto copies it
    // into a buffer. Both find the end and remove the stuffing dots.
    group.bench_with_input(BenchmarkId::new("ringmx", name), stream, |b, s| {
        b.iter(|| {
            let mut receiver = DataReceiver::new(1000, 1 << 30, BareLf::Normalize);
            let (mut pos, mut content) = (0, 0);
            loop {
                let fed = receiver.feed(&s[pos..]);
                pos += fed.consumed;
                content += black_box(fed.body).octets();
                if fed.done {
                    break content;
                }
            }
        })
    });
    group.bench_with_input(BenchmarkId::new("smtp-proto", name), stream, |b, s| {
        b.iter(|| {
            out.clear();
            let mut receiver = smtp_proto::request::receiver::DataReceiver::new();
            assert!(receiver.ingest(&mut s.iter(), &mut out));
            out.len()
        })
    });
    // The "bare scan for LF": memchr's iterator count, which counts matches with SIMD
    // without visiting them one by one.
    group.bench_with_input(BenchmarkId::new("memchr", name), stream, |b, s| {
        b.iter(|| memchr::memchr_iter(b'\n', black_box(s)).count())
    });
    // What any line-aware parser must at least do: visit every line end.
    group.bench_with_input(BenchmarkId::new("memchr-visit", name), stream, |b, s| {
        b.iter(|| memchr::memchr_iter(b'\n', black_box(s)).fold(0usize, |acc, lf| acc ^ lf))
    });
    group.finish();
}

criterion_group!(benches, commands, data);
criterion_main!(benches);
