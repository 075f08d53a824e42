//! The broker contract, case by case, against `MemoryBroker`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use celeriac_core::{
    codec, Broker, ErrorKind, LeaseStatus, ResultBackend, Revoked, Settlement, TaskResult,
    TaskState,
};
use celeriac_memory::MemoryBroker;
use chrono::Utc;
use tokio::time::{timeout, Instant};

use common::{fetch_now, ids, msg, msg_p, req, PATIENCE};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn handles_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let b = MemoryBroker::new();
    send_sync(&b);
    let r = req(&["q"], 1, LONG, Duration::ZERO);
    send(&b.fetch(&r));
    send(&b.publish(vec![]));
    send(&b.idle());
    send(&ResultBackend::wait(
        &b,
        &celeriac_core::TaskId::new(),
        Duration::ZERO,
    ));
}

#[test]
fn reports_its_capabilities() {
    let c = MemoryBroker::new().capabilities();
    assert!(!c.durable);
    assert!(c.delayed && c.priorities && c.push_wakeups && c.results);
    assert!(c.revoke && c.max_length && c.admin);
}

#[tokio::test]
async fn publishes_fetches_and_acks() {
    let b = MemoryBroker::new();
    let m = msg("q");
    let id = m.id().clone();
    b.publish(vec![m.clone()]).await.unwrap();
    assert!(!b.is_idle());

    let ds = fetch_now(&b, &["q"], 10).await;
    assert_eq!(ds.len(), 1);
    let d = &ds[0];
    assert_eq!(**d.message.as_ref().unwrap(), m);
    assert_eq!(d.lease.id, id);
    assert_eq!(&*d.lease.queue, "q");
    assert_eq!(d.deliveries, 1);
    let stats = b.queue_stats().await.unwrap();
    assert_eq!(
        (stats[0].ready, stats[0].delayed, stats[0].leased),
        (0, 0, 1)
    );

    // Leased: not handed to anyone else.
    assert!(fetch_now(&b, &["q"], 10).await.is_empty());

    b.settle(&d.lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    assert!(b.is_idle());
    assert_eq!(b.get(&id).await.unwrap(), None);
    // Settled once; a second settle holds nothing.
    let err = b
        .settle(&d.lease, Settlement::Ack { result: None })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LeaseLost);
}

#[tokio::test]
async fn tokens_increase_on_every_delivery() {
    let b = MemoryBroker::new();
    b.publish((0..3).map(|_| msg("q")).collect()).await.unwrap();
    let ds = fetch_now(&b, &["q"], 3).await;
    let tokens: Vec<u64> = ds.iter().map(|d| d.lease.token).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    let receipts: HashSet<u64> = ds.iter().map(|d| d.lease.receipt).collect();
    assert_eq!(receipts.len(), 3);
}

#[tokio::test]
async fn higher_priority_first_then_publish_order() {
    let b = MemoryBroker::new();
    let batch = vec![
        msg_p("q", 0),
        msg_p("q", 9),
        msg_p("q", 5),
        msg_p("q", 9),
        msg_p("q", 0),
        msg_p("q", 200), // clamped to 9
    ];
    let expected: Vec<String> = [1, 3, 5, 2, 0, 4]
        .iter()
        .map(|&i| batch[i].id().to_string())
        .collect();
    b.publish(batch).await.unwrap();
    let got = fetch_now(&b, &["q"], 10).await;
    assert_eq!(ids(&got), expected);

    // FIFO holds across batches too.
    let first = msg("q");
    let second = msg("q");
    let want = vec![first.id().to_string(), second.id().to_string()];
    b.publish(vec![first]).await.unwrap();
    b.publish(vec![second]).await.unwrap();
    let mut got = Vec::new();
    got.extend(fetch_now(&b, &["q"], 1).await);
    got.extend(fetch_now(&b, &["q"], 1).await);
    assert_eq!(ids(&got), want);
}

#[tokio::test]
async fn eta_is_honoured() {
    let b = MemoryBroker::new();
    let mut m = msg("q");
    let eta = Utc::now() + chrono::Duration::milliseconds(80);
    m.headers.eta = Some(eta);
    let mut past = msg("q");
    past.headers.eta = Some(Utc::now() - chrono::Duration::seconds(5));
    let past_id = past.id().to_string();
    b.publish(vec![m, past]).await.unwrap();

    // An eta already passed is ready at once; the future one is not.
    let now = fetch_now(&b, &["q"], 10).await;
    assert_eq!(ids(&now), vec![past_id]);
    let stats = b.queue_stats().await.unwrap();
    assert_eq!((stats[0].ready, stats[0].delayed), (0, 1));

    let d = b.fetch(&req(&["q"], 10, LONG, PATIENCE)).await.unwrap();
    assert_eq!(d.len(), 1);
    assert!(Utc::now() >= eta, "delivered before its eta");
}

#[tokio::test]
async fn a_waiting_fetch_wakes_for_a_delayed_message_published_later() {
    let b = MemoryBroker::new();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.fetch(&req(&["q"], 1, LONG, PATIENCE)).await })
    };
    // Give the fetcher a chance to be waiting first; either order must work.
    tokio::task::yield_now().await;
    let mut m = msg("q");
    let eta = Utc::now() + chrono::Duration::milliseconds(50);
    m.headers.eta = Some(eta);
    b.publish(vec![m]).await.unwrap();
    let got = timeout(PATIENCE / 2, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(Utc::now() >= eta);
}

#[tokio::test]
async fn a_waiting_fetch_wakes_on_publish() {
    let b = MemoryBroker::new();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let got = b.fetch(&req(&["q"], 5, LONG, PATIENCE)).await.unwrap();
            (got, Instant::now())
        })
    };
    tokio::task::yield_now().await;
    b.publish(vec![msg("q")]).await.unwrap();
    let published = Instant::now();
    let (got, at) = timeout(PATIENCE / 2, waiter).await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert!(at.duration_since(published) < PATIENCE / 4);
}

#[tokio::test]
async fn a_fetch_with_zero_wait_returns_at_once() {
    let b = MemoryBroker::new();
    let got = timeout(PATIENCE, b.fetch(&req(&["q"], 5, LONG, Duration::ZERO)))
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_empty());
    assert!(fetch_now(&b, &[], 5).await.is_empty());
    b.publish(vec![msg("q")]).await.unwrap();
    assert!(fetch_now(&b, &["q"], 0).await.is_empty());
}

#[tokio::test]
async fn a_fetch_times_out_empty() {
    let b = MemoryBroker::new();
    let start = Instant::now();
    let wait = Duration::from_millis(30);
    let got = b.fetch(&req(&["q"], 5, LONG, wait)).await.unwrap();
    assert!(got.is_empty());
    assert!(start.elapsed() >= wait);
}

#[tokio::test]
async fn an_expired_lease_is_redelivered_with_a_new_token() {
    let b = MemoryBroker::new();
    b.publish(vec![msg("q")]).await.unwrap();
    let lease = Duration::from_millis(50);
    let first = b
        .fetch(&req(&["q"], 1, lease, Duration::ZERO))
        .await
        .unwrap();
    let leased_at = Instant::now();
    assert_eq!(first.len(), 1);

    // A second handle waits; the expired lease must wake it, not its timeout.
    let other = b.clone();
    let second = timeout(PATIENCE / 2, other.fetch(&req(&["q"], 1, LONG, PATIENCE)))
        .await
        .expect("the expired lease woke the waiting fetch")
        .unwrap();
    assert_eq!(second.len(), 1);
    assert!(leased_at.elapsed() >= lease);
    let (old, new) = (&first[0].lease, &second[0].lease);
    assert_eq!(old.id, new.id);
    assert!(new.token > old.token);
    assert_eq!(second[0].deliveries, 2);

    // The old attempt is fenced off.
    let err = b
        .settle(old, Settlement::Ack { result: None })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LeaseLost);
    let st = b.extend(std::slice::from_ref(old), LONG).await.unwrap();
    assert_eq!(st, vec![LeaseStatus::Lost]);
    // A result carried by the stale settle is not stored.
    let err = b
        .settle(
            old,
            Settlement::Ack {
                result: Some(TaskResult::success(old.id.clone(), 1.into())),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LeaseLost);
    assert_eq!(b.get(&old.id).await.unwrap(), None);

    b.settle(new, Settlement::Ack { result: None })
        .await
        .unwrap();
    assert!(b.is_idle());
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_nobody_took_can_still_be_settled() {
    let b = MemoryBroker::new();
    b.publish(vec![msg("q"), msg("q")]).await.unwrap();
    let lease = Duration::from_millis(20);
    let ds = b
        .fetch(&req(&["q"], 2, lease, Duration::ZERO))
        .await
        .unwrap();
    // Let the leases run out (the clock is paused: this only advances it).
    tokio::time::sleep(lease * 2).await;
    // Statistics see both as ready again.
    let stats = b.queue_stats().await.unwrap();
    assert_eq!((stats[0].ready, stats[0].leased), (2, 0));

    // The late attempts still hold their tokens: nobody leased them since.
    b.settle(&ds[0].lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    let st = b
        .extend(std::slice::from_ref(&ds[1].lease), LONG)
        .await
        .unwrap();
    assert_eq!(st, vec![LeaseStatus::Held]);
    let stats = b.queue_stats().await.unwrap();
    assert_eq!((stats[0].ready, stats[0].leased), (0, 1));
    assert!(fetch_now(&b, &["q"], 5).await.is_empty());
    b.settle(&ds[1].lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    assert!(b.is_idle());
}

#[tokio::test(start_paused = true)]
async fn extend_keeps_the_lease() {
    let b = MemoryBroker::new();
    b.publish(vec![msg("q")]).await.unwrap();
    let lease = Duration::from_millis(100);
    let d = b
        .fetch(&req(&["q"], 1, lease, Duration::ZERO))
        .await
        .unwrap();
    for _ in 0..5 {
        tokio::time::sleep(lease / 2).await;
        let st = b.extend(&[d[0].lease.clone()], lease).await.unwrap();
        assert_eq!(st, vec![LeaseStatus::Held]);
        assert!(
            fetch_now(&b, &["q"], 1).await.is_empty(),
            "redelivered while held"
        );
    }
    b.settle(&d[0].lease, Settlement::Ack { result: None })
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_fetchers_never_share_a_message() {
    let b = MemoryBroker::new();
    let total = 4000;
    for chunk in 0..(total / 500) {
        let _ = chunk;
        b.publish((0..500).map(|_| msg("q")).collect())
            .await
            .unwrap();
    }
    let mut workers = Vec::new();
    for _ in 0..8 {
        let b = b.clone();
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let ds = b
                    .fetch(&req(&["q"], 7, LONG, Duration::from_millis(20)))
                    .await
                    .unwrap();
                if ds.is_empty() {
                    return seen;
                }
                for d in ds {
                    // Every ack succeeds: no one else held this lease.
                    b.settle(&d.lease, Settlement::Ack { result: None })
                        .await
                        .unwrap();
                    seen.push(d.lease.id.to_string());
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(timeout(PATIENCE, w).await.unwrap().unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), total);
    assert_eq!(unique.len(), total);
    assert!(b.is_idle());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_fetchers_on_threads_never_share_a_message() {
    let b = MemoryBroker::new();
    let total = 20_000;
    let producer = {
        let b = b.clone();
        tokio::spawn(async move {
            for _ in 0..(total / 100) {
                b.publish((0..100).map(|_| msg("q")).collect())
                    .await
                    .unwrap();
            }
        })
    };
    let mut workers = Vec::new();
    for _ in 0..6 {
        let b = b.clone();
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let ds = b
                    .fetch(&req(&["q"], 13, LONG, Duration::from_millis(200)))
                    .await
                    .unwrap();
                if ds.is_empty() {
                    return seen;
                }
                for d in ds {
                    b.settle(&d.lease, Settlement::Ack { result: None })
                        .await
                        .unwrap();
                    seen.push(d.lease.token);
                }
            }
        }));
    }
    producer.await.unwrap();
    let mut tokens = Vec::new();
    for w in workers {
        tokens.extend(timeout(PATIENCE, w).await.unwrap().unwrap());
    }
    let unique: HashSet<u64> = tokens.iter().copied().collect();
    assert_eq!(tokens.len(), total);
    assert_eq!(unique.len(), total);
    timeout(PATIENCE, b.idle()).await.unwrap();
}

#[tokio::test]
async fn a_cancelled_fetch_leases_nothing() {
    let b = MemoryBroker::new();
    let r = req(&["q"], 1, LONG, PATIENCE);
    // Dropped while waiting.
    let fetch = b.fetch(&r);
    assert!(timeout(Duration::from_millis(10), fetch).await.is_err());
    b.publish(vec![msg("q")]).await.unwrap();
    let ds = fetch_now(&b, &["q"], 1).await;
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].deliveries, 1);
    // Dropped before it was ever polled.
    drop(b.fetch(&r));
    b.publish(vec![msg("q")]).await.unwrap();
    assert_eq!(fetch_now(&b, &["q"], 5).await.len(), 1);
}

#[tokio::test]
async fn fetch_is_fair_across_queues() {
    let b = MemoryBroker::new();
    b.publish((0..1000).map(|_| msg("busy")).collect())
        .await
        .unwrap();
    b.publish((0..6).map(|_| msg("quiet")).collect())
        .await
        .unwrap();

    // A batch takes round-robin across the queues.
    let batch = fetch_now(&b, &["busy", "quiet"], 4).await;
    let quiet = batch.iter().filter(|d| &*d.lease.queue == "quiet").count();
    assert_eq!(quiet, 2);

    // Single fetches alternate their starting queue.
    let mut from_quiet = 0;
    for _ in 0..8 {
        let d = fetch_now(&b, &["busy", "quiet"], 1).await;
        if &*d[0].lease.queue == "quiet" {
            from_quiet += 1;
        }
    }
    assert_eq!(from_quiet, 4);
    let stats = b.queue_stats().await.unwrap();
    let quiet = stats.iter().find(|s| s.queue == "quiet").unwrap();
    assert_eq!(quiet.ready, 0);
}

#[tokio::test]
async fn release_hands_the_message_back_now() {
    let b = MemoryBroker::new();
    b.publish(vec![msg("q"), msg("q")]).await.unwrap();
    let first = fetch_now(&b, &["q"], 1).await;
    b.settle(&first[0].lease, Settlement::Release)
        .await
        .unwrap();
    // Released to the front: it comes before the one still waiting.
    let again = fetch_now(&b, &["q"], 1).await;
    assert_eq!(again[0].lease.id, first[0].lease.id);
    assert_eq!(again[0].deliveries, 2);
    assert!(again[0].lease.token > first[0].lease.token);
    // The released attempt holds nothing any more.
    let err = b
        .settle(&first[0].lease, Settlement::Ack { result: None })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LeaseLost);
}

#[tokio::test]
async fn release_wakes_a_waiting_fetch() {
    let b = MemoryBroker::new();
    b.publish(vec![msg("q")]).await.unwrap();
    let d = fetch_now(&b, &["q"], 1).await;
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.fetch(&req(&["q"], 1, LONG, PATIENCE)).await })
    };
    tokio::task::yield_now().await;
    b.settle(&d[0].lease, Settlement::Release).await.unwrap();
    let got = timeout(PATIENCE / 2, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got[0].lease.id, d[0].lease.id);
}

#[tokio::test]
async fn retry_replaces_the_message_and_stores_the_result() {
    let b = MemoryBroker::new();
    let m = msg("q");
    let id = m.id().clone();
    b.publish(vec![m.clone()]).await.unwrap();
    let d = fetch_now(&b, &["q"], 1).await;

    let mut next = m.clone();
    next.headers.retries = 1;
    let eta = Utc::now() + chrono::Duration::milliseconds(40);
    next.headers.eta = Some(eta);
    let retry_result = TaskResult::new(id.clone(), TaskState::Retry, 0.into(), None);
    b.settle(
        &d[0].lease,
        Settlement::Retry {
            message: Box::new(next),
            result: Some(retry_result),
        },
    )
    .await
    .unwrap();
    assert_eq!(b.get(&id).await.unwrap().unwrap().status, TaskState::Retry);
    let stats = b.queue_stats().await.unwrap();
    assert_eq!(
        (stats[0].ready, stats[0].delayed, stats[0].leased),
        (0, 1, 0)
    );
    let err = b
        .settle(&d[0].lease, Settlement::Ack { result: None })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LeaseLost);

    let again = b.fetch(&req(&["q"], 1, LONG, PATIENCE)).await.unwrap();
    assert!(Utc::now() >= eta);
    assert_eq!(again[0].lease.id, id);
    assert_eq!(again[0].message.as_ref().unwrap().headers.retries, 1);
}

#[tokio::test]
async fn settle_many_fences_each_settlement_and_stores_results() {
    let b = MemoryBroker::new();
    let ms: Vec<_> = (0..4).map(|_| msg("q")).collect();
    b.publish(ms.clone()).await.unwrap();
    let ds = fetch_now(&b, &["q"], 4).await;
    assert_eq!(ds.len(), 4);
    let (done, released) = (ds[0].message.as_ref().unwrap().id().clone(), &ds[2]);
    let stale = {
        let mut l = ds[1].lease.clone();
        l.token += 1000;
        l
    };
    let batch = vec![
        (
            ds[0].lease.clone(),
            Settlement::Ack {
                result: Some(TaskResult::success(done.clone(), 7.into())),
            },
        ),
        (stale, Settlement::Ack { result: None }),
        (released.lease.clone(), Settlement::Release),
        (ds[3].lease.clone(), Settlement::Ack { result: None }),
        // The same lease twice: the second finds it settled.
        (ds[3].lease.clone(), Settlement::Ack { result: None }),
    ];
    let out = b.settle_many(&batch).await;
    let kinds: Vec<_> = out
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.kind()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            None,
            Some(ErrorKind::LeaseLost),
            None,
            None,
            Some(ErrorKind::LeaseLost)
        ]
    );
    assert_eq!(
        b.get(&done).await.unwrap().unwrap().result,
        serde_json::json!(7)
    );
    // The fenced-out one is still leased; the released one is ready again.
    let stats = b.queue_stats().await.unwrap();
    assert_eq!(
        (stats[0].ready, stats[0].delayed, stats[0].leased),
        (1, 0, 1)
    );
    let again = fetch_now(&b, &["q"], 4).await;
    assert_eq!(ids(&again), ids(std::slice::from_ref(released)));
    // Settling the rest leaves the broker idle, and wakes `idle()`.
    let rest = vec![
        (ds[1].lease.clone(), Settlement::Ack { result: None }),
        (again[0].lease.clone(), Settlement::Ack { result: None }),
    ];
    let idle = b.idle();
    assert!(b.settle_many(&rest).await.iter().all(Result::is_ok));
    timeout(PATIENCE, idle).await.unwrap();
    assert!(b.is_idle());
}

#[tokio::test]
async fn dead_letters_are_kept_listed_replayed_and_purged() {
    let b = MemoryBroker::new();
    let (m1, m2) = (msg("q"), msg("q"));
    b.publish(vec![m1.clone(), m2.clone()]).await.unwrap();
    let ds = fetch_now(&b, &["q"], 2).await;
    for d in &ds {
        let failure = TaskResult::new(d.lease.id.clone(), TaskState::Failure, 0.into(), None);
        b.settle(
            &d.lease,
            Settlement::DeadLetter {
                reason: format!("bad input for {}", d.lease.id),
                result: Some(failure),
            },
        )
        .await
        .unwrap();
    }
    assert!(b.is_idle());
    assert_eq!(
        b.get(m1.id()).await.unwrap().unwrap().status,
        TaskState::Failure
    );

    let dl = b.dead_letters(10).await.unwrap();
    assert_eq!(dl.len(), 2);
    assert_eq!(dl[0].id, *m1.id());
    assert_eq!(dl[0].task, "tests.noop");
    assert_eq!(dl[0].queue, "q");
    assert_eq!(dl[0].reason, format!("bad input for {}", m1.id()));
    assert_eq!(codec::decode(&dl[0].raw).unwrap(), m1);
    assert_eq!(b.dead_letters(1).await.unwrap().len(), 1);

    // Replay one by id, then none twice.
    let n = b
        .replay_dead_letters(Some(&[m2.id().clone()]))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let back = fetch_now(&b, &["q"], 5).await;
    assert_eq!(ids(&back), vec![m2.id().to_string()]);
    assert_eq!(**back[0].message.as_ref().unwrap(), m2);
    assert_eq!(
        b.replay_dead_letters(Some(&[m2.id().clone()]))
            .await
            .unwrap(),
        0
    );

    assert_eq!(b.purge_dead_letters().await.unwrap(), 1);
    assert!(b.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(b.replay_dead_letters(None).await.unwrap(), 0);
}

#[tokio::test]
async fn replay_all_puts_every_dead_letter_back() {
    let b = MemoryBroker::new();
    b.publish(vec![msg("a"), msg("b")]).await.unwrap();
    for d in fetch_now(&b, &["a", "b"], 2).await {
        let dl = Settlement::DeadLetter {
            reason: "x".into(),
            result: None,
        };
        b.settle(&d.lease, dl).await.unwrap();
    }
    assert_eq!(b.replay_dead_letters(None).await.unwrap(), 2);
    assert_eq!(fetch_now(&b, &["a"], 5).await.len(), 1);
    assert_eq!(fetch_now(&b, &["b"], 5).await.len(), 1);
}

#[tokio::test]
async fn max_queue_length_rejects_a_whole_batch() {
    let b = MemoryBroker::builder().max_queue_length(3).build();
    b.publish(vec![msg("q"), msg("q")]).await.unwrap();
    let err = b
        .publish(vec![msg("other"), msg("q"), msg("q")])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QueueFull);
    let text = err.to_string();
    assert!(text.contains("`q`") && text.contains('3'), "{text}");
    // Nothing of the failed batch was published, in any queue.
    let stats = b.queue_stats().await.unwrap();
    let total: u64 = stats.iter().map(|s| s.ready + s.delayed + s.leased).sum();
    assert_eq!(total, 2);

    b.publish(vec![msg("q")]).await.unwrap();
    let err = b.publish(vec![msg("q")]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QueueFull);
    // The limit is per queue.
    b.publish(vec![msg("other"), msg("other"), msg("other")])
        .await
        .unwrap();

    // Delayed messages count; leased ones do not (they left the queue).
    let d = fetch_now(&b, &["q"], 1).await;
    let mut later = msg("q");
    later.headers.eta = Some(Utc::now() + chrono::Duration::seconds(60));
    b.publish(vec![later]).await.unwrap();
    assert_eq!(
        b.publish(vec![msg("q")]).await.unwrap_err().kind(),
        ErrorKind::QueueFull
    );
    b.settle(&d[0].lease, Settlement::Ack { result: None })
        .await
        .unwrap();
}

#[tokio::test]
async fn revoke_removes_waiting_messages() {
    let b = MemoryBroker::new();
    let ready = msg("q");
    let mut delayed = msg("q");
    delayed.headers.eta = Some(Utc::now() + chrono::Duration::seconds(60));
    let keep = msg("q");
    b.publish(vec![ready.clone(), delayed.clone(), keep.clone()])
        .await
        .unwrap();
    assert_eq!(b.revoke(ready.id()).await.unwrap(), Revoked::Removed);
    assert_eq!(b.revoke(delayed.id()).await.unwrap(), Revoked::Removed);
    assert_eq!(b.revoke(ready.id()).await.unwrap(), Revoked::Unknown);
    let stats = b.queue_stats().await.unwrap();
    assert_eq!((stats[0].ready, stats[0].delayed), (1, 0));
    let got = fetch_now(&b, &["q"], 5).await;
    assert_eq!(ids(&got), vec![keep.id().to_string()]);
}

#[tokio::test]
async fn revoke_flags_a_running_task() {
    let b = MemoryBroker::new();
    let m = msg("q");
    b.publish(vec![m.clone()]).await.unwrap();
    let d = fetch_now(&b, &["q"], 1).await;
    assert_eq!(b.revoke(m.id()).await.unwrap(), Revoked::Running);
    let st = b.extend(&[d[0].lease.clone()], LONG).await.unwrap();
    assert_eq!(st, vec![LeaseStatus::Revoked]);
    // Still held: the worker settles it as it cancels.
    b.settle(&d[0].lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    assert!(b.is_idle());
}

#[tokio::test]
async fn revoke_of_an_unknown_id_is_remembered() {
    let b = MemoryBroker::new();
    let (early, other) = (msg("q"), msg("q"));
    assert_eq!(b.revoke(early.id()).await.unwrap(), Revoked::Unknown);
    // A result waiter learns the fate of the message discarded on arrival.
    let waiter = {
        let (b, id) = (b.clone(), early.id().clone());
        tokio::spawn(async move { b.wait(&id, PATIENCE).await })
    };
    tokio::task::yield_now().await;
    b.publish(vec![early.clone(), other.clone()]).await.unwrap();
    let got = fetch_now(&b, &["q"], 5).await;
    assert_eq!(ids(&got), vec![other.id().to_string()]);
    let r = timeout(PATIENCE / 2, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.unwrap().status, TaskState::Revoked);
    // Still remembered for a second arrival.
    b.publish(vec![early]).await.unwrap();
    assert!(fetch_now(&b, &["q"], 5).await.is_empty());
}

#[tokio::test]
async fn extend_reports_each_lease() {
    let b = MemoryBroker::new();
    b.publish(vec![msg("q"), msg("q")]).await.unwrap();
    let ds = fetch_now(&b, &["q"], 2).await;
    b.settle(&ds[1].lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    let mut bogus = ds[0].lease.clone();
    bogus.receipt = u64::MAX;
    let leases = vec![ds[0].lease.clone(), ds[1].lease.clone(), bogus];
    let st = b.extend(&leases, LONG).await.unwrap();
    assert_eq!(
        st,
        vec![LeaseStatus::Held, LeaseStatus::Lost, LeaseStatus::Lost]
    );
}

#[tokio::test]
async fn purge_removes_waiting_not_leased() {
    let b = MemoryBroker::new();
    let mut delayed = msg("q");
    delayed.headers.eta = Some(Utc::now() + chrono::Duration::seconds(60));
    b.publish(vec![msg("q"), msg("q"), msg("q"), delayed, msg("other")])
        .await
        .unwrap();
    let d = fetch_now(&b, &["q"], 1).await;
    assert_eq!(b.purge("q").await.unwrap(), 3);
    assert_eq!(b.purge("nowhere").await.unwrap(), 0);
    let stats = b.queue_stats().await.unwrap();
    let q = stats.iter().find(|s| s.queue == "q").unwrap();
    assert_eq!((q.ready, q.delayed, q.leased), (0, 0, 1));
    let other = stats.iter().find(|s| s.queue == "other").unwrap();
    assert_eq!(other.ready, 1);
    b.settle(&d[0].lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    assert_eq!(b.purge("other").await.unwrap(), 1);
    assert!(b.is_idle());
}

#[tokio::test]
async fn queue_stats_lists_empty_queues() {
    let b = MemoryBroker::new();
    b.publish(vec![msg("a")]).await.unwrap();
    fetch_now(&b, &["b"], 1).await;
    let d = fetch_now(&b, &["a"], 1).await;
    b.settle(&d[0].lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    let mut names: Vec<String> = b
        .queue_stats()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.queue)
        .collect();
    names.sort();
    assert_eq!(names, vec!["a", "b"]);
}

#[tokio::test]
async fn clones_share_one_store() {
    let a = MemoryBroker::new();
    let b = a.clone();
    a.publish(vec![msg("q")]).await.unwrap();
    let d = fetch_now(&b, &["q"], 1).await;
    a.settle(&d[0].lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    assert!(b.is_idle());
    // A new broker is a separate store.
    let c = MemoryBroker::new();
    c.publish(vec![msg("q")]).await.unwrap();
    assert!(a.is_idle());
}

#[tokio::test]
async fn idle_resolves_when_the_last_message_is_settled() {
    let b = MemoryBroker::new();
    timeout(PATIENCE, b.idle()).await.unwrap();
    b.publish((0..3).map(|_| msg("q")).collect()).await.unwrap();
    let idle = tokio::spawn(b.idle());
    let ds = fetch_now(&b, &["q"], 3).await;
    tokio::task::yield_now().await;
    assert!(!idle.is_finished());
    for d in &ds {
        b.settle(&d.lease, Settlement::Ack { result: None })
            .await
            .unwrap();
    }
    timeout(PATIENCE, idle).await.unwrap().unwrap();
    assert!(b.is_idle());
}

#[tokio::test]
async fn a_worker_drains_a_burst_quickly() {
    // A sanity check of throughput, not a benchmark: debug builds are slow,
    // so the bound is loose; release builds run far faster.
    let b = MemoryBroker::new();
    let total = 100_000;
    let worker = {
        let b = b.clone();
        tokio::spawn(async move {
            let r = req(&["q"], 256, LONG, Duration::from_millis(100));
            let mut done = 0;
            while done < total {
                for d in b.fetch(&r).await.unwrap() {
                    b.settle(&d.lease, Settlement::Ack { result: None })
                        .await
                        .unwrap();
                    done += 1;
                }
            }
        })
    };
    let start = Instant::now();
    for _ in 0..(total / 1000) {
        b.publish((0..1000).map(|_| msg("q")).collect())
            .await
            .unwrap();
    }
    timeout(PATIENCE * 3, worker).await.unwrap().unwrap();
    let rate = total as f64 / start.elapsed().as_secs_f64();
    eprintln!("published and drained {total} messages at {rate:.0}/s");
    assert!(b.is_idle());
}

#[tokio::test]
async fn fairness_holds_when_fetchers_interleave() {
    let b = MemoryBroker::new();
    b.publish((0..100).map(|_| msg("busy")).collect())
        .await
        .unwrap();
    b.publish((0..10).map(|_| msg("quiet")).collect())
        .await
        .unwrap();
    let (x, y) = (b.clone(), b.clone());
    // Two fetchers taking turns, one message each: a counter per call
    // would give each fetcher the same starting queue every time.
    let mut quiet = 0;
    for _ in 0..10 {
        for h in [&x, &y] {
            let d = fetch_now(h, &["busy", "quiet"], 1).await;
            if &*d[0].lease.queue == "quiet" {
                quiet += 1;
            }
        }
    }
    assert_eq!(quiet, 10);
}

#[tokio::test]
async fn a_queue_that_was_empty_goes_first_when_it_fills() {
    let b = MemoryBroker::new();
    b.publish((0..100).map(|_| msg("busy")).collect())
        .await
        .unwrap();
    for _ in 0..5 {
        let d = fetch_now(&b, &["busy", "quiet"], 1).await;
        assert_eq!(&*d[0].lease.queue, "busy");
    }
    b.publish(vec![msg("quiet")]).await.unwrap();
    let d = fetch_now(&b, &["busy", "quiet"], 1).await;
    assert_eq!(&*d[0].lease.queue, "quiet");
}
