//! Broker round trips: publish a batch of 1 000 `tasks.add` messages in one
//! call, fetch them back and acknowledge each (acks issued concurrently, as
//! a worker does), through the memory broker and the SQLite broker (a fresh
//! file in a temporary directory, default options: `fsync` on commit).
//! Criterion reports messages per second (one element = one message's full
//! publish → fetch → ack).
//!
//! `cargo bench -p celeriac-bench --bench broker`

use std::time::Duration;

use celeriac_bench::{batch, round_trip, BATCH};
use celeriac_core::Broker;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn bench_broker<B: Broker>(c: &mut Criterion, rt: &Runtime, name: &str, broker: &B) {
    let mut g = c.benchmark_group("round_trip");
    g.throughput(Throughput::Elements(BATCH as u64));
    let queue = format!("bench.{name}");
    g.bench_function(format!("{name}/batch{BATCH}"), |b| {
        b.to_async(rt).iter_batched(
            || batch(&queue, BATCH),
            |messages| async {
                let acked = round_trip(broker, &queue, messages)
                    .await
                    .expect("round trip");
                assert_eq!(acked, BATCH);
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let broker = celeriac_memory::MemoryBroker::new();
    bench_broker(c, &rt, "memory", &broker);
}

fn sqlite(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = rt
        .block_on(celeriac_sqlite::SqliteBroker::open(
            dir.path().join("bench.db"),
        ))
        .expect("open sqlite");
    bench_broker(c, &rt, "sqlite", &broker);
    // Close the broker (its threads) before the directory goes.
    drop(broker);
}

criterion_group! {
    name = brokers;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = memory, sqlite
}
criterion_main!(brokers);
