//! Durability: for a broker that claims `durable`, everything survives
//! dropping every handle and opening a new one (a restart).

use std::time::Duration;

use celeriac_core::{Broker, ResultBackend, Settlement, TaskResult, TaskState};
use serde_json::json;
use tokio::time::Instant;

use crate::support::{
    assert_nothing, assert_reached, fetch_one, fetch_one_req, in_future, message, msg, ok, publish,
    queue_name, request, skip, with_eta, CLOCK_TOLERANCE, LONG_LEASE,
};
use crate::Fixture;

/// Ready, delayed and leased messages, results and dead letters survive a
/// restart; a lease taken before it still fences after it and ends on
/// time.
pub async fn survives_reopen<F: Fixture>(f: &F) {
    let first = f.open().await;
    let caps = first.capabilities();
    if !caps.durable {
        return skip("durability::survives_reopen", "durable");
    }
    let q = queue_name("durable");
    let ready = message(&q, 0);
    let leased = message(&q, 1);
    let eta = in_future(Duration::from_secs(4));
    let delayed = with_eta(message(&q, 2), eta);
    let dead = message(&q, 3);
    let (ready_id, leased_id, delayed_id, dead_id) = (
        ready.id().clone(),
        leased.id().clone(),
        delayed.id().clone(),
        dead.id().clone(),
    );

    publish(&first, vec![leased, dead]).await;
    let held = fetch_one(&first, &q, Duration::from_secs(5)).await;
    assert_eq!(held.lease.id, leased_id);
    let d = fetch_one(&first, &q, Duration::from_secs(5)).await;
    ok(
        first
            .settle(
                &d.lease,
                Settlement::DeadLetter {
                    reason: "conformance: before restart".to_owned(),
                    result: None,
                },
            )
            .await,
        "dead letter",
    );
    // The held lease gets a short remaining life so the case can see it
    // end, yet long enough that it cannot end before the checks below.
    let lease_for = Duration::from_secs(2);
    ok(
        first
            .extend(std::slice::from_ref(&held.lease), lease_for)
            .await,
        "extend",
    );
    let lease_set = Instant::now();
    publish(
        &first,
        if caps.delayed {
            vec![ready, delayed]
        } else {
            vec![ready]
        },
    )
    .await;
    let result_id = ready_id.clone();
    if caps.results {
        ok(
            first
                .store(TaskResult::success(result_id.clone(), json!("kept")))
                .await,
            "store",
        );
    }
    drop(first);

    let second = f.open().await;
    if caps.results {
        let r = ok(second.get(&result_id).await, "get").expect("a result survives a restart");
        assert_eq!(r.status, TaskState::Success);
    }
    if caps.admin {
        let dl = ok(second.dead_letters(10).await, "dead_letters");
        assert_eq!(dl.len(), 1, "a dead letter survives a restart");
        assert_eq!(dl[0].id, dead_id);
    }
    let d = fetch_one(&second, &q, Duration::ZERO).await;
    assert_eq!(d.lease.id, ready_id, "a ready message survives a restart");
    ok(
        second
            .settle(&d.lease, Settlement::Ack { result: None })
            .await,
        "ack",
    );

    // The lease taken before the restart still holds until it ends, then
    // the message comes back as its second delivery.
    let back = fetch_one_req(
        &second,
        &request(&[&q], 1, LONG_LEASE, Duration::from_secs(10)),
    )
    .await;
    if caps.delayed && back.lease.id == delayed_id {
        panic!("the delayed message came before the leased one, whose lease ends first");
    }
    assert_eq!(back.lease.id, leased_id);
    assert!(
        lease_set.elapsed() + CLOCK_TOLERANCE >= lease_for,
        "a lease taken before the restart ended early"
    );
    assert_eq!(back.deliveries, 2, "the delivery count survives a restart");
    let st = ok(
        second
            .settle(&held.lease, Settlement::Ack { result: None })
            .await
            .map(|()| "acked")
            .or_else(|e| {
                if e.kind() == celeriac_core::ErrorKind::LeaseLost {
                    Ok("refused")
                } else {
                    Err(e)
                }
            }),
        "ack by the pre-restart attempt",
    );
    assert_eq!(
        st, "refused",
        "a stale attempt from before the restart acked"
    );
    ok(
        second
            .settle(&back.lease, Settlement::Ack { result: None })
            .await,
        "ack",
    );

    if caps.delayed {
        let d = fetch_one(&second, &q, Duration::from_secs(10)).await;
        assert_eq!(
            d.lease.id, delayed_id,
            "a delayed message survives a restart"
        );
        assert_reached(eta, "a delayed message after a restart came before its eta");
        assert_eq!(msg(&d).headers.eta, Some(eta));
    }
    assert_nothing(&second, &q, Duration::ZERO, "everything was settled").await;
}
