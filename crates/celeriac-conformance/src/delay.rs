//! Delayed work: a message whose eta lies ahead is held by the broker, not
//! delivered before it, and delivered promptly at it; a retry replaces the
//! message and honours its new eta.

use std::pin::pin;
use std::time::Duration;

use celeriac_core::{
    Broker, ErrorKind, ExceptionInfo, Message, ResultBackend, Settlement, TaskResult, TaskState,
};
use chrono::{DateTime, Utc};

use crate::support::{
    assert_kind, assert_nothing, assert_pending_for, assert_reached, fetch, fetch_one, ids,
    in_future, message, msg, ok, publish, queue_name, request, skip, with_eta, with_priority,
    DUE_WAKE_BOUND, LONG_LEASE,
};
use crate::Fixture;

const WAIT: Duration = Duration::from_secs(10);

/// Checks with a zero-wait fetch that the message with `eta` is not
/// delivered yet. Returns false when it was delivered because `eta` had
/// already passed (a slow publish), in which case the caller stops early.
async fn not_yet<B: Broker>(b: &B, q: &str, eta: DateTime<Utc>) -> bool {
    let got = fetch(b, &[q], 10, Duration::ZERO).await;
    if got.is_empty() {
        return true;
    }
    assert_reached(eta, "a delayed message was delivered before its eta");
    false
}

/// A message with an eta ahead is not delivered before it; a fetch waiting
/// meanwhile receives it once due, promptly, as a first delivery.
pub async fn eta_is_honoured<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().delayed {
        return skip("delay::eta_is_honoured", "delayed");
    }
    let q = queue_name("eta");
    let eta = in_future(Duration::from_millis(800));
    publish(&b, vec![with_eta(message(&q, 1), eta)]).await;
    if !not_yet(&b, &q, eta).await {
        return;
    }
    let d = fetch_one(&b, &q, WAIT).await;
    assert_reached(eta, "a delayed message was delivered before its eta");
    let late = Utc::now() - eta;
    assert!(
        late.to_std().unwrap_or_default() < DUE_WAKE_BOUND,
        "a waiting fetch received a due message {late} late: not woken by the eta"
    );
    assert_eq!(d.deliveries, 1);
    assert_eq!(msg(&d).headers.eta, Some(eta), "the eta header is kept");
}

/// A fetch already waiting when a delayed message is published (by
/// another handle) receives it at its eta: the wait re-arms on publish.
pub async fn blocked_fetch_sees_eta_published_later<F: Fixture>(f: &F) {
    let waiter = f.open().await;
    if !waiter.capabilities().delayed {
        return skip("delay::blocked_fetch_sees_eta_published_later", "delayed");
    }
    let publisher = f.open().await;
    let q = queue_name("eta_later");
    let req = request(&[&q], 1, LONG_LEASE, Duration::from_secs(30));
    let mut fut = pin!(waiter.fetch(&req));
    assert_pending_for(
        &mut fut,
        Duration::from_millis(300),
        "a fetch on an empty queue",
    )
    .await;
    let eta = in_future(Duration::from_millis(700));
    let m = with_eta(message(&q, 1), eta);
    let id = m.id().clone();
    publish(&publisher, vec![m]).await;
    let got =
        match tokio::time::timeout(Duration::from_millis(700) + DUE_WAKE_BOUND, &mut fut).await {
            Ok(r) => r.unwrap_or_else(|e| panic!("blocked fetch failed: {}", e.chain_text())),
            Err(_) => panic!(
                "a waiting fetch did not receive a message published with an eta when it came due"
            ),
        };
    assert_reached(eta, "a delayed message was delivered before its eta");
    assert_eq!(ids(&got), vec![id]);
}

/// An eta in the past means ready now.
pub async fn past_eta_is_ready_at_once<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("eta_past");
    let eta = Utc::now() - chrono::TimeDelta::hours(1);
    let m = with_eta(message(&q, 1), eta);
    let id = m.id().clone();
    publish(&b, vec![m]).await;
    let d = fetch_one(&b, &q, Duration::ZERO).await;
    assert_eq!(d.lease.id, id);
}

/// A delayed message, even of the highest priority, does not hold back
/// ready ones behind it.
pub async fn delayed_message_does_not_block_ready_ones<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().delayed {
        return skip(
            "delay::delayed_message_does_not_block_ready_ones",
            "delayed",
        );
    }
    let q = queue_name("eta_block");
    let later = with_priority(
        with_eta(message(&q, 0), in_future(Duration::from_secs(3600))),
        9,
    );
    let now = message(&q, 1);
    let id = now.id().clone();
    publish(&b, vec![later, now]).await;
    let got = fetch(&b, &[&q], 10, Duration::from_secs(5)).await;
    assert_eq!(ids(&got), vec![id], "only the ready message is delivered");
}

fn retry_of(m: &Message, eta: Option<DateTime<Utc>>) -> Message {
    let mut next = m.clone();
    next.headers.retries += 1;
    next.headers.eta = eta;
    next
}

fn retry_result(m: &Message) -> TaskResult {
    let exc = ExceptionInfo::new("Retry", "celery.exceptions", "conformance retry");
    TaskResult::new(m.id().clone(), TaskState::Retry, exc.to_value(), None)
}

/// A retry replaces the message (same id, `retries + 1`) in one step with
/// its `RETRY` result; the new eta is honoured; the old attempt's lease is
/// spent.
pub async fn retry_with_new_eta_is_honoured<F: Fixture>(f: &F) {
    let b = f.open().await;
    let caps = b.capabilities();
    if !caps.delayed {
        return skip("delay::retry_with_new_eta_is_honoured", "delayed");
    }
    let q = queue_name("retry_eta");
    let m = message(&q, 1);
    let id = m.id().clone();
    publish(&b, vec![m]).await;
    let d1 = fetch_one(&b, &q, WAIT).await;
    let eta = in_future(Duration::from_millis(800));
    let next = retry_of(msg(&d1), Some(eta));
    ok(
        b.settle(
            &d1.lease,
            Settlement::Retry {
                message: Box::new(next),
                result: Some(retry_result(msg(&d1))),
            },
        )
        .await,
        "retry",
    );
    if caps.results {
        let r = ok(b.get(&id).await, "get").expect("the retry stored its result");
        assert_eq!(r.status, TaskState::Retry);
    }
    assert_kind(
        b.settle(&d1.lease, Settlement::Ack { result: None }).await,
        ErrorKind::LeaseLost,
        "acking the attempt that was retried",
    );
    if !not_yet(&b, &q, eta).await {
        return;
    }
    let d2 = fetch_one(&b, &q, WAIT).await;
    assert_reached(eta, "a retry was delivered before its eta");
    let late = (Utc::now() - eta).to_std().unwrap_or_default();
    assert!(late < DUE_WAKE_BOUND, "a due retry arrived {late:?} late");
    assert_eq!(msg(&d2).id(), &id, "a retry keeps the task id");
    assert_eq!(
        msg(&d2).headers.retries,
        1,
        "the replacement message is delivered"
    );
    ok(
        b.settle(&d2.lease, Settlement::Ack { result: None }).await,
        "ack of the retry",
    );
}

/// A retry without an eta is ready at once, as the replacement message.
pub async fn retry_without_eta_is_ready_at_once<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("retry_now");
    let m = message(&q, 1);
    let id = m.id().clone();
    publish(&b, vec![m]).await;
    let d1 = fetch_one(&b, &q, WAIT).await;
    let next = retry_of(msg(&d1), None);
    ok(
        b.settle(
            &d1.lease,
            Settlement::Retry {
                message: Box::new(next),
                result: None,
            },
        )
        .await,
        "retry",
    );
    let d2 = fetch_one(&b, &q, Duration::ZERO).await;
    assert_eq!(msg(&d2).id(), &id);
    assert_eq!(msg(&d2).headers.retries, 1);
    assert_ne!(d2.lease.token, d1.lease.token);
    assert_nothing(&b, &q, Duration::ZERO, "the retry replaced the message").await;
    // The retried attempt stays fenced off even now that its replacement
    // is leased (a token that restarted with the new message would pass).
    assert_kind(
        b.settle(&d1.lease, Settlement::Ack { result: None }).await,
        ErrorKind::LeaseLost,
        "acking the attempt that was retried",
    );
    ok(
        b.settle(&d2.lease, Settlement::Ack { result: None }).await,
        "ack of the retry",
    );
}
