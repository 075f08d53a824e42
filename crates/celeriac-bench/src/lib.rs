//! Criterion benchmarks for celeriac, and the small fixtures they share.
//!
//! The benches live in `benches/` of this crate (never published):
//!
//! | bench | what it measures |
//! |---|---|
//! | `wire` | [`celeriac_core::codec`] encode/decode (the stored form SQLite keeps) and kombu's Redis envelope (`celeriac_redis::envelope`) encode/decode, for a small `tasks.add` message and one with a 1 KiB argument |
//! | `broker` | publish → fetch → ack round trips of [`BATCH`] messages through the memory broker and the SQLite broker (a fresh file in a temporary directory, `fsync` on commit) |
//!
//! # Running
//!
//! ```sh
//! cargo bench -p celeriac-bench                  # everything, a few minutes
//! cargo bench -p celeriac-bench --bench wire     # one bench target
//! cargo bench -p celeriac-bench -- sqlite        # benchmarks whose name matches
//! cargo test -p celeriac-bench --benches         # smoke test: each bench runs once, no measurement
//! ```
//!
//! Criterion keeps its figures in `target/criterion/` and compares each run
//! with the previous one. `cargo test --workspace` does not build the
//! benches at all (bench targets are not test targets by default); `cargo
//! clippy --all-targets` checks them. Sample sizes and measurement times are
//! kept small so the whole suite fits in a few minutes on a 2-core machine.
//!
//! The crate's `enqueue` example is celeriac's producer in
//! `bench/celery_vs_celeriac.sh`, the side-by-side with Python Celery on one
//! Redis; BENCHMARKS.md records the figures of both.
//!
//! # Fixtures
//!
//! [`add_message`] and [`batch`] build the messages the benches use, and
//! [`round_trip`] is the measured broker workload: it is plain library code
//! so that it is tested (on the memory broker) by `cargo test`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), celeriac_core::Error> {
//! use celeriac_core::Broker;
//! let broker = celeriac_memory::MemoryBroker::new();
//! let acked = celeriac_bench::round_trip(&broker, "doc", celeriac_bench::batch("doc", 100)).await?;
//! assert_eq!(acked, 100);
//! assert!(broker.is_idle());
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{Broker, Error, ErrorKind, FetchRequest, Message, Settlement};
use serde_json::{Map, Value};

/// Messages per batch in the broker round-trip benches.
pub const BATCH: usize = 1000;

/// The task name the fixtures use: the interop fixture's `tasks.add`.
pub const TASK: &str = "tasks.add";

/// Builds one `tasks.add(i, i)` message for `queue`, the shape Celery's
/// `add.delay(i, i)` sends.
///
/// ```
/// let m = celeriac_bench::add_message("q", 7);
/// assert_eq!(m.queue(), "q");
/// assert_eq!(m.headers.task, "tasks.add");
/// ```
pub fn add_message(queue: &str, i: u64) -> Message {
    let mut m = Message::new(TASK, vec![i.into(), i.into()], Map::new());
    m.set_queue(queue);
    m
}

/// Builds a message for `queue` whose one argument is a string of
/// `payload` bytes, for the codec benches' large case.
///
/// ```
/// let m = celeriac_bench::payload_message("q", 1024);
/// assert_eq!(m.body.args[0].as_str().map(str::len), Some(1024));
/// ```
pub fn payload_message(queue: &str, payload: usize) -> Message {
    let mut m = Message::new(TASK, vec![Value::String("x".repeat(payload))], Map::new());
    m.set_queue(queue);
    m
}

/// Builds `n` distinct [`add_message`]s for `queue`.
///
/// ```
/// assert_eq!(celeriac_bench::batch("q", 3).len(), 3);
/// ```
pub fn batch(queue: &str, n: usize) -> Vec<Message> {
    (0..n as u64).map(|i| add_message(queue, i)).collect()
}

/// Publishes `messages` (all for `queue`) in one call, fetches them back
/// from `queue` and acknowledges every one, the acknowledgements
/// concurrently (as a worker's settle loop issues them, which lets a
/// broker group them into few commits). Returns how many were acknowledged.
///
/// # Errors
///
/// Any broker error, or [`ErrorKind::Other`] when a fetch comes back empty
/// for a second before every message was seen, or a message does not decode.
pub async fn round_trip<B: Broker>(
    broker: &B,
    queue: &str,
    messages: Vec<Message>,
) -> Result<usize, Error> {
    let n = messages.len();
    broker.publish(messages).await?;
    let mut req = FetchRequest {
        queues: Arc::from(vec![queue.to_owned()]),
        max: n,
        lease: Duration::from_secs(60),
        wait: Duration::from_secs(1),
    };
    let mut leases = Vec::with_capacity(n);
    while leases.len() < n {
        req.max = n - leases.len();
        let got = broker.fetch(&req).await?;
        if got.is_empty() {
            return Err(Error::new(
                ErrorKind::Other,
                format!("fetched {} of {n} messages from `{queue}`", leases.len()),
            ));
        }
        for d in got {
            d.message?;
            leases.push(d.lease);
        }
    }
    let acks = leases
        .iter()
        .map(|lease| broker.settle(lease, Settlement::Ack { result: None }));
    futures::future::try_join_all(acks).await?;
    Ok(leases.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_acks_every_message_on_memory() {
        let broker = celeriac_memory::MemoryBroker::new();
        let acked = round_trip(&broker, "rt", batch("rt", BATCH)).await.unwrap();
        assert_eq!(acked, BATCH);
        assert!(broker.is_idle(), "every message was acknowledged");
    }

    #[tokio::test]
    async fn round_trip_acks_every_message_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let broker = celeriac_sqlite::SqliteBroker::open(dir.path().join("rt.db"))
            .await
            .unwrap();
        let acked = round_trip(&broker, "rt", batch("rt", 200)).await.unwrap();
        assert_eq!(acked, 200);
        let stats = broker.queue_stats().await.unwrap();
        let left: u64 = stats.iter().map(|s| s.ready + s.leased + s.delayed).sum();
        assert_eq!(left, 0, "{stats:?}");
    }

    #[tokio::test]
    async fn round_trip_reports_messages_it_cannot_fetch() {
        let broker = celeriac_memory::MemoryBroker::new();
        // Published to another queue: the fetch from `rt` stays empty.
        let err = round_trip(&broker, "rt", batch("elsewhere", 3))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Other);
        assert!(err.to_string().contains("fetched 0 of 3"), "{err}");
    }

    #[test]
    fn fixtures_are_distinct_add_calls() {
        let b = batch("q", 3);
        assert_eq!(b[2].body.args, vec![Value::from(2u64), Value::from(2u64)]);
        assert_ne!(b[0].id(), b[1].id());
        assert!(b.iter().all(|m| m.queue() == "q" && m.headers.task == TASK));
    }
}
