//! Message codecs: celeriac's stored form (`celeriac_core::codec`, what the
//! SQLite broker keeps) and kombu's Redis envelope
//! (`celeriac_redis::envelope`, what Python Celery reads and writes), for a
//! small `tasks.add(2, 3)` message and one with a 1 KiB argument.
//!
//! `cargo bench -p celeriac-bench --bench wire`

use std::hint::black_box;
use std::time::Duration;

use celeriac_core::{codec, Message};
use celeriac_redis::envelope;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn cases() -> [(&'static str, Message); 2] {
    [
        ("add", celeriac_bench::add_message("celery", 2)),
        ("1KiB", celeriac_bench::payload_message("celery", 1024)),
    ]
}

fn codec_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    for (name, m) in cases() {
        let bytes = codec::encode(&m).expect("encodes");
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| codec::encode(black_box(&m)).expect("encodes"));
        });
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| codec::decode(black_box(&bytes)).expect("decodes"));
        });
    }
    g.finish();
}

fn envelope_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    let tag = uuid::Uuid::new_v4().to_string();
    for (name, m) in cases() {
        let raw = envelope::encode(&m, &tag).expect("encodes");
        assert!(envelope::decode(&raw, "celery").message.is_ok());
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| envelope::encode(black_box(&m), black_box(&tag)).expect("encodes"));
        });
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| envelope::decode(black_box(&raw), "celery"));
        });
    }
    g.finish();
}

criterion_group! {
    name = wire;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = codec_benches, envelope_benches
}
criterion_main!(wire);
