//! The `Capabilities` report: it is the same from every handle, what it
//! claims works, and what it does not claim fails cleanly if at all.

use std::fmt::Debug;
use std::time::Duration;

use celeriac_core::{Broker, Capabilities, Error, ErrorKind, ResultBackend, Revoked, TaskId};
use serde_json::json;

use crate::support::{
    arg, assert_kind, assert_reached, fetch, fetch_one, in_future, message, ok, publish,
    queue_name, with_eta, with_priority,
};
use crate::{Fixture, FixtureOptions};

/// Every handle, opened or cloned, reports the same capabilities.
pub async fn capabilities_are_stable<F: Fixture>(f: &F) {
    let a = f.open().await;
    let b = f.open().await;
    let caps = a.capabilities();
    assert_eq!(caps, b.capabilities(), "two handles on one store disagree");
    assert_eq!(caps, a.clone().capabilities(), "a clone disagrees");
    assert_eq!(caps, a.capabilities(), "a second call disagrees");
}

/// Each claimed capability is probed: `delayed` holds an eta,
/// `priorities` orders, `push_wakeups` wakes a blocked fetch within a
/// second, `results` stores, `revoke` removes, `max_length` refuses,
/// `admin` counts, and `durable` keeps a message across a restart.
pub async fn claimed_capabilities_work<F: Fixture>(f: &F) {
    let b = f.open().await;
    let caps = b.capabilities();
    crate::service::note(&format!(
        "capabilities::claimed_capabilities_work: {caps:?}"
    ));
    let wait = Duration::from_secs(5);

    if caps.delayed {
        let q = queue_name("cap_delayed");
        let eta = in_future(Duration::from_millis(500));
        publish(&b, vec![with_eta(message(&q, 0), eta)]).await;
        let early = fetch(&b, &[&q], 1, Duration::ZERO).await;
        if early.is_empty() {
            fetch_one(&b, &q, wait).await;
        }
        assert_reached(eta, "claims `delayed`, but delivered before the eta");
    }
    if caps.priorities {
        let q = queue_name("cap_prio");
        publish(
            &b,
            vec![
                with_priority(message(&q, 0), 0),
                with_priority(message(&q, 1), 9),
            ],
        )
        .await;
        let d = fetch_one(&b, &q, wait).await;
        let order = caps.priority_order;
        let first = if order.rank(9) < order.rank(0) { 1 } else { 0 };
        assert_eq!(
            arg(&d),
            first,
            "claims `priorities` in {order:?}, but the other came first"
        );
    }
    if caps.push_wakeups {
        let other = f.open().await;
        crate::wakeup::wakes_on_publish(&b, &other, "claims `push_wakeups`").await;
    }
    if caps.results {
        let id = TaskId::new();
        ok(
            b.store(celeriac_core::TaskResult::success(id.clone(), json!(1)))
                .await,
            "claims `results`: store",
        );
        let r = ok(b.get(&id).await, "claims `results`: get");
        assert_eq!(r.map(|r| r.result), Some(json!(1)), "claims `results`");
    }
    if caps.revoke {
        let q = queue_name("cap_revoke");
        let m = message(&q, 0);
        let id = m.id().clone();
        publish(&b, vec![m]).await;
        assert_eq!(ok(b.revoke(&id).await, "claims `revoke`"), Revoked::Removed);
    }
    if caps.max_length {
        let limited = f
            .open_with(FixtureOptions::default().with_max_queue_length(1))
            .await;
        let q = queue_name("cap_maxlen");
        publish(&limited, vec![message(&q, 0)]).await;
        assert_kind(
            limited.publish(vec![message(&q, 1)]).await,
            ErrorKind::QueueFull,
            "claims `max_length`",
        );
    }
    if caps.admin {
        let q = queue_name("cap_admin");
        publish(&b, vec![message(&q, 0)]).await;
        let stats = ok(b.queue_stats().await, "claims `admin`: queue_stats");
        let s = stats.iter().find(|s| s.queue == q);
        assert_eq!(s.map(|s| s.ready), Some(1), "claims `admin`: {stats:?}");
        ok(b.dead_letters(1).await, "claims `admin`: dead_letters");
    }
    if caps.durable {
        let q = queue_name("cap_durable");
        let m = message(&q, 0);
        let id = m.id().clone();
        let h = f.open().await;
        publish(&h, vec![m]).await;
        drop(h);
        drop(b);
        let reopened = f.open().await;
        let d = fetch_one(&reopened, &q, Duration::ZERO).await;
        assert_eq!(
            d.lease.id, id,
            "claims `durable`, but a restart lost a message"
        );
    }
}

fn ok_or_unsupported<T: Debug>(r: Result<T, Error>, what: &str) {
    if let Err(e) = r {
        assert_eq!(
            e.kind(),
            ErrorKind::Unsupported,
            "{what} is not claimed, so it should work or report `Unsupported`, not: {}",
            e.chain_text()
        );
    }
}

/// An optional operation the broker does not claim either works or fails
/// with `ErrorKind::Unsupported`, never with another error.
pub async fn unclaimed_operations_fail_cleanly<F: Fixture>(f: &F) {
    let b = f.open().await;
    let caps: Capabilities = b.capabilities();
    let id = TaskId::new();
    if !caps.revoke {
        ok_or_unsupported(b.revoke(&id).await, "revoke");
    }
    if !caps.admin {
        let q = queue_name("unclaimed");
        ok_or_unsupported(b.queue_stats().await, "queue_stats");
        ok_or_unsupported(b.purge(&q).await, "purge");
        ok_or_unsupported(b.dead_letters(10).await, "dead_letters");
        ok_or_unsupported(b.replay_dead_letters(None).await, "replay_dead_letters");
        ok_or_unsupported(b.purge_dead_letters().await, "purge_dead_letters");
    }
    if !caps.results {
        ok_or_unsupported(b.get(&id).await, "get");
        ok_or_unsupported(b.wait(&id, Duration::ZERO).await, "wait");
        ok_or_unsupported(b.forget(&id).await, "forget");
    }
}
