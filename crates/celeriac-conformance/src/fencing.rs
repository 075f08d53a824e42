//! Fencing: an attempt whose lease is gone (expired and taken over, or
//! already settled) can neither settle, nor extend, nor store a result
//! over the attempt that replaced it.

use std::collections::HashSet;
use std::time::Duration;

use celeriac_core::{
    Broker, ErrorKind, ExceptionInfo, Lease, LeaseStatus, Message, ResultBackend, Settlement,
    TaskResult, TaskState,
};
use serde_json::json;

use crate::support::{
    assert_kind, assert_nothing, fetch, fetch_one, fetch_one_req, message, msg, ok, publish,
    queue_name, request, SHORT_LEASE,
};
use crate::Fixture;

const WAIT: Duration = Duration::from_secs(10);

/// Every kind of settlement, each carrying a result marked `tag`.
fn every_settlement(m: &Message, tag: &str) -> Vec<(&'static str, Settlement)> {
    let id = m.id().clone();
    let mut retry = m.clone();
    retry.headers.retries += 1;
    let exc = ExceptionInfo::new("RuntimeError", "builtins", tag);
    vec![
        (
            "ack",
            Settlement::Ack {
                result: Some(TaskResult::success(id.clone(), json!(tag))),
            },
        ),
        (
            "retry",
            Settlement::Retry {
                message: Box::new(retry),
                result: Some(TaskResult::new(
                    id.clone(),
                    TaskState::Retry,
                    exc.to_value(),
                    None,
                )),
            },
        ),
        ("release", Settlement::Release),
        (
            "dead letter",
            Settlement::DeadLetter {
                reason: format!("conformance: {tag}"),
                result: Some(TaskResult::failure(id, &exc, None)),
            },
        ),
    ]
}

async fn assert_fenced<B: Broker>(b: &B, stale: &Lease, m: &Message, when: &str) {
    for (name, s) in every_settlement(m, "stale") {
        assert_kind(
            b.settle(stale, s).await,
            ErrorKind::LeaseLost,
            &format!("{name} by a stale attempt ({when})"),
        );
    }
    let st = ok(
        b.extend(std::slice::from_ref(stale), Duration::from_secs(60))
            .await,
        "extend",
    );
    assert_eq!(
        st,
        vec![LeaseStatus::Lost],
        "extend by a stale attempt ({when})"
    );
}

/// The attempt whose lease expired and was taken over cannot settle (in
/// any way) or extend; its refused settlements store no result; the new
/// attempt acks with its result; afterwards the stale attempt still
/// cannot overwrite that result.
pub async fn stale_attempt_cannot_settle_or_extend<F: Fixture>(f: &F) {
    let b = f.open().await;
    let caps = b.capabilities();
    let q = queue_name("fence");
    let m = message(&q, 1);
    let id = m.id().clone();
    publish(&b, vec![m]).await;
    let d1 = fetch_one_req(&b, &request(&[&q], 1, SHORT_LEASE, WAIT)).await;
    let d2 = fetch_one(&b, &q, WAIT).await;
    assert_eq!(d2.lease.id, id, "redelivered after the short lease");
    assert_ne!(d1.lease.token, d2.lease.token);
    let m1 = msg(&d1).clone();

    assert_fenced(&b, &d1.lease, &m1, "while the new attempt runs").await;
    if caps.results {
        assert_eq!(
            ok(b.get(&id).await, "get"),
            None,
            "a refused settlement stored a result"
        );
    }
    let st = ok(
        b.extend(std::slice::from_ref(&d2.lease), Duration::from_secs(60))
            .await,
        "extend",
    );
    assert_eq!(
        st,
        vec![LeaseStatus::Held],
        "the new attempt holds the lease"
    );
    assert_nothing(
        &b,
        &q,
        Duration::ZERO,
        "refused settlements changed nothing",
    )
    .await;

    ok(
        b.settle(
            &d2.lease,
            Settlement::Ack {
                result: Some(TaskResult::success(id.clone(), json!("fresh"))),
            },
        )
        .await,
        "ack by the new attempt",
    );
    assert_fenced(&b, &d1.lease, &m1, "after the new attempt acked").await;
    if caps.results {
        let r = ok(b.get(&id).await, "get").expect("the new attempt's result");
        assert_eq!(r.status, TaskState::Success);
        assert_eq!(
            r.result,
            json!("fresh"),
            "a stale attempt overwrote the result"
        );
    }
    assert_nothing(&b, &q, Duration::ZERO, "the message was acked once for all").await;
}

/// Once an attempt is settled, a second settlement of any kind with the
/// same lease fails with `LeaseLost` and changes nothing.
pub async fn settled_attempt_cannot_settle_again<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("twice");
    publish(&b, vec![message(&q, 1)]).await;
    let d = fetch_one(&b, &q, WAIT).await;
    let m = msg(&d).clone();
    ok(
        b.settle(&d.lease, Settlement::Ack { result: None }).await,
        "ack",
    );
    assert_fenced(&b, &d.lease, &m, "after its own ack").await;
    assert_nothing(&b, &q, Duration::ZERO, "a refused retry or release").await;
}

/// A lease whose token was altered is refused, and the real lease still
/// works.
pub async fn forged_token_is_refused<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("forged");
    publish(&b, vec![message(&q, 1)]).await;
    let d = fetch_one(&b, &q, WAIT).await;
    let m = msg(&d).clone();
    for delta in [1u64, 1 << 32, u64::MAX] {
        let mut forged = d.lease.clone();
        forged.token = forged.token.wrapping_add(delta);
        assert_fenced(&b, &forged, &m, "with an altered token").await;
    }
    let st = ok(
        b.extend(std::slice::from_ref(&d.lease), Duration::from_secs(60))
            .await,
        "extend",
    );
    assert_eq!(st, vec![LeaseStatus::Held]);
    ok(
        b.settle(&d.lease, Settlement::Ack { result: None }).await,
        "ack by the real lease",
    );
}

/// Every delivery of a message carries a token that message never had
/// before (fencing needs no more: a lease also names its message).
pub async fn tokens_are_fresh_per_delivery<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("tokens");
    publish(&b, (0..5).map(|n| message(&q, n)).collect()).await;
    let mut seen = HashSet::new();
    for round in 0..4 {
        let got = fetch(&b, &[&q], 5, WAIT).await;
        assert_eq!(got.len(), 5, "round {round}");
        for d in &got {
            assert!(
                seen.insert((d.lease.id.clone(), d.lease.token)),
                "token {} reused for {:?} in round {round}",
                d.lease.token,
                d.lease.id
            );
            ok(b.settle(&d.lease, Settlement::Release).await, "release");
        }
    }
}

/// `settle_many` ends each attempt of a batch on its own: a lease settled
/// before the batch and one named twice in it are refused with
/// `LeaseLost`, the others are settled as asked (ack with its result,
/// release, retry, dead letter), in one call.
pub async fn settle_many_fences_each_settlement<F: Fixture>(f: &F) {
    let b = f.open().await;
    let caps = b.capabilities();
    let q = queue_name("many");
    publish(&b, (0..5).map(|n| message(&q, n)).collect()).await;
    let mut got = fetch(&b, &[&q], 5, WAIT).await;
    assert_eq!(got.len(), 5, "all five fetched");
    got.sort_by_key(crate::support::arg);
    ok(
        b.settle(&got[0].lease, Settlement::Ack { result: None })
            .await,
        "ack before the batch",
    );
    let id1 = got[1].lease.id.clone();
    let mut retry = msg(&got[3]).clone();
    retry.headers.retries += 1;
    let exc = ExceptionInfo::new("RuntimeError", "builtins", "many");
    let batch = vec![
        (got[0].lease.clone(), Settlement::Ack { result: None }),
        (
            got[1].lease.clone(),
            Settlement::Ack {
                result: Some(TaskResult::success(id1.clone(), json!("one"))),
            },
        ),
        (got[2].lease.clone(), Settlement::Release),
        (
            got[3].lease.clone(),
            Settlement::Retry {
                message: Box::new(retry),
                result: None,
            },
        ),
        (
            got[4].lease.clone(),
            Settlement::DeadLetter {
                reason: "conformance: many".to_owned(),
                result: Some(TaskResult::failure(got[4].lease.id.clone(), &exc, None)),
            },
        ),
        (got[1].lease.clone(), Settlement::Ack { result: None }),
    ];
    let out = b.settle_many(&batch).await;
    assert_eq!(out.len(), batch.len(), "one outcome per settlement");
    let kinds: Vec<Option<ErrorKind>> = out
        .iter()
        .map(|r| r.as_ref().err().map(celeriac_core::Error::kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            Some(ErrorKind::LeaseLost),
            None,
            None,
            None,
            None,
            Some(ErrorKind::LeaseLost)
        ],
        "outcomes in order: {out:?}"
    );
    if caps.results {
        let r = ok(b.get(&id1).await, "get").expect("the ack's result");
        assert_eq!(r.result, json!("one"));
        let r = ok(b.get(&got[4].lease.id).await, "get").expect("the dead letter's result");
        assert_eq!(r.status, TaskState::Failure);
    }
    // The released and the retried message come back; nothing else does.
    let mut back = fetch(&b, &[&q], 5, WAIT).await;
    if back.len() < 2 {
        back.extend(fetch(&b, &[&q], 5, WAIT).await);
    }
    back.sort_by_key(crate::support::arg);
    let seen: Vec<(u64, u32)> = back
        .iter()
        .map(|d| (crate::support::arg(d), msg(d).headers.retries))
        .collect();
    assert_eq!(seen, vec![(2, 0), (3, 1)], "released and retried");
    for d in &back {
        ok(
            b.settle(&d.lease, Settlement::Ack { result: None }).await,
            "ack",
        );
    }
    assert_nothing(&b, &q, Duration::ZERO, "the batch settled the rest").await;
    if caps.admin {
        let dead = ok(b.dead_letters(100).await, "dead_letters");
        assert!(
            dead.iter().any(|d| d.id == got[4].lease.id),
            "the dead letter is listed: {dead:?}"
        );
    }
}
