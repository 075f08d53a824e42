//! The facade over Redis (feature `redis`): `redis://` as the broker, with
//! results in it, and `redis://` as a results-only backend beside another
//! broker.
//!
//! Needs Redis at `CELERIAC_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379/0`); without it the tests print `SKIP` and
//! pass, unless `CELERIAC_REQUIRE_SERVICES=1`. Each test uses its own
//! `global_keyprefix`.

#![cfg(feature = "redis")]
// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use celeriac::core::{TaskId, TaskResult};
use celeriac::{App, TaskError};
use celeriac_conformance::service::note;
use celeriac_conformance::{services_required, unique_ns};

const WAIT: Duration = Duration::from_secs(20);

#[celeriac::task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

/// Returns a Redis URL with a fresh key prefix, or `None` after a visible
/// skip note when no server answers.
async fn redis_url(test: &str) -> Option<String> {
    let base = std::env::var("CELERIAC_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_owned());
    let addr = base
        .trim_start_matches("redis://")
        .split(['/', '?'])
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_owned();
    let up = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr.as_str()),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if !up {
        let why = format!("no Redis at {base}");
        if services_required() {
            panic!("{why}, and CELERIAC_REQUIRE_SERVICES=1 requires it");
        }
        note(&format!("SKIP redis::{test}: {why}"));
        return None;
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}global_keyprefix={}", unique_ns()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_broker_stores_results_in_itself() {
    let Some(url) = redis_url("a_redis_broker_stores_results_in_itself").await else {
        return;
    };
    let app = App::builder().broker(&url).task(add).build().await.unwrap();
    assert!(app.results_in_broker());
    let sum = add::delay(&app, 2, 3).await.unwrap();
    let worker = app.worker().spawn();
    assert_eq!(sum.get(WAIT).await.unwrap(), 5);
    worker.stop();
    worker.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_serves_as_a_results_only_backend() {
    let Some(url) = redis_url("redis_serves_as_a_results_only_backend").await else {
        return;
    };
    let app = App::builder()
        .broker("memory://")
        .backend(&url)
        .task(add)
        .build()
        .await
        .unwrap();
    assert!(!app.results_in_broker());
    let sum = add::delay(&app, 20, 22).await.unwrap();
    let worker = app.worker().spawn();
    assert_eq!(sum.get(WAIT).await.unwrap(), 42);
    worker.stop();
    worker.join().await.unwrap();

    // Another app on the same results URL reads it: it is in Redis.
    let other = App::builder()
        .broker("memory://")
        .backend(&url)
        .build()
        .await
        .unwrap();
    let again = other.result::<i64>(sum.id().clone());
    assert_eq!(again.get(WAIT).await.unwrap(), 42);

    let id = TaskId::new();
    let backend = other.backend().unwrap();
    backend
        .store(TaskResult::success(id.clone(), serde_json::json!(7)))
        .await
        .unwrap();
    assert_eq!(app.result::<i64>(id).get(WAIT).await.unwrap(), 7);
}
