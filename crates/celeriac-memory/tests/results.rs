//! The result backend side of `MemoryBroker`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use celeriac_core::{ResultBackend, TaskId, TaskResult, TaskState};
use celeriac_memory::MemoryBroker;
use tokio::time::{timeout, Instant};

use common::PATIENCE;

#[tokio::test]
async fn stores_gets_replaces_and_forgets() {
    let b = MemoryBroker::new();
    let id = TaskId::new();
    assert_eq!(b.get(&id).await.unwrap(), None);
    b.store(TaskResult::new(
        id.clone(),
        TaskState::Started,
        0.into(),
        None,
    ))
    .await
    .unwrap();
    assert_eq!(
        b.get(&id).await.unwrap().unwrap().status,
        TaskState::Started
    );
    b.store(TaskResult::success(id.clone(), 7.into()))
        .await
        .unwrap();
    let r = b.get(&id).await.unwrap().unwrap();
    assert_eq!((r.status, r.result), (TaskState::Success, 7.into()));
    b.forget(&id).await.unwrap();
    assert_eq!(b.get(&id).await.unwrap(), None);
}

#[tokio::test]
async fn wait_returns_at_once_when_ready() {
    let b = MemoryBroker::new();
    let id = TaskId::new();
    b.store(TaskResult::success(id.clone(), 1.into()))
        .await
        .unwrap();
    let r = timeout(PATIENCE, b.wait(&id, PATIENCE * 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.unwrap().status, TaskState::Success);
}

#[tokio::test]
async fn wait_wakes_when_a_ready_result_is_stored() {
    let b = MemoryBroker::new();
    let id = TaskId::new();
    let waiter = {
        let (b, id) = (b.clone(), id.clone());
        tokio::spawn(async move { b.wait(&id, PATIENCE).await })
    };
    tokio::task::yield_now().await;
    // A state that is not final does not end the wait.
    b.store(TaskResult::new(
        id.clone(),
        TaskState::Started,
        0.into(),
        None,
    ))
    .await
    .unwrap();
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    let stored = Instant::now();
    b.store(TaskResult::success(id.clone(), 2.into()))
        .await
        .unwrap();
    let r = timeout(PATIENCE / 2, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.unwrap().result, 2);
    assert!(stored.elapsed() < PATIENCE / 4);
}

#[tokio::test]
async fn wait_gives_the_latest_after_its_timeout() {
    let b = MemoryBroker::new();
    let id = TaskId::new();
    let t = Duration::from_millis(30);
    let start = Instant::now();
    assert_eq!(b.wait(&id, t).await.unwrap(), None);
    assert!(start.elapsed() >= t);
    b.store(TaskResult::new(
        id.clone(),
        TaskState::Retry,
        0.into(),
        None,
    ))
    .await
    .unwrap();
    let r = b.wait(&id, t).await.unwrap().unwrap();
    assert_eq!(r.status, TaskState::Retry);
    let r = b.wait(&id, Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(r.status, TaskState::Retry);
}

#[tokio::test]
async fn many_waiters_on_many_ids_all_wake() {
    let b = MemoryBroker::new();
    let ids: Vec<TaskId> = (0..20).map(|_| TaskId::new()).collect();
    let mut waiters = Vec::new();
    for id in &ids {
        for _ in 0..3 {
            let (b, id) = (b.clone(), id.clone());
            waiters.push(tokio::spawn(async move { b.wait(&id, PATIENCE).await }));
        }
    }
    tokio::task::yield_now().await;
    for id in &ids {
        b.store(TaskResult::success(id.clone(), 0.into()))
            .await
            .unwrap();
    }
    for w in waiters {
        let r = timeout(PATIENCE / 2, w).await.unwrap().unwrap().unwrap();
        assert_eq!(r.unwrap().status, TaskState::Success);
    }
}

#[tokio::test(start_paused = true)]
async fn results_expire() {
    let b = MemoryBroker::builder()
        .result_expiry(Duration::from_millis(50))
        .build();
    let id = TaskId::new();
    b.store(TaskResult::success(id.clone(), 0.into()))
        .await
        .unwrap();
    assert!(b.get(&id).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(b.get(&id).await.unwrap(), None);
    assert_eq!(b.wait(&id, Duration::ZERO).await.unwrap(), None);
}
