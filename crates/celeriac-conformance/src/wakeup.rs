//! Blocking fetches: they wait up to `FetchRequest::wait`, wake when a
//! message is published (by this handle or another), and are cancel safe.

use std::pin::pin;
use std::time::Duration;

use celeriac_core::{Broker, Settlement};
use tokio::time::Instant;

use crate::support::{
    assert_pending_for, fetch, fetch_one, ids, message, publish, queue_name, request, wake_bound,
    LONG_LEASE,
};
use crate::Fixture;

/// How long a blocked fetch is driven before the publish that must wake it,
/// so that it is parked when the publish happens.
const PARK: Duration = Duration::from_millis(300);

/// A fetch on an empty queue waits (about) its `wait`, then returns empty.
pub async fn fetch_waits_when_empty<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("idle");
    let wait = Duration::from_millis(400);
    let t = Instant::now();
    let got = fetch(&b, &[&q], 10, wait).await;
    let took = t.elapsed();
    assert!(got.is_empty());
    // A little slack below: the broker may measure with another clock.
    assert!(
        took >= wait - Duration::from_millis(50),
        "an idle fetch returned after {took:?}, before its wait of {wait:?}"
    );
    assert!(
        took < wait + Duration::from_secs(2),
        "an idle fetch overslept its wait of {wait:?}: {took:?}"
    );
}

pub(crate) async fn wakes_on_publish<B: Broker>(waiter: &B, publisher: &B, what: &str) {
    let q = queue_name("wake");
    let bound = wake_bound(&waiter.capabilities());
    let req = request(&[&q], 1, LONG_LEASE, Duration::from_secs(30));
    let mut fut = pin!(waiter.fetch(&req));
    assert_pending_for(&mut fut, PARK, "a fetch on an empty queue").await;

    let m = message(&q, 1);
    let id = m.id().clone();
    let t = Instant::now();
    publish(publisher, vec![m]).await;
    let got = match tokio::time::timeout(bound, &mut fut).await {
        Ok(r) => r.unwrap_or_else(|e| panic!("blocked fetch failed: {}", e.chain_text())),
        Err(_) => panic!("{what}: a blocked fetch did not wake within {bound:?} of a publish"),
    };
    assert_eq!(
        ids(&got),
        vec![id],
        "{what}: the woken fetch returns the message"
    );
    assert!(t.elapsed() < bound);
}

/// A fetch blocked on an empty queue wakes when a clone of its handle
/// publishes, well before its wait ends.
pub async fn fetch_wakes_on_publish<F: Fixture>(f: &F) {
    let b = f.open().await;
    let other = b.clone();
    wakes_on_publish(&b, &other, "publish from a clone").await;
}

/// A fetch blocked on one handle wakes when a separately opened handle
/// (for a durable backend: another connection, as another process would
/// hold) publishes.
pub async fn fetch_wakes_on_publish_from_another_handle<F: Fixture>(f: &F) {
    let waiter = f.open().await;
    let publisher = f.open().await;
    wakes_on_publish(&waiter, &publisher, "publish from another handle").await;
}

/// A fetch blocked on several queues wakes for a publish to any of them.
pub async fn fetch_wakes_for_any_of_its_queues<F: Fixture>(f: &F) {
    let b = f.open().await;
    let bound = wake_bound(&b.capabilities());
    let qa = queue_name("any_a");
    let qb = queue_name("any_b");
    let qc = queue_name("any_c");
    let req = request(&[&qa, &qb, &qc], 5, LONG_LEASE, Duration::from_secs(30));
    let mut fut = pin!(b.fetch(&req));
    assert_pending_for(&mut fut, PARK, "a fetch on empty queues").await;
    let m = message(&qc, 1);
    let id = m.id().clone();
    publish(&b.clone(), vec![m]).await;
    let got = match tokio::time::timeout(bound, &mut fut).await {
        Ok(r) => r.unwrap_or_else(|e| panic!("blocked fetch failed: {}", e.chain_text())),
        Err(_) => panic!("a fetch on three queues did not wake for the third within {bound:?}"),
    };
    assert_eq!(ids(&got), vec![id]);
}

/// A fetch blocked on a queue whose only message is leased (by another
/// handle) wakes when that lease is released, long before it would end.
pub async fn fetch_wakes_on_release<F: Fixture>(f: &F) {
    let holder = f.open().await;
    let waiter = f.open().await;
    let bound = wake_bound(&waiter.capabilities());
    let q = queue_name("wake_release");
    let m = message(&q, 1);
    let id = m.id().clone();
    publish(&holder, vec![m]).await;
    let d = fetch_one(&holder, &q, Duration::from_secs(5)).await;

    let req = request(&[&q], 1, LONG_LEASE, Duration::from_secs(30));
    let mut fut = pin!(waiter.fetch(&req));
    assert_pending_for(&mut fut, PARK, "a fetch on a queue whose message is leased").await;
    let t = Instant::now();
    if let Err(e) = holder.settle(&d.lease, Settlement::Release).await {
        panic!("release failed: {}", e.chain_text());
    }
    let got = match tokio::time::timeout(bound, &mut fut).await {
        Ok(r) => r.unwrap_or_else(|e| panic!("blocked fetch failed: {}", e.chain_text())),
        Err(_) => panic!("a blocked fetch did not wake within {bound:?} of a release"),
    };
    assert!(t.elapsed() < bound);
    assert_eq!(ids(&got), vec![id]);
    assert_eq!(got[0].deliveries, 2);
}

/// Cancel safety: a fetch dropped while it waits leases nothing, so a
/// message published afterwards goes to the next fetch, as a first
/// delivery. (Had the dropped fetch leased it, it would stay hidden for the
/// dropped fetch's long lease.)
pub async fn dropped_fetch_leases_nothing<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("cancel");
    {
        let req = request(&[&q], 10, LONG_LEASE, Duration::from_secs(30));
        let mut fut = pin!(b.fetch(&req));
        assert_pending_for(&mut fut, PARK, "a fetch on an empty queue").await;
        // Dropped here, mid-wait.
    }
    let m = message(&q, 1);
    let id = m.id().clone();
    publish(&b, vec![m]).await;
    let d = fetch_one(&b, &q, Duration::from_secs(2)).await;
    assert_eq!(d.lease.id, id);
    assert_eq!(d.deliveries, 1, "the dropped fetch did not deliver it");

    // The same with a fetch dropped the instant after the publish that
    // wakes it: the message may be leased by nobody or by the dropped
    // fetch, but never lost for good. Here it must come back within the
    // short lease the dropped fetch asked for.
    let m = message(&q, 2);
    let id = m.id().clone();
    {
        let req = request(
            &[&q],
            10,
            Duration::from_millis(300),
            Duration::from_secs(30),
        );
        let mut fut = pin!(b.fetch(&req));
        assert_pending_for(&mut fut, PARK, "a fetch on an empty queue").await;
        publish(&b, vec![m]).await;
        // Dropped without being polled again.
    }
    let d = fetch_one(&b, &q, Duration::from_secs(5)).await;
    assert_eq!(
        d.lease.id, id,
        "the message published under a dropped fetch"
    );
}
