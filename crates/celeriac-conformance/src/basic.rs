//! The core round trip: publish, fetch, settle, and what a plain fetch
//! returns (which messages, how many, in what order).

use std::time::Duration;

use celeriac_core::{Broker, ErrorKind, ResultBackend, Settlement, TaskResult, TaskState};
use serde_json::json;
use tokio::time::Instant;

use crate::support::{
    arg, assert_kind, assert_nothing, fetch, fetch_one, ids, in_future, message, msg, ok, publish,
    queue_name, with_priority, TASK,
};
use crate::Fixture;

const WAIT: Duration = Duration::from_secs(5);

/// Publishes a message, fetches it (first delivery, lease naming the
/// message) and acks it with a result: the message is gone, the result is
/// stored, and a second ack of the same attempt fails with `LeaseLost`.
pub async fn publish_fetch_ack_with_result<F: Fixture>(f: &F) {
    let b = f.open().await;
    let caps = b.capabilities();
    let q = queue_name("ack");
    let m = message(&q, 7);
    let id = m.id().clone();
    publish(&b, vec![m.clone()]).await;

    let d = fetch_one(&b, &q, WAIT).await;
    let got = msg(&d);
    assert_eq!(got.id(), &id, "the delivered message is the published one");
    assert_eq!(got.headers.task, TASK);
    assert_eq!(got.body, m.body, "the body arrives unchanged");
    assert_eq!(got.queue(), q);
    assert_eq!(d.lease.id, id, "the lease names the task");
    assert_eq!(&*d.lease.queue, q.as_str(), "the lease names the queue");
    assert_eq!(d.deliveries, 1, "a first delivery counts 1");

    let result = TaskResult::success(id.clone(), json!(42));
    ok(
        b.settle(
            &d.lease,
            Settlement::Ack {
                result: Some(result.clone()),
            },
        )
        .await,
        "ack with a result",
    );
    assert_nothing(&b, &q, Duration::ZERO, "an acked message is removed").await;
    if caps.results {
        let stored = ok(b.get(&id).await, "get").expect("the ack stored its result");
        assert_eq!(stored.status, TaskState::Success);
        assert_eq!(stored.result, json!(42));
        assert_eq!(stored.task_id, id);
    }
    assert_kind(
        b.settle(&d.lease, Settlement::Ack { result: None }).await,
        ErrorKind::LeaseLost,
        "acking an attempt twice",
    );
}

/// An ack without a result removes the message and stores nothing.
pub async fn ack_without_result_stores_nothing<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("ack_none");
    let m = message(&q, 1);
    let id = m.id().clone();
    publish(&b, vec![m]).await;
    let d = fetch_one(&b, &q, WAIT).await;
    ok(
        b.settle(&d.lease, Settlement::Ack { result: None }).await,
        "ack",
    );
    assert_nothing(&b, &q, Duration::ZERO, "an acked message is removed").await;
    if b.capabilities().results {
        assert_eq!(ok(b.get(&id).await, "get"), None, "no result was given");
    }
}

/// Every header, the body and the routing survive the broker unchanged.
pub async fn message_round_trips<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("roundtrip");
    let mut m = with_priority(message(&q, 3), 4);
    m.headers.parent_id = Some(celeriac_core::TaskId::new());
    m.headers.group = Some("g-1".to_owned());
    m.headers.group_index = Some(2);
    // Both reprs set, as Celery's producer always sends them: a wire
    // backend may fill in a missing one for Python's logs.
    m.headers.argsrepr = Some("(3,)".to_owned());
    m.headers.kwargsrepr = Some("{'unicode': 'żółw 🐢'}".to_owned());
    m.headers.origin = Some("gen1@conformance".to_owned());
    m.headers.expires = Some(in_future(Duration::from_secs(24 * 3600)));
    m.headers
        .extra
        .insert("x-conformance".to_owned(), json!({"k": [1, "two"]}));
    m.body.kwargs.insert("unicode".to_owned(), json!("żółw 🐢"));
    m.body.embed.callbacks = Some(vec![json!({"task": "next", "args": [], "kwargs": {}})]);
    publish(&b, vec![m.clone()]).await;

    let d = fetch_one(&b, &q, WAIT).await;
    let got = msg(&d);
    assert_eq!(got.headers, m.headers, "headers arrive unchanged");
    assert_eq!(got.body, m.body, "the body arrives unchanged");
    assert_eq!(got.queue(), q);
    assert_eq!(got.priority(), 4);
    assert_eq!(got.properties.correlation_id, m.properties.correlation_id);
}

/// Release hands a message back for redelivery at once: a fetch that does
/// not wait gets it, as its second delivery, under a new token.
pub async fn release_makes_ready_at_once<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("release");
    publish(&b, vec![message(&q, 1)]).await;
    let d1 = fetch_one(&b, &q, WAIT).await;
    ok(b.settle(&d1.lease, Settlement::Release).await, "release");

    let d2 = fetch_one(&b, &q, Duration::ZERO).await;
    assert_eq!(d2.lease.id, d1.lease.id, "the released message comes back");
    assert_eq!(d2.deliveries, 2, "a redelivery counts 2");
    assert_ne!(
        d2.lease.token, d1.lease.token,
        "each delivery has its own token"
    );
    assert_kind(
        b.settle(&d1.lease, Settlement::Ack { result: None }).await,
        ErrorKind::LeaseLost,
        "acking the released attempt",
    );
    ok(
        b.settle(&d2.lease, Settlement::Ack { result: None }).await,
        "ack of the new attempt",
    );
}

/// One publish call with messages for two queues delivers every one, each
/// to its queue, in the order given.
pub async fn batch_publish_delivers_every_message<F: Fixture>(f: &F) {
    let b = f.open().await;
    let qa = queue_name("batch_a");
    let qb = queue_name("batch_b");
    let batch = vec![
        message(&qa, 0),
        message(&qb, 1),
        message(&qa, 2),
        message(&qb, 3),
        message(&qa, 4),
    ];
    publish(&b, batch).await;
    let a = fetch(&b, &[&qa], 10, WAIT).await;
    let bb = fetch(&b, &[&qb], 10, WAIT).await;
    assert_eq!(a.iter().map(arg).collect::<Vec<_>>(), vec![0, 2, 4]);
    assert_eq!(bb.iter().map(arg).collect::<Vec<_>>(), vec![1, 3]);
}

/// Publishing an empty batch succeeds and publishes nothing.
pub async fn empty_publish_is_ok<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("empty");
    ok(b.publish(Vec::new()).await, "publishing an empty batch");
    assert_nothing(&b, &q, Duration::ZERO, "nothing was published").await;
}

/// A fetch returns at most `max` messages, oldest first, whether they were
/// published one by one or in one batch.
pub async fn fetch_respects_max_and_fifo<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("fifo");
    for n in 0..5 {
        publish(&b, vec![message(&q, n)]).await;
    }
    publish(&b, (5..10).map(|n| message(&q, n)).collect()).await;

    let first = fetch(&b, &[&q], 3, WAIT).await;
    assert_eq!(first.iter().map(arg).collect::<Vec<_>>(), vec![0, 1, 2]);
    let second = fetch(&b, &[&q], 3, WAIT).await;
    assert_eq!(second.iter().map(arg).collect::<Vec<_>>(), vec![3, 4, 5]);
    let rest = fetch(&b, &[&q], 100, WAIT).await;
    assert_eq!(rest.iter().map(arg).collect::<Vec<_>>(), vec![6, 7, 8, 9]);
    assert_nothing(&b, &q, Duration::ZERO, "every message is leased").await;
}

/// A fetch with a zero wait on an empty queue returns at once, empty.
pub async fn fetch_without_wait_returns_at_once<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("nowait");
    let t = Instant::now();
    let got = fetch(&b, &[&q], 10, Duration::ZERO).await;
    assert!(got.is_empty());
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a zero-wait fetch took {:?}",
        t.elapsed()
    );
}

/// A message is delivered only from its own queue.
pub async fn queues_are_separate<F: Fixture>(f: &F) {
    let b = f.open().await;
    let qa = queue_name("sep_a");
    let qb = queue_name("sep_b");
    let m = message(&qa, 1);
    let id = m.id().clone();
    publish(&b, vec![m]).await;
    assert_nothing(&b, &qb, Duration::ZERO, "another queue's message").await;
    let got = fetch(&b, &[&qa], 10, WAIT).await;
    assert_eq!(ids(&got), vec![id]);
}
