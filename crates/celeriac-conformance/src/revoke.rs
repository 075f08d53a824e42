//! Revocation: a waiting task is removed and never delivered; a running
//! one is flagged and its worker learns at the next `extend`; an unknown
//! id is reported as such and remembered.

use std::time::Duration;

use celeriac_core::{Broker, LeaseStatus, Revoked, Settlement};

use crate::support::{
    assert_nothing, fetch, fetch_one, in_future, message, ok, publish, queue_name, skip, with_eta,
};
use crate::Fixture;

const WAIT: Duration = Duration::from_secs(5);

/// Revoking a waiting message removes it: it is never delivered, and its
/// queue's other messages are untouched. A delayed message is removed the
/// same way and does not appear at its eta.
pub async fn revoke_waiting_removes_it<F: Fixture>(f: &F) {
    let b = f.open().await;
    let caps = b.capabilities();
    if !caps.revoke {
        return skip("revoke::revoke_waiting_removes_it", "revoke");
    }
    let q = queue_name("revoke");
    let doomed = message(&q, 0);
    let kept = message(&q, 1);
    let doomed_id = doomed.id().clone();
    let kept_id = kept.id().clone();
    publish(&b, vec![doomed, kept]).await;
    assert_eq!(ok(b.revoke(&doomed_id).await, "revoke"), Revoked::Removed);
    let d = fetch_one(&b, &q, WAIT).await;
    assert_eq!(d.lease.id, kept_id, "the other message is untouched");
    assert_nothing(&b, &q, Duration::ZERO, "a revoked message").await;

    if caps.delayed {
        let m = with_eta(message(&q, 2), in_future(Duration::from_millis(300)));
        let id = m.id().clone();
        publish(&b, vec![m]).await;
        assert_eq!(ok(b.revoke(&id).await, "revoke delayed"), Revoked::Removed);
        assert_nothing(
            &b,
            &q,
            Duration::from_millis(1000),
            "a revoked delayed message at its eta",
        )
        .await;
    }
}

/// Revoking a leased message reports `Running`; the holder's next
/// `extend` reports `Revoked`, and it may still settle.
pub async fn revoke_running_is_reported_on_extend<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().revoke {
        return skip("revoke::revoke_running_is_reported_on_extend", "revoke");
    }
    let q = queue_name("revoke_run");
    publish(&b, vec![message(&q, 0)]).await;
    let d = fetch_one(&b, &q, WAIT).await;
    assert_eq!(ok(b.revoke(&d.lease.id).await, "revoke"), Revoked::Running);
    let st = ok(
        b.extend(std::slice::from_ref(&d.lease), Duration::from_secs(60))
            .await,
        "extend",
    );
    assert_eq!(st, vec![LeaseStatus::Revoked]);
    ok(
        b.settle(&d.lease, Settlement::Ack { result: None }).await,
        "ack of a revoked running task",
    );
    assert_nothing(&b, &q, Duration::ZERO, "the revoked task was settled").await;
}

/// Revoking an id the broker has never seen reports `Unknown`, and the
/// revocation is remembered: a message with that id published afterwards
/// either is never delivered, or (the contract leaves the choice open)
/// arrives flagged, so that its first `extend` reports `Revoked`. Other
/// messages are untouched.
pub async fn revoke_unknown_is_remembered<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().revoke {
        return skip("revoke::revoke_unknown_is_remembered", "revoke");
    }
    let q = queue_name("revoke_early");
    let early = message(&q, 0);
    let id = early.id().clone();
    assert_eq!(ok(b.revoke(&id).await, "revoke"), Revoked::Unknown);
    let other = message(&q, 1);
    let other_id = other.id().clone();
    ok(
        b.publish(vec![early, other]).await,
        "publishing after an early revocation",
    );
    let mut got = fetch(&b, &[&q], 10, WAIT).await;
    if !got.iter().any(|d| d.lease.id == other_id) {
        got.extend(fetch(&b, &[&q], 10, WAIT).await);
    }
    assert!(
        got.iter().any(|d| d.lease.id == other_id),
        "the message nobody revoked is delivered"
    );
    for d in got.iter().filter(|d| d.lease.id == id) {
        let st = ok(
            b.extend(std::slice::from_ref(&d.lease), Duration::from_secs(60))
                .await,
            "extend",
        );
        assert_eq!(
            st,
            vec![LeaseStatus::Revoked],
            "a message revoked before it was published was delivered unflagged"
        );
    }
    assert_nothing(
        &b,
        &q,
        Duration::from_millis(500),
        "a message revoked before it was published",
    )
    .await;
}
