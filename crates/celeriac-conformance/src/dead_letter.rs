//! Dead letters: a dead-lettered message leaves its queue, is listed with
//! its reason, and can be replayed or purged.

use std::time::Duration;

use celeriac_core::{
    Broker, ExceptionInfo, ResultBackend, Settlement, TaskId, TaskResult, TaskState,
};
use chrono::Utc;

use crate::support::{
    assert_nothing, fetch, fetch_one, ids, message, msg, ok, publish, queue_name, skip, TASK,
};
use crate::Fixture;

const WAIT: Duration = Duration::from_secs(5);

/// Publishes one message per reason to `q` and dead-letters each, in
/// order; returns their ids.
async fn dead_letter_each<B: Broker>(b: &B, q: &str, reasons: &[&str]) -> Vec<TaskId> {
    let mut out = Vec::new();
    for (n, reason) in (0u64..).zip(reasons) {
        let m = message(q, n);
        out.push(m.id().clone());
        publish(b, vec![m]).await;
        let d = fetch_one(b, q, WAIT).await;
        ok(
            b.settle(
                &d.lease,
                Settlement::DeadLetter {
                    reason: (*reason).to_owned(),
                    result: None,
                },
            )
            .await,
            "dead letter",
        );
    }
    out
}

/// Dead-lettering removes the message from its queue and stores the
/// result it carries.
pub async fn dead_letter_removes_and_stores_result<F: Fixture>(f: &F) {
    let b = f.open().await;
    let q = queue_name("dlq");
    let m = message(&q, 1);
    let id = m.id().clone();
    publish(&b, vec![m]).await;
    let d = fetch_one(&b, &q, WAIT).await;
    let exc = ExceptionInfo::new("NotRegistered", "celery.exceptions", "conformance.noop");
    ok(
        b.settle(
            &d.lease,
            Settlement::DeadLetter {
                reason: "unknown task conformance.noop".to_owned(),
                result: Some(TaskResult::failure(id.clone(), &exc, None)),
            },
        )
        .await,
        "dead letter",
    );
    assert_nothing(
        &b,
        &q,
        Duration::ZERO,
        "a dead-lettered message leaves its queue",
    )
    .await;
    if b.capabilities().results {
        let r = ok(b.get(&id).await, "get").expect("the dead letter stored its result");
        assert_eq!(r.status, TaskState::Failure);
        assert_eq!(r.exception(), Some(exc));
    }
}

/// Dead letters are listed oldest first, with id, task, queue, reason, a
/// time and the stored bytes; `limit` caps the list.
pub async fn dead_letters_are_listed_with_reason<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().admin {
        return skip("dead_letter::dead_letters_are_listed_with_reason", "admin");
    }
    let q = queue_name("dlq_list");
    let before = Utc::now() - chrono::TimeDelta::seconds(1);
    let reasons = ["first reason", "second reason", "third reason"];
    let dead = dead_letter_each(&b, &q, &reasons).await;
    let after = Utc::now() + chrono::TimeDelta::seconds(1);

    let list = ok(b.dead_letters(10).await, "dead_letters");
    assert_eq!(
        list.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        dead,
        "every dead letter, oldest first"
    );
    for (dl, reason) in list.iter().zip(reasons) {
        assert_eq!(dl.reason, reason);
        assert_eq!(dl.task, TASK);
        assert_eq!(dl.queue, q);
        assert!(
            dl.at >= before && dl.at <= after,
            "dead-lettered at {}",
            dl.at
        );
        let m = celeriac_core::codec::decode(&dl.raw)
            .unwrap_or_else(|e| panic!("a dead letter's raw bytes: {}", e.chain_text()));
        assert_eq!(m.id(), &dl.id, "raw holds the message as it was");
    }
    let two = ok(b.dead_letters(2).await, "dead_letters(2)");
    assert_eq!(
        two.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        dead[..2].to_vec()
    );
}

/// Replaying by id puts just those messages back on their queues (same
/// id, fetchable at once) and off the list; replaying all takes the rest;
/// replaying again finds nothing.
pub async fn replay_puts_dead_letters_back<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().admin {
        return skip("dead_letter::replay_puts_dead_letters_back", "admin");
    }
    let q = queue_name("replay");
    let dead = dead_letter_each(&b, &q, &["one", "two", "three"]).await;

    let n = ok(b.replay_dead_letters(Some(&dead[1..2])).await, "replay one");
    assert_eq!(n, 1);
    let got = fetch(&b, &[&q], 10, WAIT).await;
    assert_eq!(
        ids(&got),
        vec![dead[1].clone()],
        "the replayed message is back"
    );
    assert_eq!(msg(&got[0]).headers.task, TASK);
    let list = ok(b.dead_letters(10).await, "dead_letters");
    assert_eq!(
        list.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        vec![dead[0].clone(), dead[2].clone()]
    );

    let n = ok(
        b.replay_dead_letters(Some(&[TaskId::new()])).await,
        "replay unknown",
    );
    assert_eq!(n, 0, "replaying an unknown id");

    let n = ok(b.replay_dead_letters(None).await, "replay all");
    assert_eq!(n, 2);
    let got = fetch(&b, &[&q], 10, WAIT).await;
    let mut back = ids(&got);
    back.sort();
    let mut want = vec![dead[0].clone(), dead[2].clone()];
    want.sort();
    assert_eq!(back, want);
    assert!(ok(b.dead_letters(10).await, "dead_letters").is_empty());
    assert_eq!(ok(b.replay_dead_letters(None).await, "replay none"), 0);
}

/// Purging dead letters deletes them all and says how many.
pub async fn purge_dead_letters_empties_the_list<F: Fixture>(f: &F) {
    let b = f.open().await;
    if !b.capabilities().admin {
        return skip("dead_letter::purge_dead_letters_empties_the_list", "admin");
    }
    let q = queue_name("dlq_purge");
    dead_letter_each(&b, &q, &["a", "b"]).await;
    assert_eq!(ok(b.purge_dead_letters().await, "purge dead letters"), 2);
    assert!(ok(b.dead_letters(10).await, "dead_letters").is_empty());
    assert_eq!(ok(b.replay_dead_letters(None).await, "replay"), 0);
    assert_nothing(
        &b,
        &q,
        Duration::ZERO,
        "purged dead letters do not come back",
    )
    .await;
}
