//! The broker and result-backend contract on one handle: ordering,
//! delays, leases and fencing, settlements, limits, revocation, results.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use celeriac_core::{
    codec, Broker, ErrorKind, LeaseStatus, ResultBackend, Revoked, Settlement, TaskId, TaskResult,
    TaskState,
};
use celeriac_sqlite::SqliteBroker;
use chrono::Utc;
use serde_json::json;
use support::{arg0, fresh, msg, now, prio, req};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn ack_removes_the_message_and_stores_its_result() {
    let (_dir, b) = fresh().await;
    let m = msg("celery", vec![json!(1)]);
    let id = m.id().clone();
    b.publish(vec![m.clone()]).await.unwrap();

    let mut got = b.fetch(&now("celery", 10)).await.unwrap();
    assert_eq!(got.len(), 1);
    let d = got.pop().unwrap();
    assert_eq!(**d.message.as_ref().unwrap(), m);
    assert_eq!(d.lease.id, id);
    assert_eq!(&*d.lease.queue, "celery");
    assert_eq!(d.deliveries, 1);

    let result = TaskResult::success(id.clone(), json!(42));
    b.settle(
        &d.lease,
        Settlement::Ack {
            result: Some(result.clone()),
        },
    )
    .await
    .unwrap();
    assert_eq!(b.get(&id).await.unwrap(), Some(result));
    assert!(b.fetch(&now("celery", 10)).await.unwrap().is_empty());
    assert_eq!(
        b.settle(&d.lease, Settlement::Ack { result: None })
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::LeaseLost
    );
}

#[tokio::test]
async fn higher_priority_first_then_oldest_first() {
    let (_dir, b) = fresh().await;
    let batch = vec![
        prio("q", 1, 0),
        prio("q", 2, 5),
        prio("q", 3, 9),
        prio("q", 4, 5),
        prio("q", 5, 0),
    ];
    b.publish(batch).await.unwrap();
    let got: Vec<i64> = b
        .fetch(&now("q", 10))
        .await
        .unwrap()
        .iter()
        .map(arg0)
        .collect();
    assert_eq!(got, vec![3, 2, 4, 1, 5]);
}

#[tokio::test]
async fn fetch_is_fair_across_queues() {
    let (_dir, b) = fresh().await;
    let mut batch = Vec::new();
    for n in 0..6 {
        batch.push(msg("a", vec![json!(n)]));
        batch.push(msg("b", vec![json!(100 + n)]));
    }
    b.publish(batch).await.unwrap();
    let r = req(&["a", "b"], 4, LONG, Duration::ZERO);
    let first: Vec<String> = b
        .fetch(&r)
        .await
        .unwrap()
        .iter()
        .map(|d| d.lease.queue.to_string())
        .collect();
    assert_eq!(first.iter().filter(|q| *q == "a").count(), 2, "{first:?}");
    assert_eq!(first.iter().filter(|q| *q == "b").count(), 2, "{first:?}");
    // Single-message fetches alternate their starting queue.
    let one = req(&["a", "b"], 1, LONG, Duration::ZERO);
    let x = b.fetch(&one).await.unwrap().pop().unwrap().lease.queue;
    let y = b.fetch(&one).await.unwrap().pop().unwrap().lease.queue;
    assert_ne!(x, y);
}

#[tokio::test]
async fn a_future_eta_is_delivered_no_earlier() {
    let (_dir, b) = fresh().await;
    let mut m = msg("q", vec![json!(1)]);
    let eta = Utc::now() + chrono::Duration::milliseconds(300);
    m.headers.eta = Some(eta);
    b.publish(vec![m]).await.unwrap();
    assert!(b.fetch(&now("q", 1)).await.unwrap().is_empty());
    let stats = b.queue_stats().await.unwrap();
    assert_eq!((stats[0].ready, stats[0].delayed), (0, 1));

    let got = b
        .fetch(&req(&["q"], 1, LONG, Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(Utc::now() >= eta);
}

#[tokio::test]
async fn an_expired_lease_is_delivered_again_and_fences_the_old_attempt() {
    let (_dir, b) = fresh().await;
    b.publish(vec![msg("q", vec![json!(1)])]).await.unwrap();
    let short = req(&["q"], 1, Duration::from_millis(200), Duration::ZERO);
    let first = b.fetch(&short).await.unwrap().pop().unwrap();

    let again = req(&["q"], 1, LONG, Duration::from_secs(10));
    let second = b.fetch(&again).await.unwrap().pop().unwrap();
    assert_eq!(second.lease.id, first.lease.id);
    assert_eq!(second.deliveries, 2);
    assert_ne!(second.lease.token, first.lease.token);

    let lost = b
        .settle(&first.lease, Settlement::Ack { result: None })
        .await
        .unwrap_err();
    assert_eq!(lost.kind(), ErrorKind::LeaseLost);
    let stale = TaskResult::success(first.lease.id.clone(), json!("stale"));
    let lost = b
        .settle(
            &first.lease,
            Settlement::Ack {
                result: Some(stale),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(lost.kind(), ErrorKind::LeaseLost);
    assert_eq!(
        b.get(&first.lease.id).await.unwrap(),
        None,
        "a fenced ack stores nothing"
    );

    let statuses = b
        .extend(&[first.lease.clone(), second.lease.clone()], LONG)
        .await
        .unwrap();
    assert_eq!(statuses, vec![LeaseStatus::Lost, LeaseStatus::Held]);
    b.settle(&second.lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    assert_eq!(
        b.extend(&[second.lease], LONG).await.unwrap(),
        vec![LeaseStatus::Lost]
    );
}

#[tokio::test]
async fn extend_keeps_a_lease_past_its_first_deadline() {
    let (_dir, b) = fresh().await;
    b.publish(vec![msg("q", vec![json!(1)])]).await.unwrap();
    let d = b
        .fetch(&req(&["q"], 1, Duration::from_millis(150), Duration::ZERO))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        b.extend(std::slice::from_ref(&d.lease), LONG)
            .await
            .unwrap(),
        vec![LeaseStatus::Held]
    );
    // Past the original deadline, nothing is redelivered.
    let none = b
        .fetch(&req(&["q"], 1, LONG, Duration::from_millis(400)))
        .await
        .unwrap();
    assert!(none.is_empty());
    b.settle(&d.lease, Settlement::Ack { result: None })
        .await
        .unwrap();
}

#[tokio::test]
async fn retry_replaces_the_message_and_release_makes_it_ready() {
    let (_dir, b) = fresh().await;
    let m = msg("q", vec![json!(7)]);
    let id = m.id().clone();
    b.publish(vec![m.clone()]).await.unwrap();
    let d = b.fetch(&now("q", 1)).await.unwrap().pop().unwrap();

    let mut next = m.clone();
    next.headers.retries = 1;
    next.headers.eta = Some(Utc::now() + chrono::Duration::milliseconds(150));
    let retry_result = TaskResult::new(id.clone(), TaskState::Retry, json!(null), None);
    b.settle(
        &d.lease,
        Settlement::Retry {
            message: Box::new(next.clone()),
            result: Some(retry_result),
        },
    )
    .await
    .unwrap();
    assert_eq!(b.get(&id).await.unwrap().unwrap().status, TaskState::Retry);
    assert_eq!(b.queue_stats().await.unwrap()[0].delayed, 1);

    let d2 = b
        .fetch(&req(&["q"], 1, LONG, Duration::from_secs(10)))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(d2.message.as_ref().unwrap().headers.retries, 1);
    assert_eq!(d2.lease.id, id);
    assert_eq!(d2.deliveries, 1);
    let lost = b.settle(&d.lease, Settlement::Release).await.unwrap_err();
    assert_eq!(lost.kind(), ErrorKind::LeaseLost);

    b.settle(&d2.lease, Settlement::Release).await.unwrap();
    let d3 = b.fetch(&now("q", 1)).await.unwrap().pop().unwrap();
    assert_eq!(d3.lease.id, id);
    assert_eq!(d3.deliveries, 2);
}

#[tokio::test]
async fn dead_letters_are_listed_replayed_and_purged() {
    let (_dir, b) = fresh().await;
    let (m1, m2) = (msg("q", vec![json!(1)]), msg("q", vec![json!(2)]));
    b.publish(vec![m1.clone(), m2.clone()]).await.unwrap();
    for d in b.fetch(&now("q", 2)).await.unwrap() {
        let fail = TaskResult::revoked(d.lease.id.clone(), "bad");
        b.settle(
            &d.lease,
            Settlement::DeadLetter {
                reason: format!("bad {}", arg0(&d)),
                result: Some(fail),
            },
        )
        .await
        .unwrap();
    }
    assert!(b.queue_stats().await.unwrap().is_empty());
    assert_eq!(
        b.get(m1.id()).await.unwrap().unwrap().status,
        TaskState::Revoked
    );

    let dead = b.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!((&dead[0].id, dead[0].reason.as_str()), (m1.id(), "bad 1"));
    assert_eq!(dead[0].task, "tasks.test");
    assert_eq!(dead[0].queue, "q");
    assert_eq!(codec::decode(&dead[0].raw).unwrap(), m1);
    assert_eq!(b.dead_letters(1).await.unwrap().len(), 1);

    assert_eq!(
        b.replay_dead_letters(Some(&[m2.id().clone()]))
            .await
            .unwrap(),
        1
    );
    let back = b.fetch(&now("q", 5)).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].lease.id, *m2.id());
    assert_eq!(b.replay_dead_letters(None).await.unwrap(), 1);
    assert_eq!(b.fetch(&now("q", 5)).await.unwrap()[0].lease.id, *m1.id());

    let d = b
        .fetch(&req(&["q"], 1, LONG, Duration::ZERO))
        .await
        .unwrap();
    assert!(d.is_empty());
    b.insert_raw_for_test("q", "x", b"junk".to_vec())
        .await
        .unwrap();
    let junk = b.fetch(&now("q", 1)).await.unwrap().pop().unwrap();
    b.settle(
        &junk.lease,
        Settlement::DeadLetter {
            reason: "junk".into(),
            result: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(b.purge_dead_letters().await.unwrap(), 1);
    assert!(b.dead_letters(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_malformed_row_is_delivered_as_an_error_with_a_lease() {
    let (_dir, b) = fresh().await;
    b.insert_raw_for_test("q", "bad-1", b"{not json".to_vec())
        .await
        .unwrap();
    let d = b.fetch(&now("q", 10)).await.unwrap().pop().unwrap();
    let err = d.message.as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed);
    assert_eq!(d.lease.id.as_str(), "bad-1");
    assert_eq!(
        b.extend(std::slice::from_ref(&d.lease), LONG)
            .await
            .unwrap(),
        vec![LeaseStatus::Held]
    );
    b.settle(
        &d.lease,
        Settlement::DeadLetter {
            reason: err.chain_text(),
            result: None,
        },
    )
    .await
    .unwrap();
    let dead = b.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].raw, b"{not json");
    assert_eq!(dead[0].id.as_str(), "bad-1");
}

#[tokio::test]
async fn a_publish_over_the_queue_limit_fails_whole() {
    let dir = tempfile::tempdir().unwrap();
    let b = SqliteBroker::builder(dir.path().join("q.db"))
        .max_queue_length(3)
        .build()
        .await
        .unwrap();
    b.publish(vec![msg("q", vec![]), msg("q", vec![])])
        .await
        .unwrap();
    let err = b
        .publish(vec![
            msg("q", vec![]),
            msg("q", vec![]),
            msg("other", vec![]),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QueueFull);
    assert!(
        err.to_string().contains("`q`") && err.to_string().contains('3'),
        "{err}"
    );
    let stats = b.queue_stats().await.unwrap();
    assert_eq!(stats.len(), 1, "nothing of the refused batch was published");
    assert_eq!(stats[0].ready, 2);
    b.publish(vec![msg("q", vec![]), msg("other", vec![])])
        .await
        .unwrap();
    // A leased message no longer counts as waiting.
    let d = b.fetch(&now("q", 1)).await.unwrap().pop().unwrap();
    b.publish(vec![msg("q", vec![])]).await.unwrap();
    b.settle(&d.lease, Settlement::Ack { result: None })
        .await
        .unwrap();
}

#[tokio::test]
async fn revoke_removes_waiting_flags_running_and_remembers_unknown() {
    let (_dir, b) = fresh().await;
    let (waiting, running) = (msg("q", vec![json!(1)]), msg("q", vec![json!(2)]));
    b.publish(vec![running.clone()]).await.unwrap();
    let d = b.fetch(&now("q", 1)).await.unwrap().pop().unwrap();
    b.publish(vec![waiting.clone()]).await.unwrap();

    assert_eq!(b.revoke(waiting.id()).await.unwrap(), Revoked::Removed);
    assert!(b.fetch(&now("q", 1)).await.unwrap().is_empty());
    assert_eq!(b.revoke(running.id()).await.unwrap(), Revoked::Running);
    assert_eq!(
        b.extend(std::slice::from_ref(&d.lease), LONG)
            .await
            .unwrap(),
        vec![LeaseStatus::Revoked]
    );
    b.settle(&d.lease, Settlement::Ack { result: None })
        .await
        .unwrap();

    let later = msg("q", vec![json!(3)]);
    assert_eq!(b.revoke(later.id()).await.unwrap(), Revoked::Unknown);
    b.publish(vec![later.clone()]).await.unwrap();
    assert!(b.fetch(&now("q", 1)).await.unwrap().is_empty());
    assert_eq!(
        b.get(later.id()).await.unwrap().unwrap().status,
        TaskState::Revoked
    );
}

#[tokio::test]
async fn queue_stats_and_purge() {
    let (_dir, b) = fresh().await;
    let mut delayed = msg("q", vec![]);
    delayed.headers.eta = Some(Utc::now() + chrono::Duration::hours(1));
    b.publish(vec![
        msg("q", vec![]),
        msg("q", vec![]),
        msg("q", vec![]),
        delayed,
        msg("r", vec![]),
    ])
    .await
    .unwrap();
    let _leased = b.fetch(&now("q", 1)).await.unwrap();
    let stats = b.queue_stats().await.unwrap();
    assert_eq!(stats.len(), 2);
    assert_eq!(
        (
            stats[0].queue.as_str(),
            stats[0].ready,
            stats[0].delayed,
            stats[0].leased
        ),
        ("q", 2, 1, 1)
    );
    assert_eq!((stats[1].queue.as_str(), stats[1].ready), ("r", 1));
    assert_eq!(b.purge("q").await.unwrap(), 3);
    let stats = b.queue_stats().await.unwrap();
    assert_eq!(
        (stats[0].ready, stats[0].delayed, stats[0].leased),
        (0, 0, 1)
    );
}

#[tokio::test]
async fn results_expire_and_can_be_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let b = SqliteBroker::builder(dir.path().join("q.db"))
        .result_expiry(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let id = TaskId::new();
    b.store(TaskResult::success(id.clone(), json!(1)))
        .await
        .unwrap();
    assert!(b.get(&id).await.unwrap().is_some());
    // The stored expiry is what is under test.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.get(&id).await.unwrap(), None);

    let kept = TaskId::new();
    let b2 = SqliteBroker::open(dir.path().join("q.db")).await.unwrap();
    b2.store(TaskResult::success(kept.clone(), json!(2)))
        .await
        .unwrap();
    assert!(b2.get(&kept).await.unwrap().is_some());
    b2.forget(&kept).await.unwrap();
    assert_eq!(b2.get(&kept).await.unwrap(), None);
}

#[tokio::test]
async fn wait_returns_the_latest_result_on_timeout() {
    let (_dir, b) = fresh().await;
    let id = TaskId::new();
    assert_eq!(b.wait(&id, Duration::from_millis(50)).await.unwrap(), None);
    let started = TaskResult::new(id.clone(), TaskState::Started, json!(null), None);
    b.store(started.clone()).await.unwrap();
    assert_eq!(
        b.wait(&id, Duration::from_millis(50)).await.unwrap(),
        Some(started)
    );
    let done = TaskResult::success(id.clone(), json!(3));
    b.store(done.clone()).await.unwrap();
    assert_eq!(
        b.wait(&id, Duration::from_secs(5)).await.unwrap(),
        Some(done)
    );
}

#[tokio::test]
async fn an_empty_fetch_waits_then_returns_nothing() {
    let (_dir, b) = fresh().await;
    let t = Instant::now();
    let got = b
        .fetch(&req(&["q"], 5, LONG, Duration::from_millis(200)))
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(b
        .fetch(&req(&[], 5, LONG, Duration::ZERO))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn capabilities_claim_everything() {
    let (_dir, b) = fresh().await;
    let c = b.capabilities();
    assert!(c.durable && c.delayed && c.priorities && c.push_wakeups);
    assert!(c.results && c.revoke && c.max_length && c.admin);
}

#[tokio::test]
async fn a_revoked_running_task_does_not_come_back() {
    let (_dir, b) = fresh().await;
    let (retried, abandoned) = (msg("q", vec![json!(1)]), msg("q", vec![json!(2)]));
    b.publish(vec![retried.clone()]).await.unwrap();
    let d = b.fetch(&now("q", 1)).await.unwrap().pop().unwrap();
    assert_eq!(b.revoke(retried.id()).await.unwrap(), Revoked::Running);
    // Retrying a revoked task drops it, and its final state is REVOKED.
    let mut next = retried.clone();
    next.headers.retries = 1;
    let retry_result = TaskResult::new(retried.id().clone(), TaskState::Retry, json!(null), None);
    b.settle(
        &d.lease,
        Settlement::Retry {
            message: Box::new(next),
            result: Some(retry_result),
        },
    )
    .await
    .unwrap();
    assert!(b.fetch(&now("q", 1)).await.unwrap().is_empty());
    assert_eq!(
        b.get(retried.id()).await.unwrap().unwrap().status,
        TaskState::Revoked
    );

    // A revoked task whose worker vanished is dropped when its lease ends.
    b.publish(vec![abandoned.clone()]).await.unwrap();
    let short = req(&["q"], 1, Duration::from_millis(100), Duration::ZERO);
    let d = b.fetch(&short).await.unwrap().pop().unwrap();
    assert_eq!(b.revoke(&d.lease.id).await.unwrap(), Revoked::Running);
    let none = b
        .fetch(&req(&["q"], 1, LONG, Duration::from_millis(400)))
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(
        b.get(abandoned.id()).await.unwrap().unwrap().status,
        TaskState::Revoked
    );
}

#[tokio::test]
async fn a_released_attempt_cannot_settle_again() {
    let (_dir, b) = fresh().await;
    b.publish(vec![msg("q", vec![])]).await.unwrap();
    let d = b.fetch(&now("q", 1)).await.unwrap().pop().unwrap();
    b.settle(&d.lease, Settlement::Release).await.unwrap();
    let err = b
        .settle(&d.lease, Settlement::Ack { result: None })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LeaseLost);
    assert_eq!(b.fetch(&now("q", 1)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn revoke_finds_a_waiting_task_among_many() {
    let (_dir, b) = fresh().await;
    let batch: Vec<_> = (0..300)
        .map(|n| msg(if n % 2 == 0 { "a" } else { "b" }, vec![json!(n)]))
        .collect();
    let doomed = batch[151].clone();
    b.publish(batch).await.unwrap();
    assert_eq!(b.revoke(doomed.id()).await.unwrap(), Revoked::Removed);
    let mut left = b.fetch(&now("a", 1000)).await.unwrap();
    left.extend(b.fetch(&now("b", 1000)).await.unwrap());
    assert_eq!(left.len(), 299);
    assert!(left.iter().all(|d| d.lease.id != *doomed.id()));
    assert_eq!(b.revoke(doomed.id()).await.unwrap(), Revoked::Unknown);
}

#[tokio::test]
async fn handles_and_futures_are_send() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let (_dir, b) = fresh().await;
    send_sync(&b);
    let r = now("q", 1);
    let id = TaskId::new();
    // Created and dropped unpolled: only their types are under test.
    send(b.publish(Vec::new()));
    send(b.fetch(&r));
    send(b.revoke(&id));
    send(b.queue_stats());
    send(b.wait(&id, Duration::ZERO));
    send(SqliteBroker::open("unused.db"));
}

#[tokio::test]
async fn settle_many_answers_each_settlement_alone() {
    let (_dir, b) = fresh().await;
    let messages: Vec<_> = (0..4).map(|i| msg("q", vec![json!(i)])).collect();
    b.publish(messages).await.unwrap();
    let got = b.fetch(&now("q", 10)).await.unwrap();
    assert_eq!(got.len(), 4);
    // The second attempt is already settled, so its lease is lost.
    b.settle(&got[1].lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    let result = TaskResult::success(got[0].lease.id.clone(), json!("done"));
    let settles = vec![
        (
            got[0].lease.clone(),
            Settlement::Ack {
                result: Some(result.clone()),
            },
        ),
        (got[1].lease.clone(), Settlement::Ack { result: None }),
        (got[2].lease.clone(), Settlement::Release),
        (got[3].lease.clone(), Settlement::Ack { result: None }),
    ];
    let outcomes = b.settle_many(&settles).await;
    assert_eq!(outcomes.len(), 4);
    assert!(outcomes[0].is_ok());
    assert_eq!(
        outcomes[1].as_ref().unwrap_err().kind(),
        ErrorKind::LeaseLost
    );
    assert!(outcomes[2].is_ok());
    assert!(outcomes[3].is_ok());
    // The refusal spoiled nothing: the result is stored, the released
    // message comes back, the acknowledged ones do not.
    assert_eq!(b.get(&got[0].lease.id).await.unwrap(), Some(result));
    let again = b.fetch(&now("q", 10)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lease.id, got[2].lease.id);
    assert!(b.settle_many(&[]).await.is_empty());
}

#[tokio::test]
async fn publish_checked_refuses_a_batch_with_one_message_over_the_limit() {
    let (_dir, b) = fresh().await;
    let small = msg("q", vec![json!(1)]);
    let limit = codec::encode(&small).unwrap().len() + 10;
    let big = msg("q", vec![json!("x".repeat(100))]);
    let big_id = big.id().clone();
    let err = b
        .publish_checked(vec![small.clone(), big], limit)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(err.to_string().contains(big_id.as_str()), "{err}");
    assert!(
        b.fetch(&now("q", 10)).await.unwrap().is_empty(),
        "nothing was published"
    );
    // At the limit exactly is fine.
    let exact = codec::encode(&small).unwrap().len();
    b.publish_checked(vec![small], exact).await.unwrap();
    assert_eq!(b.fetch(&now("q", 10)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn results_of_a_layout_1_file_are_kept_when_it_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let old = TaskResult::success(TaskId::from("old-task"), json!("kept"));
    {
        // The results table as layout 1 made it: keyed by the task id.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE results (
                 id TEXT PRIMARY KEY, json TEXT NOT NULL, expires_at INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX results_expiry ON results (expires_at);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO results (id, json, expires_at) VALUES (?1, ?2, ?3)",
            rusqlite::params!["old-task", serde_json::to_string(&old).unwrap(), i64::MAX],
        )
        .unwrap();
    }
    let b = SqliteBroker::open(&path).await.unwrap();
    assert_eq!(b.get(&old.task_id).await.unwrap(), Some(old.clone()));
    // Stores, replaces and forgets work on the new layout.
    let id = TaskId::from("new-task");
    b.store(TaskResult::success(id.clone(), json!(1)))
        .await
        .unwrap();
    let newer = TaskResult::success(id.clone(), json!(2));
    b.store(newer.clone()).await.unwrap();
    assert_eq!(b.get(&id).await.unwrap(), Some(newer));
    b.forget(&old.task_id).await.unwrap();
    assert_eq!(b.get(&old.task_id).await.unwrap(), None);
    drop(b);
    // A second opening finds the layout current and changes nothing.
    let b = SqliteBroker::open(&path).await.unwrap();
    assert!(b.get(&id).await.unwrap().is_some());
}

/// The tables of layout 2, as that version created them.
const LAYOUT_2: &str = "
PRAGMA journal_mode = WAL;
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, task TEXT NOT NULL, queue TEXT NOT NULL,
    priority INTEGER NOT NULL, state INTEGER NOT NULL, not_before INTEGER NOT NULL,
    token INTEGER NOT NULL DEFAULT 0, deliveries INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0, payload BLOB NOT NULL
);
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, seq, state) WHERE state = 0;
CREATE INDEX tasks_pending ON tasks (queue, not_before, state) WHERE state > 0;
CREATE INDEX tasks_leased_id ON tasks (id) WHERE state = 2;
CREATE TABLE dead_letters (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, task TEXT NOT NULL, queue TEXT NOT NULL,
    priority INTEGER NOT NULL, reason TEXT NOT NULL, at INTEGER NOT NULL, raw BLOB NOT NULL
);
CREATE INDEX dead_letters_id ON dead_letters (id);
CREATE TABLE results (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, json TEXT NOT NULL, expires_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX results_id ON results (id);
CREATE INDEX results_expiry ON results (expires_at);
CREATE TABLE revocations (id TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta (name, value) VALUES
    ('next_seq', 3), ('next_token', 1), ('ready_version', 0), ('result_version', 0);
PRAGMA user_version = 2;
";

#[tokio::test]
async fn messages_of_a_layout_2_file_are_kept_when_it_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let (first, second) = (msg("q", vec![json!(1)]), msg("q", vec![json!(2)]));
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(LAYOUT_2).unwrap();
        for (seq, m) in [(1, &first), (2, &second)] {
            conn.execute(
                "INSERT INTO tasks (seq, id, task, queue, priority, state, not_before, payload)
                 VALUES (?1, ?2, 'tasks.test', 'q', 0, 0, 0, ?3)",
                rusqlite::params![seq, m.id().as_str(), codec::encode(m).unwrap()],
            )
            .unwrap();
        }
    }
    let b = SqliteBroker::open(&path).await.unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
        let leased_id_index: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE name = 'tasks_leased_id'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(leased_id_index, 0, "the index on leased ids is dropped");
    }
    let d = b.fetch(&now("q", 1)).await.unwrap().pop().unwrap();
    assert_eq!(**d.message.as_ref().unwrap(), first);
    // Revocation finds the running and the waiting message without the index.
    assert_eq!(b.revoke(first.id()).await.unwrap(), Revoked::Running);
    assert_eq!(b.revoke(second.id()).await.unwrap(), Revoked::Removed);
    assert!(b.fetch(&now("q", 1)).await.unwrap().is_empty());
    b.settle(&d.lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    drop(b);
    // A second opening finds the layout current and changes nothing.
    let b = SqliteBroker::open(&path).await.unwrap();
    assert!(b.fetch(&now("q", 1)).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_large_batch_is_published_in_order_and_refused_whole() {
    let (_dir, b) = fresh().await;
    // Large enough to be encoded in pieces.
    let batch: Vec<_> = (0..1000).map(|i| msg("q", vec![json!(i)])).collect();
    let limit = batch
        .iter()
        .map(|m| codec::encode(m).unwrap().len())
        .max()
        .unwrap();
    let mut refused = batch.clone();
    refused[900] = msg("q", vec![json!("x".repeat(limit))]);
    let big_id = refused[900].id().clone();
    let err = b.publish_checked(refused, limit).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(err.to_string().contains(big_id.as_str()), "{err}");
    assert!(b.fetch(&now("q", 10)).await.unwrap().is_empty());

    b.publish_checked(batch, limit).await.unwrap();
    let got = b.fetch(&now("q", 2000)).await.unwrap();
    let order: Vec<i64> = got.iter().map(arg0).collect();
    assert_eq!(order, (0..1000).collect::<Vec<i64>>());
}

#[tokio::test]
async fn the_log_is_written_over_rather_than_grown() {
    let (dir, b) = fresh().await;
    let wal = dir.path().join("q.db-wal");
    let filler = "x".repeat(4000);
    let mut largest = 0;
    // About 40 MB of messages, more than twice the log's size.
    for _ in 0..20 {
        let batch = (0..500)
            .map(|_| msg("q", vec![json!(filler)]))
            .collect::<Vec<_>>();
        b.publish(batch).await.unwrap();
        largest = largest.max(std::fs::metadata(&wal).unwrap().len());
    }
    assert_eq!(b.queue_stats().await.unwrap()[0].ready, 10_000);
    // 16 MB, and the commit that went past it.
    assert!(largest < 20 << 20, "the log grew to {largest} bytes");
}
