//! The per-client table's cost per accepted connection: one admit and one release, as a worker pays at accept and close.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringmx::policy::clients::{ClientLimits, ClientTable};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

/// The `n`th distinct IPv4 client, from 10.0.0.0 on.
fn client(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n))
}

fn admit_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("clients");
    group.throughput(Throughput::Elements(1));
    // The worker passes its clock cached for the turn; so does the bench, to time the table only.
    let now = Instant::now();
    let counts = ClientLimits::default();
    // With a rate counted, an idle client stays for its window: admit finds it instead of
    // inserting it, and release leaves it.
    let with_rate = ClientLimits {
        rate_per_minute: u32::MAX,
        ..counts
    };
    for (name, limits) in [("count", counts), ("count+rate", with_rate)] {
        let table = ClientTable::new(limits);
        group.bench_function(format!("{name}/one-address"), |b| {
            b.iter(|| table.release(table.admit(black_box(client(1)), now).unwrap()))
        });
        let mut n = 0;
        group.bench_function(format!("{name}/20000-addresses"), |b| {
            b.iter(|| {
                n = (n + 1) % 20_000;
                table.release(table.admit(black_box(client(n)), now).unwrap())
            })
        });
    }
    // Every admit a new client into a full table (all shards at 1024 idle clients, none
    // expired), so each evicts the oldest client of its shard.
    let table = ClientTable::new(with_rate);
    let mut n = 0;
    while table.tracked() < with_rate.max_tracked {
        n += 1;
        table.release(table.admit(client(n), now).unwrap());
    }
    group.bench_function("count+rate/evicting", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            table.release(table.admit(black_box(client(n)), now).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, admit_release);
criterion_main!(benches);
