//! The result backend: store, get, wait, forget, and expiry.

use std::pin::pin;
use std::time::Duration;

use celeriac_core::{Broker, ResultBackend, Settlement, TaskId, TaskResult, TaskState};
use serde_json::json;
use tokio::time::Instant;

use crate::support::{
    assert_pending_for, fetch_one, in_future, message, ok, publish, queue_name, skip, wake_bound,
};
use crate::{Fixture, FixtureOptions};

const PARK: Duration = Duration::from_millis(300);

fn started(id: &TaskId) -> TaskResult {
    TaskResult::new(id.clone(), TaskState::Started, json!(null), None)
}

/// Stores, reads, replaces and forgets a result; forgetting twice is fine.
pub async fn store_get_replace_forget<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().results {
        return skip("results::store_get_replace_forget", "results");
    }
    let id = TaskId::new();
    // A non-ready state first: Celery's result stores keep a SUCCESS
    // against later writes (a late duplicate must not undo it), so the
    // replacement is checked in the order a retried task produces.
    let exc = celeriac_core::ExceptionInfo::new("ValueError", "builtins", "bad");
    let mut r = TaskResult::new(
        id.clone(),
        TaskState::Retry,
        exc.to_value(),
        Some("Traceback ...".to_owned()),
    );
    r.name = Some("conformance.add".to_owned());
    r.retries = Some(2);
    r.children = vec![json!("child-1")];
    // Celery dates only ready states.
    r.date_done = None;
    ok(b.store(r.clone()).await, "store");
    let got = ok(b.get(&id).await, "get").expect("a stored result");
    assert_eq!(got, r, "a result reads back as stored");
    assert_eq!(got.exception(), Some(exc));

    let mut done = TaskResult::success(id.clone(), json!({"sum": 5, "items": [1, "x"]}));
    // Whole milliseconds, so a backend that stores the date as a number
    // reads back the same value.
    done.date_done = Some(in_future(Duration::ZERO));
    ok(b.store(done.clone()).await, "store again");
    let got = ok(b.get(&id).await, "get").expect("a stored result");
    assert_eq!(got, done, "a second store replaces the first");

    ok(b.forget(&id).await, "forget");
    assert_eq!(ok(b.get(&id).await, "get"), None, "a forgotten result");
    ok(b.forget(&id).await, "forgetting twice");
    assert_eq!(ok(b.get(&TaskId::new()).await, "get unknown"), None);
}

/// `wait` returns at once when a ready result is already stored.
pub async fn wait_returns_at_once_when_ready<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().results {
        return skip("results::wait_returns_at_once_when_ready", "results");
    }
    let id = TaskId::new();
    ok(
        b.store(TaskResult::success(id.clone(), json!(1))).await,
        "store",
    );
    let t = Instant::now();
    let got = ok(b.wait(&id, Duration::from_secs(30)).await, "wait");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "wait on a stored result took {:?}",
        t.elapsed()
    );
    assert_eq!(got.map(|r| r.status), Some(TaskState::Success));
}

/// A `wait` on one handle returns promptly when another, separately
/// opened handle stores the ready result; states that are not ready
/// (`STARTED`) do not end it.
pub async fn wait_wakes_on_store_from_another_handle<F: Fixture>(f: &F) {
    let waiter = f.open().await;
    if !waiter.capabilities().results {
        return skip(
            "results::wait_wakes_on_store_from_another_handle",
            "results",
        );
    }
    let storer = f.open().await;
    let bound = wake_bound(&waiter.capabilities());
    let id = TaskId::new();
    let mut fut = pin!(waiter.wait(&id, Duration::from_secs(30)));
    assert_pending_for(&mut fut, PARK, "a wait for a result nobody stored").await;
    ok(storer.store(started(&id)).await, "store STARTED");
    assert_pending_for(&mut fut, PARK + bound, "a wait, after a STARTED store").await;

    let t = Instant::now();
    ok(
        storer
            .store(TaskResult::success(id.clone(), json!("done")))
            .await,
        "store SUCCESS",
    );
    let got = match tokio::time::timeout(bound, &mut fut).await {
        Ok(r) => ok(r, "wait"),
        Err(_) => panic!("a wait did not wake within {bound:?} of another handle's store"),
    };
    assert!(t.elapsed() < bound);
    let got = got.expect("the stored result");
    assert_eq!(got.status, TaskState::Success);
    assert_eq!(got.result, json!("done"));
}

/// An ack carrying a result wakes a `wait` on another handle: the result
/// is stored with the acknowledgement.
pub async fn ack_result_wakes_waiter<F: Fixture>(f: &F) {
    let worker = f.open().await;
    if !worker.capabilities().results {
        return skip("results::ack_result_wakes_waiter", "results");
    }
    let client = f.open().await;
    let bound = wake_bound(&worker.capabilities());
    let q = queue_name("ack_wait");
    let m = message(&q, 1);
    let id = m.id().clone();
    publish(&client, vec![m]).await;
    let d = fetch_one(&worker, &q, Duration::from_secs(5)).await;

    let mut fut = pin!(client.wait(&id, Duration::from_secs(30)));
    assert_pending_for(&mut fut, PARK, "a wait for a running task").await;
    ok(
        worker
            .settle(
                &d.lease,
                Settlement::Ack {
                    result: Some(TaskResult::success(id.clone(), json!(99))),
                },
            )
            .await,
        "ack",
    );
    let got = match tokio::time::timeout(bound, &mut fut).await {
        Ok(r) => ok(r, "wait"),
        Err(_) => panic!("a wait did not wake within {bound:?} of an ack with a result"),
    };
    assert_eq!(got.map(|r| r.result), Some(json!(99)));
}

/// A `wait` that runs out returns the latest result (or none), after its
/// timeout.
pub async fn wait_times_out_with_latest<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().results {
        return skip("results::wait_times_out_with_latest", "results");
    }
    let timeout = Duration::from_millis(300);
    let id = TaskId::new();
    let t = Instant::now();
    assert_eq!(ok(b.wait(&id, timeout).await, "wait"), None);
    assert!(t.elapsed() + Duration::from_millis(50) >= timeout);

    ok(b.store(started(&id)).await, "store STARTED");
    let t = Instant::now();
    let got = ok(b.wait(&id, timeout).await, "wait");
    let took = t.elapsed();
    assert_eq!(got.map(|r| r.status), Some(TaskState::Started));
    assert!(
        took + Duration::from_millis(50) >= timeout,
        "a wait on a STARTED result returned after {took:?}, before its timeout"
    );
    assert!(
        took < timeout + Duration::from_secs(2),
        "a wait overslept: {took:?}"
    );
}

/// A result is gone once the configured expiry has passed, for `get` and
/// for `wait`.
pub async fn results_expire<F: Fixture>(f: &F) {
    let expiry = Duration::from_millis(200);
    let b = f
        .open_with(FixtureOptions::default().with_result_expiry(expiry))
        .await;
    if !b.capabilities().results {
        return skip("results::results_expire", "results");
    }
    let id = TaskId::new();
    let t0 = Instant::now();
    ok(
        b.store(TaskResult::success(id.clone(), json!(1))).await,
        "store",
    );
    let stored_at = Instant::now();
    let fresh = ok(b.get(&id).await, "get");
    // Only meaningful if the store and the get beat the expiry.
    if t0.elapsed() < expiry {
        assert!(fresh.is_some(), "a result read back before its expiry");
    }
    // Wall-clock expiry is the thing under test, so this case waits for
    // the expiry instant itself (plus a margin), then checks.
    tokio::time::sleep_until(stored_at + expiry + Duration::from_millis(250)).await;
    assert_eq!(ok(b.get(&id).await, "get"), None, "an expired result");
    let t = Instant::now();
    assert_eq!(
        ok(b.wait(&id, Duration::from_millis(200)).await, "wait"),
        None,
        "an expired result through wait"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    // A clone shares the store and its expiry.
    assert_eq!(ok(b.clone().get(&id).await, "get"), None);
}
