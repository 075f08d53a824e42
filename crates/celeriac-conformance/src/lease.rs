//! Leases: expiry and redelivery, extension, delivery counts, and the
//! guarantee that no message is leased to two fetchers at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac_core::{Broker, ErrorKind, LeaseStatus, Settlement, TaskId};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::support::{
    assert_kind, assert_nothing, fetch, fetch_one, fetch_one_req, message, msg, ok, publish,
    queue_name, request, CLOCK_TOLERANCE, DUE_WAKE_BOUND, LONG_LEASE, SHORT_LEASE,
};
use crate::Fixture;

/// A lease that is not settled or extended ends, and the message is
/// delivered again: not before the lease ends, promptly after (a fetch
/// waiting meanwhile, on another handle, wakes on the expiry), as delivery
/// 2 under a new token. The expired attempt can no longer settle; the new
/// one can.
pub async fn lease_expiry_redelivers<F: Fixture>(f: &F) {
    let b = f.open().await;
    let other = f.open().await;
    let q = queue_name("expiry");
    publish(&b, vec![message(&q, 1)]).await;

    let start = Instant::now();
    let d1 = fetch_one_req(&b, &request(&[&q], 1, SHORT_LEASE, Duration::from_secs(5))).await;
    assert_eq!(d1.deliveries, 1);

    let d2 = fetch_one(&other, &q, Duration::from_secs(10)).await;
    let at = start.elapsed();
    assert!(
        at + CLOCK_TOLERANCE >= SHORT_LEASE,
        "redelivered after {at:?}, before the lease of {SHORT_LEASE:?} ended"
    );
    assert!(
        at < SHORT_LEASE + DUE_WAKE_BOUND,
        "a waiting fetch woke {at:?} after a lease of {SHORT_LEASE:?}: not woken by the expiry"
    );
    assert_eq!(d2.lease.id, d1.lease.id);
    assert_eq!(d2.deliveries, 2, "a redelivery after expiry counts 2");
    assert_ne!(d2.lease.token, d1.lease.token);

    assert_kind(
        b.settle(&d1.lease, Settlement::Ack { result: None }).await,
        ErrorKind::LeaseLost,
        "acking the expired attempt",
    );
    ok(
        b.settle(&d2.lease, Settlement::Ack { result: None }).await,
        "ack of the new attempt",
    );
    assert_nothing(&b, &q, Duration::ZERO, "the message was acked").await;
}

/// Extending a lease keeps it: the message is not redelivered when the
/// original lease would have ended, and the attempt can still ack.
pub async fn extend_keeps_lease<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("extend");
    publish(&b, vec![message(&q, 1)]).await;
    let d = fetch_one_req(&b, &request(&[&q], 1, SHORT_LEASE, Duration::from_secs(5))).await;
    let st = ok(
        b.extend(std::slice::from_ref(&d.lease), LONG_LEASE).await,
        "extend",
    );
    assert_eq!(st, vec![LeaseStatus::Held]);
    assert_nothing(
        &b,
        &q,
        SHORT_LEASE * 3,
        "an extended lease outlives its original end",
    )
    .await;
    ok(
        b.settle(&d.lease, Settlement::Ack { result: None }).await,
        "ack after extending",
    );
}

/// `extend(by)` counts from the moment of the call: the message comes back
/// no earlier than `by` after it, and promptly then.
pub async fn extend_moves_lease_end<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("extend_by");
    publish(&b, vec![message(&q, 1)]).await;
    let d = fetch_one_req(&b, &request(&[&q], 1, SHORT_LEASE, Duration::from_secs(5))).await;
    let by = Duration::from_millis(1000);
    let t = Instant::now();
    let st = ok(b.extend(std::slice::from_ref(&d.lease), by).await, "extend");
    assert_eq!(st, vec![LeaseStatus::Held]);

    let d2 = fetch_one(&b, &q, Duration::from_secs(10)).await;
    let at = t.elapsed();
    assert!(
        at + CLOCK_TOLERANCE >= by,
        "redelivered {at:?} after extending by {by:?}"
    );
    assert!(
        at < by + DUE_WAKE_BOUND,
        "redelivered {at:?} after extending by {by:?}: not woken by the expiry"
    );
    assert_eq!(d2.deliveries, 2);
}

/// An attempt whose lease ended, but whose message nobody has fetched
/// since, still holds the only token: `extend` takes the lease back
/// (`Held`: only a lease taken by another attempt, or settled, is `Lost`)
/// and its settlement succeeds (settle succeeds if and only if the message
/// exists and its token is the lease's).
pub async fn late_settle_before_redelivery_succeeds<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("late");
    let m = message(&q, 1);
    let id = m.id().clone();
    publish(&b, vec![m]).await;
    let lease = Duration::from_millis(200);
    let d = fetch_one_req(&b, &request(&[&q], 1, lease, Duration::from_secs(5))).await;
    // The lease running out on the wall clock is the thing under test, so
    // this case waits for its end (plus a margin) rather than for an event.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let st = ok(
        b.extend(std::slice::from_ref(&d.lease), LONG_LEASE).await,
        "a late extend, with no newer attempt",
    );
    assert_eq!(
        st,
        vec![LeaseStatus::Held],
        "a late extend, with no newer attempt"
    );
    assert_nothing(&b, &q, Duration::ZERO, "a lease taken back by extend").await;
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    ok(
        b.settle(
            &d.lease,
            Settlement::Ack {
                result: Some(celeriac_core::TaskResult::success(
                    id.clone(),
                    serde_json::json!("late"),
                )),
            },
        )
        .await,
        "a late ack, with no newer attempt",
    );
    assert_nothing(&b, &q, Duration::ZERO, "a late ack removes the message").await;
    if b.capabilities().results {
        let r = ok(celeriac_core::ResultBackend::get(&b, &id).await, "get");
        assert_eq!(r.map(|r| r.result), Some(serde_json::json!("late")));
    }
}

/// Workers that run past their short leases, or die without settling,
/// race each other for redeliveries on two handles: every message is
/// acknowledged successfully exactly once, a refused ack is `LeaseLost`,
/// and each stored result is the one of the attempt whose ack succeeded.
pub async fn exactly_one_ack_under_expiry_races<F: Fixture>(f: &F) {
    const TOTAL: u64 = 300;
    const FETCHERS: u64 = 8;
    let h1 = f.open().await;
    let h2 = f.open().await;
    let results = h1.capabilities().results;
    let q = queue_name("expiry_race");
    publish(&h1, (0..TOTAL).map(|n| message(&q, n)).collect()).await;

    // Per id: the tokens whose ack succeeded.
    let acked: Arc<Mutex<HashMap<TaskId, Vec<u64>>>> = Arc::default();
    let mut tasks = JoinSet::new();
    for i in 0..FETCHERS {
        let b = if i % 2 == 0 { h1.clone() } else { h2.clone() };
        let acked = acked.clone();
        let q = q.clone();
        tasks.spawn(async move {
            let req = request(
                &[&q],
                2,
                Duration::from_millis(100),
                Duration::from_millis(300),
            );
            loop {
                let done = acked.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
                if done == TOTAL {
                    return;
                }
                let got = match b.fetch(&req).await {
                    Ok(g) => g,
                    Err(e) => panic!("fetcher {i}: fetch failed: {}", e.chain_text()),
                };
                for d in got {
                    let n = crate::support::arg(&d);
                    let k = n + u64::from(d.deliveries) * 7 + i;
                    // Some first attempts die: never settled, left to expire.
                    if d.deliveries < 3 && k % 5 == 0 {
                        continue;
                    }
                    // Simulated run time, from well inside the 100 ms lease
                    // to well past it; not used to order anything.
                    tokio::time::sleep(Duration::from_millis(k * 37 % 180)).await;
                    let result = celeriac_core::TaskResult::success(
                        d.lease.id.clone(),
                        serde_json::json!(d.lease.token),
                    );
                    match b
                        .settle(
                            &d.lease,
                            Settlement::Ack {
                                result: Some(result),
                            },
                        )
                        .await
                    {
                        Ok(()) => acked
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(d.lease.id.clone())
                            .or_default()
                            .push(d.lease.token),
                        Err(e) if e.kind() == ErrorKind::LeaseLost => {}
                        Err(e) => {
                            panic!("fetcher {i}: ack failed ({}): {}", e.kind(), e.chain_text())
                        }
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let twice: Vec<_> = acked.iter().filter(|(_, t)| t.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{} message(s) acked successfully by more than one attempt, e.g. {:?}",
        twice.len(),
        twice.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(acked.len() as u64, TOTAL);
    assert_nothing(&h2, &q, Duration::ZERO, "every message was acked").await;
    if results {
        for (id, tokens) in &acked {
            let r = ok(celeriac_core::ResultBackend::get(&h2, id).await, "get")
                .expect("an acked message's result");
            assert_eq!(
                r.result,
                serde_json::json!(tokens[0]),
                "the stored result is not the one of the attempt whose ack succeeded"
            );
        }
    }
}

/// `extend` reports each lease's status in the order given; an empty
/// slice gives an empty report.
pub async fn extend_reports_each_lease_in_order<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("extend_many");
    publish(&b, vec![message(&q, 0), message(&q, 1), message(&q, 2)]).await;
    let got = fetch(&b, &[&q], 3, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3);
    ok(
        b.settle(&got[1].lease, Settlement::Ack { result: None })
            .await,
        "ack",
    );
    let leases: Vec<_> = got.iter().map(|d| d.lease.clone()).collect();
    let st = ok(b.extend(&leases, LONG_LEASE).await, "extend");
    assert_eq!(
        st,
        vec![LeaseStatus::Held, LeaseStatus::Lost, LeaseStatus::Held]
    );
    let st = ok(b.extend(&[], LONG_LEASE).await, "extend nothing");
    assert!(st.is_empty());
}

/// `deliveries` counts every delivery: releases and expiries alike.
pub async fn deliveries_count_every_redelivery<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("count");
    publish(&b, vec![message(&q, 1)]).await;
    let wait = Duration::from_secs(10);
    let d1 = fetch_one(&b, &q, wait).await;
    assert_eq!(d1.deliveries, 1);
    ok(b.settle(&d1.lease, Settlement::Release).await, "release");
    let d2 = fetch_one_req(&b, &request(&[&q], 1, SHORT_LEASE, wait)).await;
    assert_eq!(d2.deliveries, 2);
    // Left to expire.
    let d3 = fetch_one(&b, &q, wait).await;
    assert_eq!(d3.deliveries, 3);
    ok(b.settle(&d3.lease, Settlement::Release).await, "release");
    let d4 = fetch_one(&b, &q, wait).await;
    assert_eq!(d4.deliveries, 4);
    let tokens: HashSet<u64> = [&d1, &d2, &d3, &d4].iter().map(|d| d.lease.token).collect();
    assert_eq!(tokens.len(), 4, "every delivery has its own token");
    ok(
        b.settle(&d4.lease, Settlement::Ack { result: None }).await,
        "ack",
    );
}

/// No message is leased twice: eight fetchers on two handles drain 2000
/// messages with long leases; every id arrives exactly once, none is
/// missing, and every ack succeeds.
pub async fn never_leased_twice_under_concurrency<F: Fixture>(f: &F) {
    const TOTAL: u64 = 2000;
    const FETCHERS: usize = 8;
    let h1 = f.open().await;
    let h2 = f.open().await;
    let q = queue_name("race");
    let mut published = HashSet::new();
    for chunk in 0..(TOTAL / 200) {
        let batch: Vec<_> = (chunk * 200..(chunk + 1) * 200)
            .map(|n| message(&q, n))
            .collect();
        published.extend(batch.iter().map(|m| m.id().clone()));
        let h = if chunk % 2 == 0 { &h1 } else { &h2 };
        publish(h, batch).await;
    }

    let seen: Arc<Mutex<HashMap<TaskId, u32>>> = Arc::default();
    let mut tasks = JoinSet::new();
    for i in 0..FETCHERS {
        let b = if i % 2 == 0 { h1.clone() } else { h2.clone() };
        let seen = seen.clone();
        let q = q.clone();
        tasks.spawn(async move {
            let req = request(&[&q], 10, LONG_LEASE, Duration::from_millis(200));
            loop {
                let got = match b.fetch(&req).await {
                    Ok(g) => g,
                    Err(e) => panic!("fetcher {i}: fetch failed: {}", e.chain_text()),
                };
                // With long leases and everything published up front, an
                // empty fetch means every message is taken.
                if got.is_empty() {
                    return;
                }
                for d in &got {
                    let id = msg(d).id().clone();
                    *seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(id)
                        .or_default() += 1;
                }
                for d in got {
                    if let Err(e) = b.settle(&d.lease, Settlement::Ack { result: None }).await {
                        panic!(
                            "fetcher {i}: ack of {:?} failed ({}): {}",
                            d.lease.id,
                            e.kind(),
                            e.chain_text()
                        );
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} message(s) leased more than once, e.g. {:?}",
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
    let unknown = seen.keys().filter(|id| !published.contains(*id)).count();
    assert_eq!(unknown, 0, "delivered ids that were never published");
    let missing: Vec<_> = published
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {TOTAL} message(s) never delivered, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    assert_nothing(&h1, &q, Duration::ZERO, "every message was acked").await;
}
