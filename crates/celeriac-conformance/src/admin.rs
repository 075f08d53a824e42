//! Operator tools and limits: queue statistics, purge, and the maximum
//! queue length (which also proves that a publish is all or none).

use std::time::Duration;

use celeriac_core::{Broker, ErrorKind, QueueStats, Settlement};

use crate::support::{
    assert_kind, assert_nothing, fetch, fetch_one, in_future, message, ok, publish, queue_name,
    skip, with_eta,
};
use crate::{Fixture, FixtureOptions};

const WAIT: Duration = Duration::from_secs(5);

async fn stats_of<B: Broker>(b: &B, q: &str) -> QueueStats {
    let all = ok(b.queue_stats().await, "queue_stats");
    all.into_iter()
        .find(|s| s.queue == q)
        .unwrap_or_else(|| QueueStats {
            queue: q.to_owned(),
            ready: 0,
            delayed: 0,
            leased: 0,
        })
}

fn counts(s: &QueueStats) -> (u64, u64, u64) {
    (s.ready, s.delayed, s.leased)
}

/// Queue statistics count ready, delayed and leased messages per queue,
/// and follow fetches and acks.
pub async fn queue_stats_count_ready_delayed_leased<F: Fixture>(f: &F) {
    let b = f.open().await;
    let caps = b.capabilities();
    if !caps.admin {
        return skip("admin::queue_stats_count_ready_delayed_leased", "admin");
    }
    let q = queue_name("stats");
    let other = queue_name("stats_other");
    publish(&b, (0..3).map(|n| message(&q, n)).collect()).await;
    publish(&b, vec![message(&other, 0)]).await;
    let delayed = if caps.delayed {
        let later = in_future(Duration::from_secs(3600));
        publish(
            &b,
            (3..5).map(|n| with_eta(message(&q, n), later)).collect(),
        )
        .await;
        2
    } else {
        0
    };
    assert_eq!(counts(&stats_of(&b, &q).await), (3, delayed, 0));

    let d = fetch_one(&b, &q, WAIT).await;
    assert_eq!(counts(&stats_of(&b, &q).await), (2, delayed, 1));
    assert_eq!(counts(&stats_of(&b, &other).await), (1, 0, 0));

    ok(
        b.settle(&d.lease, Settlement::Ack { result: None }).await,
        "ack",
    );
    assert_eq!(counts(&stats_of(&b, &q).await), (2, delayed, 0));
}

/// Purge removes a queue's waiting messages, ready and delayed, and says
/// how many; leased ones stay with their holders, and other queues are
/// untouched.
pub async fn purge_removes_waiting_messages<F: Fixture>(f: &F) {
    let b = f.open().await;
    let caps = b.capabilities();
    if !caps.admin {
        return skip("admin::purge_removes_waiting_messages", "admin");
    }
    let q = queue_name("purge");
    let other = queue_name("purge_other");
    publish(&b, (0..5).map(|n| message(&q, n)).collect()).await;
    publish(&b, vec![message(&other, 0)]).await;
    let held = fetch_one(&b, &q, WAIT).await;
    let delayed = if caps.delayed {
        let eta = in_future(Duration::from_millis(500));
        publish(&b, vec![with_eta(message(&q, 5), eta)]).await;
        1
    } else {
        0
    };

    assert_eq!(ok(b.purge(&q).await, "purge"), 4 + delayed);
    assert_nothing(&b, &q, Duration::ZERO, "a purged queue").await;
    assert_eq!(counts(&stats_of(&b, &q).await), (0, 0, 1));
    ok(
        b.settle(&held.lease, Settlement::Ack { result: None })
            .await,
        "ack of a message leased before the purge",
    );
    assert_eq!(
        fetch(&b, &[&other], 10, WAIT).await.len(),
        1,
        "another queue"
    );
    assert_eq!(ok(b.purge(&q).await, "purge again"), 0);
    if caps.delayed {
        assert_nothing(
            &b,
            &q,
            Duration::from_millis(1000),
            "a purged delayed message at its eta",
        )
        .await;
    }
}

/// With a maximum queue length, a publish that would overfill any queue
/// fails whole with `QueueFull` (nothing of the batch is stored, in any
/// queue), the limit is per queue, and room made by an ack is usable.
pub async fn max_length_refuses_whole_batch<F: Fixture>(f: &F) {
    let b = f
        .open_with(FixtureOptions::default().with_max_queue_length(3))
        .await;
    if !b.capabilities().max_length {
        return skip("admin::max_length_refuses_whole_batch", "max_length");
    }
    let q = queue_name("maxlen");
    let other = queue_name("maxlen_other");

    assert_kind(
        b.publish((0..4).map(|n| message(&q, n)).collect()).await,
        ErrorKind::QueueFull,
        "a batch of 4 into a queue of at most 3",
    );
    assert_nothing(&b, &q, Duration::ZERO, "a refused batch stored a message").await;

    publish(&b, (0..2).map(|n| message(&q, n)).collect()).await;
    assert_kind(
        b.publish(vec![message(&other, 10), message(&q, 2), message(&q, 3)])
            .await,
        ErrorKind::QueueFull,
        "a batch that overfills one of its queues",
    );
    assert_nothing(
        &b,
        &other,
        Duration::ZERO,
        "a refused batch stored a message in another queue",
    )
    .await;

    publish(&b, vec![message(&q, 2)]).await;
    assert_kind(
        b.publish(vec![message(&q, 3)]).await,
        ErrorKind::QueueFull,
        "a publish into a full queue",
    );
    publish(&b, (0..3).map(|n| message(&other, n)).collect()).await;

    let got = fetch(&b, &[&q], 10, WAIT).await;
    assert_eq!(got.len(), 3, "the full queue holds exactly its limit");
    for d in &got {
        ok(
            b.settle(&d.lease, Settlement::Ack { result: None }).await,
            "ack",
        );
    }
    publish(&b, vec![message(&q, 4)]).await;
}
