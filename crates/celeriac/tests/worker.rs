//! The worker end to end, on every in-tree backend: each outcome, time
//! limits, panics, bad input, leases and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use celeriac::{
    App, ErrorKind, GetError, RetryPolicy, Task, TaskContext, TaskError, TaskOptions, TaskState,
    WhenFull,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// Counts runs per key, so a test can see how often its task ran.
fn runs() -> &'static Mutex<HashMap<String, u32>> {
    static RUNS: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    RUNS.get_or_init(Default::default)
}

fn bump(key: &str) -> u32 {
    let mut m = runs().lock().unwrap();
    let n = m.entry(key.to_owned()).or_insert(0);
    *n += 1;
    *n
}

fn count(key: &str) -> u32 {
    runs().lock().unwrap().get(key).copied().unwrap_or(0)
}

struct Add;
impl Task for Add {
    const NAME: &'static str = "t.add";
    type Args = (i64, i64);
    type Output = i64;
    async fn run(_: TaskContext, (x, y): (i64, i64)) -> Result<i64, TaskError> {
        Ok(x + y)
    }
}

struct Fail;
impl Task for Fail {
    const NAME: &'static str = "t.fail";
    type Args = (String,);
    type Output = ();
    async fn run(_: TaskContext, (msg,): (String,)) -> Result<(), TaskError> {
        Err(TaskError::permanent(msg).with_type("ValueError", "builtins"))
    }
}

/// Counts a run under `key`; fails until the task has retried `n` times,
/// then returns its retry count.
fn fail_until_retried(ctx: &TaskContext, key: &str, n: u32) -> Result<u32, TaskError> {
    bump(key);
    if ctx.retries() < n {
        return Err(TaskError::fail("not yet"));
    }
    Ok(ctx.retries())
}

/// Three retries, 10–50 ms apart.
fn quick_retries(name: &'static str) -> TaskOptions {
    TaskOptions::new(name)
        .max_retries(3)
        .retry_policy(RetryPolicy::exponential(
            Duration::from_millis(10),
            Duration::from_millis(50),
        ))
}

/// Fails until it has failed `n` times, then returns its retry count.
struct Flaky;
impl Task for Flaky {
    const NAME: &'static str = "t.flaky";
    type Args = (String, u32);
    type Output = u32;
    fn options() -> TaskOptions {
        quick_retries(Self::NAME)
    }
    async fn run(ctx: TaskContext, (key, n): (String, u32)) -> Result<u32, TaskError> {
        fail_until_retried(&ctx, &key, n)
    }
}

/// Retries explicitly after 300 ms, once; returns the time between attempts.
struct RetryLater;
impl Task for RetryLater {
    const NAME: &'static str = "t.retry_later";
    type Args = (String,);
    type Output = u128;
    fn options() -> TaskOptions {
        TaskOptions::new(Self::NAME).max_retries(1)
    }
    async fn run(ctx: TaskContext, (key,): (String,)) -> Result<u128, TaskError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let mut m = runs().lock().unwrap();
        if ctx.retries() == 0 {
            m.insert(key, (now % 1_000_000_000) as u32);
            return Err(TaskError::retry(Some(Duration::from_millis(300))));
        }
        let first = u128::from(m.get(&key).copied().unwrap_or(0));
        Ok(now % 1_000_000_000 - first)
    }
}

/// Runs until cancelled, or for `ms` milliseconds; says which.
struct Sleepy;
impl Task for Sleepy {
    const NAME: &'static str = "t.sleepy";
    type Args = (String, u64);
    type Output = String;
    async fn run(ctx: TaskContext, (key, ms): (String, u64)) -> Result<String, TaskError> {
        bump(&key);
        tokio::select! {
            () = ctx.cancelled() => Ok("cancelled".to_owned()),
            () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(format!("slept, deliveries={}", ctx.deliveries())),
        }
    }
}

/// Ignores cancellation: only a hard limit or a hard stop ends it early.
struct Stubborn;
impl Task for Stubborn {
    const NAME: &'static str = "t.stubborn";
    type Args = (String, u64);
    type Output = u32;
    async fn run(ctx: TaskContext, (key, ms): (String, u64)) -> Result<u32, TaskError> {
        bump(&key);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ctx.deliveries())
    }
}

struct Panics;
impl Task for Panics {
    const NAME: &'static str = "t.panics";
    type Args = ();
    type Output = ();
    async fn run(_: TaskContext, _: ()) -> Result<(), TaskError> {
        panic!("boom at the worker")
    }
}

struct Blocking;
impl Task for Blocking {
    const NAME: &'static str = "t.blocking";
    type Args = (u64,);
    type Output = u64;
    fn options() -> TaskOptions {
        TaskOptions::new(Self::NAME).blocking(true)
    }
    async fn run(_: TaskContext, (n,): (u64,)) -> Result<u64, TaskError> {
        celeriac::__private::run_blocking(move || Ok((1..=n).product())).await
    }
}

/// Acknowledged before it runs (`acks_late = false`); runs until cancelled.
struct EarlyAck;
impl Task for EarlyAck {
    const NAME: &'static str = "t.early_ack";
    type Args = (String,);
    type Output = ();
    fn options() -> TaskOptions {
        TaskOptions::new(Self::NAME).acks_late(false)
    }
    async fn run(ctx: TaskContext, (key,): (String,)) -> Result<(), TaskError> {
        bump(&key);
        ctx.cancelled().await;
        Ok(())
    }
}

/// Acknowledged early, and fails until it has retried `n` times.
struct EarlyFlaky;
impl Task for EarlyFlaky {
    const NAME: &'static str = "t.early_flaky";
    type Args = (String, u32);
    type Output = u32;
    fn options() -> TaskOptions {
        quick_retries(Self::NAME).acks_late(false)
    }
    async fn run(ctx: TaskContext, (key, n): (String, u32)) -> Result<u32, TaskError> {
        fail_until_retried(&ctx, &key, n)
    }
}

async fn app_on(url: &str) -> App {
    App::builder()
        .broker(url)
        .task(Add)
        .task(Fail)
        .task(Flaky)
        .task(RetryLater)
        .task(Sleepy)
        .task(Stubborn)
        .task(Panics)
        .task(Blocking)
        .task(EarlyAck)
        .task(EarlyFlaky)
        .build()
        .await
        .unwrap()
}

/// A test's backend: a fresh app, and the temp dir that must outlive it.
struct Env {
    app: App,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn env(kind: &str) -> Env {
    match kind {
        "memory" => {
            let url = format!("memory://{}", celeriac::TaskId::new());
            Env {
                app: app_on(&url).await,
                url,
                _dir: None,
            }
        }
        _ => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("t.db").display());
            Env {
                app: app_on(&url).await,
                url,
                _dir: Some(dir),
            }
        }
    }
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name("memory").await }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name("sqlite").await }
            )*
        }
    };
}

on_every_backend!(
    success_stores_the_value,
    failure_stores_the_exception,
    errors_retry_per_policy_then_succeed,
    retries_stop_at_max_retries,
    explicit_retry_waits_its_delay,
    expired_task_is_revoked_not_run,
    revoking_a_queued_task_stops_it,
    revoking_a_running_task_cancels_it,
    panic_is_a_failure_with_its_message,
    soft_time_limit_signals_the_task,
    hard_time_limit_stops_the_task,
    unknown_task_is_dead_lettered_and_the_worker_goes_on,
    wrong_argument_types_are_dead_lettered,
    oversized_payload_is_refused_at_send,
    long_task_is_not_redelivered_while_its_lease_is_renewed,
    hard_stop_hands_running_tasks_back,
    graceful_stop_lets_running_tasks_finish,
    blocking_task_runs_on_the_pool,
    ignore_result_stores_nothing,
    kwargs_and_positional_args_mix,
    track_started_stores_started_with_pid_and_worker,
    early_ack_removes_the_message_before_the_task_runs,
    early_ack_retries_by_sending_a_new_message,
);

async fn success_stores_the_value(kind: &str) {
    let e = env(kind).await;
    let w = e.app.worker().spawn();
    let r = Add::s((2, 3)).send(&e.app).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 5);
    assert_eq!(r.state().await.unwrap(), TaskState::Success);
    let stored = r.result().await.unwrap().unwrap();
    assert_eq!(stored.name.as_deref(), Some("t.add"));
    w.stop_now();
    w.join().await.unwrap();
}

async fn failure_stores_the_exception(kind: &str) {
    let e = env(kind).await;
    let w = e.app.worker().spawn();
    let r = Fail::s(("bad thing".into(),)).send(&e.app).await.unwrap();
    match r.get(WAIT).await {
        Err(GetError::Failed { exception, .. }) => {
            assert_eq!(exception.exc_type, "ValueError");
            assert_eq!(exception.exc_module, "builtins");
            assert_eq!(exception.exc_message, "bad thing");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    w.stop_now();
    w.join().await.unwrap();
}

async fn errors_retry_per_policy_then_succeed(kind: &str) {
    let e = env(kind).await;
    let key = format!("flaky-{kind}-{}", celeriac::TaskId::new());
    let w = e.app.worker().spawn();
    let r = Flaky::s((key.clone(), 2)).send(&e.app).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 2);
    assert_eq!(count(&key), 3);
    // As Celery writes it: a retried task's parent is the task itself.
    let stored = e
        .app
        .backend()
        .expect("a result backend")
        .get(r.id())
        .await
        .unwrap()
        .expect("a stored result");
    assert_eq!(stored.parent_id.as_ref(), Some(r.id()));
    assert_eq!(stored.retries, Some(2));
    w.stop_now();
    let stats = w.join().await.unwrap();
    assert_eq!(stats.snapshot()[2], 2, "two retries counted");
}

async fn retries_stop_at_max_retries(kind: &str) {
    let e = env(kind).await;
    let key = format!("flaky-max-{kind}-{}", celeriac::TaskId::new());
    let w = e.app.worker().spawn();
    let r = Flaky::s((key.clone(), 10)).send(&e.app).await.unwrap();
    match r.get(WAIT).await {
        Err(GetError::Failed { exception, .. }) => assert_eq!(exception.exc_message, "not yet"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(count(&key), 4, "first attempt plus max_retries = 3");
    w.stop_now();
    w.join().await.unwrap();
}

async fn explicit_retry_waits_its_delay(kind: &str) {
    let e = env(kind).await;
    let key = format!("later-{kind}-{}", celeriac::TaskId::new());
    let w = e.app.worker().spawn();
    let r = RetryLater::s((key,)).send(&e.app).await.unwrap();
    let gap_ms = r.get(WAIT).await.unwrap();
    assert!(
        gap_ms >= 300,
        "the retry ran {gap_ms} ms after the first attempt"
    );
    w.stop_now();
    w.join().await.unwrap();
}

async fn expired_task_is_revoked_not_run(kind: &str) {
    let e = env(kind).await;
    let key = format!("expired-{kind}-{}", celeriac::TaskId::new());
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let r = Sleepy::s((key.clone(), 1))
        .expires(past)
        .send(&e.app)
        .await
        .unwrap();
    let w = e.app.worker().spawn();
    match r.get(WAIT).await {
        Err(GetError::Revoked { reason }) => assert_eq!(reason, "expired"),
        other => panic!("expected revoked, got {other:?}"),
    }
    assert_eq!(count(&key), 0);
    w.stop_now();
    w.join().await.unwrap();
}

async fn revoking_a_queued_task_stops_it(kind: &str) {
    let e = env(kind).await;
    let key = format!("revoked-{kind}-{}", celeriac::TaskId::new());
    let r = Sleepy::s((key.clone(), 1)).send(&e.app).await.unwrap();
    assert_eq!(r.revoke().await.unwrap(), celeriac::Revoked::Removed);
    // A later task on the same queue runs, so the worker did look.
    let w = e.app.worker().spawn();
    let after = Add::s((1, 1)).send(&e.app).await.unwrap();
    assert_eq!(after.get(WAIT).await.unwrap(), 2);
    assert!(matches!(r.get(WAIT).await, Err(GetError::Revoked { .. })));
    assert_eq!(count(&key), 0);
    w.stop_now();
    w.join().await.unwrap();
}

async fn revoking_a_running_task_cancels_it(kind: &str) {
    let e = env(kind).await;
    let key = format!("revoke-running-{kind}-{}", celeriac::TaskId::new());
    let w = e.app.worker().lease(Duration::from_millis(300)).spawn();
    let r = Sleepy::s((key.clone(), 60_000)).send(&e.app).await.unwrap();
    wait_until(|| count(&key) == 1).await;
    assert_eq!(r.revoke().await.unwrap(), celeriac::Revoked::Running);
    assert!(matches!(r.get(WAIT).await, Err(GetError::Revoked { .. })));
    w.stop_now();
    w.join().await.unwrap();
}

async fn track_started_stores_started_with_pid_and_worker(kind: &str) {
    let e = env(kind).await;
    let key = format!("started-{kind}-{}", celeriac::TaskId::new());
    let w = e
        .app
        .worker()
        .name("w-started@test")
        .track_started(true)
        .spawn();
    let r = Sleepy::s((key.clone(), 60_000)).send(&e.app).await.unwrap();
    wait_until(|| count(&key) == 1).await;
    // The task runs (it bumped its counter), so STARTED was stored first.
    let stored = e.app.backend().unwrap().get(r.id()).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskState::Started);
    assert_eq!(stored.result["pid"], json!(std::process::id()));
    assert_eq!(stored.result["hostname"], json!("w-started@test"));
    assert_eq!(stored.date_done, None);
    assert_eq!(r.state().await.unwrap(), TaskState::Started);
    assert!(r.revoke().await.is_ok());
    w.stop_now();
    w.join().await.unwrap();
}

async fn early_ack_removes_the_message_before_the_task_runs(kind: &str) {
    let e = env(kind).await;
    let key = format!("early-{kind}-{}", celeriac::TaskId::new());
    let w = e.app.worker().lease(Duration::from_millis(300)).spawn();
    let r = EarlyAck::s((key.clone(),)).send(&e.app).await.unwrap();
    wait_until(|| count(&key) == 1).await;
    // Running, and already gone from the broker: neither ready nor leased.
    wait_until_async(|| async {
        e.app
            .broker()
            .queue_stats()
            .await
            .unwrap()
            .iter()
            .all(|s| s.ready + s.leased + s.delayed == 0)
    })
    .await;
    // A hard stop drops it and, unlike a late-acknowledged task, it is not
    // handed back: nothing is left to run again, and no result is stored.
    w.stop_now();
    w.join().await.unwrap();
    let stats = e.app.broker().queue_stats().await.unwrap();
    assert!(stats.iter().all(|s| s.ready + s.leased + s.delayed == 0));
    assert_eq!(r.state().await.unwrap(), TaskState::Pending);
    assert_eq!(count(&key), 1);
}

async fn early_ack_retries_by_sending_a_new_message(kind: &str) {
    let e = env(kind).await;
    let key = format!("early-flaky-{kind}-{}", celeriac::TaskId::new());
    let w = e.app.worker().spawn();
    let r = EarlyFlaky::s((key.clone(), 2)).send(&e.app).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 2);
    assert_eq!(count(&key), 3);
    w.stop();
    w.join().await.unwrap();
}

async fn panic_is_a_failure_with_its_message(kind: &str) {
    let e = env(kind).await;
    let w = e.app.worker().spawn();
    let r = Panics::s(()).send(&e.app).await.unwrap();
    match r.get(WAIT).await {
        Err(GetError::Failed { exception, .. }) => {
            assert!(exception.exc_message.contains("boom at the worker"))
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let after = Add::s((2, 2)).send(&e.app).await.unwrap();
    assert_eq!(
        after.get(WAIT).await.unwrap(),
        4,
        "the worker survived the panic"
    );
    w.stop_now();
    w.join().await.unwrap();
}

async fn soft_time_limit_signals_the_task(kind: &str) {
    let e = env(kind).await;
    let w = e.app.worker().spawn();
    let r = Sleepy::s(("soft".into(), 60_000))
        .soft_time_limit(Duration::from_millis(100))
        .send(&e.app)
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), "cancelled");
    w.stop_now();
    w.join().await.unwrap();
}

async fn hard_time_limit_stops_the_task(kind: &str) {
    let e = env(kind).await;
    let w = e.app.worker().spawn();
    let r = Stubborn::s(("hard".into(), 60_000))
        .time_limit(Duration::from_millis(100))
        .send(&e.app)
        .await
        .unwrap();
    match r.get(WAIT).await {
        Err(GetError::Failed { exception, .. }) => {
            assert_eq!(exception.exc_type, "TimeLimitExceeded")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    w.stop_now();
    w.join().await.unwrap();
}

async fn unknown_task_is_dead_lettered_and_the_worker_goes_on(kind: &str) {
    let e = env(kind).await;
    let w = e.app.worker().spawn();
    let r = e
        .app
        .send_task("t.nobody")
        .args(vec![json!(1)])
        .send()
        .await
        .unwrap();
    match r.get(WAIT).await {
        Err(GetError::Failed { exception, .. }) => assert_eq!(exception.exc_type, "NotRegistered"),
        other => panic!("expected a failure, got {other:?}"),
    }
    let after = Add::s((3, 4)).send(&e.app).await.unwrap();
    assert_eq!(after.get(WAIT).await.unwrap(), 7);
    let dead = e.app.broker().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, *r.id());
    assert!(
        dead[0].reason.contains("unknown task `t.nobody`"),
        "{}",
        dead[0].reason
    );
    w.stop_now();
    w.join().await.unwrap();
}

async fn wrong_argument_types_are_dead_lettered(kind: &str) {
    let e = env(kind).await;
    let w = e.app.worker().spawn();
    let r = e
        .app
        .send_task("t.add")
        .args(vec![json!("two"), json!(3)])
        .send()
        .await
        .unwrap();
    match r.get(WAIT).await {
        Err(GetError::Failed { exception, .. }) => {
            assert_eq!(exception.exc_type, "TypeError");
            assert!(
                exception.exc_message.contains("argument `0`"),
                "{}",
                exception.exc_message
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let dead = e.app.broker().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("bad arguments"),
        "{}",
        dead[0].reason
    );
    // Replaying it without a fix fails the same way: nothing is lost.
    assert_eq!(e.app.broker().replay_dead_letters(None).await.unwrap(), 1);
    let again = e.app.result::<i64>(r.id().clone());
    wait_until_async(|| async { e.app.broker().dead_letters(10).await.unwrap().len() == 1 }).await;
    assert!(matches!(
        again.get(WAIT).await,
        Err(GetError::Failed { .. })
    ));
    w.stop_now();
    w.join().await.unwrap();
}

async fn oversized_payload_is_refused_at_send(kind: &str) {
    let e = env(kind).await;
    let app = App::builder()
        .broker(e.url.clone())
        .max_payload_bytes(4096)
        .build()
        .await
        .unwrap();
    let big = "x".repeat(10_000);
    let err = app
        .send_task("t.fail")
        .args(vec![json!(big)])
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(
        err.to_string().contains("over the limit of 4096 bytes"),
        "{err}"
    );
    let stats = app.broker().queue_stats().await.unwrap();
    assert!(
        stats.iter().all(|s| s.ready == 0),
        "nothing was queued: {stats:?}"
    );
}

async fn long_task_is_not_redelivered_while_its_lease_is_renewed(kind: &str) {
    let e = env(kind).await;
    let key = format!("long-{kind}-{}", celeriac::TaskId::new());
    // Two workers, so a redelivery would have somewhere to go. The task
    // outlives its lease three times over; renewals (every third of the
    // lease) keep it. The lease leaves room for a slow fsync on a loaded CI
    // machine.
    let w1 = e.app.worker().lease(Duration::from_millis(900)).spawn();
    let w2 = e.app.worker().lease(Duration::from_millis(900)).spawn();
    let r = Stubborn::s((key.clone(), 2800)).send(&e.app).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 1, "delivered once");
    assert_eq!(count(&key), 1, "ran once");
    w1.stop_now();
    w2.stop_now();
    w1.join().await.unwrap();
    w2.join().await.unwrap();
}

async fn hard_stop_hands_running_tasks_back(kind: &str) {
    let e = env(kind).await;
    let key = format!("handback-{kind}-{}", celeriac::TaskId::new());
    let w = e.app.worker().spawn();
    let r = Stubborn::s((key.clone(), 60_000))
        .send(&e.app)
        .await
        .unwrap();
    wait_until(|| count(&key) == 1).await;
    w.stop_now();
    let stats = w.join().await.unwrap();
    assert_eq!(
        stats.snapshot()[5],
        1,
        "one task released: {:?}",
        stats.snapshot()
    );
    assert_eq!(r.state().await.unwrap(), TaskState::Pending);
    // It comes back at once to the next worker (no lease to wait out).
    let started = Instant::now();
    let w = e.app.worker().lease(Duration::from_secs(60)).spawn();
    wait_until(|| count(&key) == 2).await;
    assert!(started.elapsed() < Duration::from_secs(30));
    w.stop_now();
    w.join().await.unwrap();
}

async fn graceful_stop_lets_running_tasks_finish(kind: &str) {
    let e = env(kind).await;
    let key = format!("graceful-{kind}-{}", celeriac::TaskId::new());
    let w = e.app.worker().grace(Duration::from_secs(30)).spawn();
    let r = Stubborn::s((key.clone(), 300)).send(&e.app).await.unwrap();
    wait_until(|| count(&key) == 1).await;
    w.stop();
    let stats = w.join().await.unwrap();
    assert_eq!(stats.snapshot()[0], 1, "finished, not released");
    assert_eq!(r.get(Duration::ZERO).await.unwrap(), 1);
}

async fn blocking_task_runs_on_the_pool(kind: &str) {
    let e = env(kind).await;
    let w = e.app.worker().spawn();
    let r = Blocking::s((10,)).send(&e.app).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 3_628_800);
    w.stop_now();
    w.join().await.unwrap();
}

async fn ignore_result_stores_nothing(kind: &str) {
    let e = env(kind).await;
    let w = e.app.worker().spawn();
    let r = Add::s((1, 2))
        .ignore_result(true)
        .send(&e.app)
        .await
        .unwrap();
    let marker = Add::s((0, 0)).send(&e.app).await.unwrap();
    assert_eq!(marker.get(WAIT).await.unwrap(), 0);
    wait_until_async(|| async {
        e.app
            .broker()
            .queue_stats()
            .await
            .unwrap()
            .iter()
            .all(|s| s.ready + s.leased == 0)
    })
    .await;
    assert_eq!(r.state().await.unwrap(), TaskState::Pending);
    // Nothing will ever be stored, so `get` says so at once (a timeout
    // of an hour would hang the test if it waited).
    let quick = tokio::time::timeout(WAIT, r.get(Duration::from_secs(3600))).await;
    assert!(matches!(quick, Ok(Err(GetError::NoResults))));
    w.stop_now();
    w.join().await.unwrap();
}

async fn kwargs_and_positional_args_mix(kind: &str) {
    let e = env(kind).await;
    let w = e.app.worker().spawn();
    let mut kw = serde_json::Map::new();
    kw.insert("1".into(), json!(40));
    let r = e
        .app
        .send_task("t.add")
        .args(vec![json!(2)])
        .kwargs(kw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), json!(42));
    w.stop_now();
    w.join().await.unwrap();
}

#[tokio::test]
async fn join_waits_for_every_task_on_memory() {
    let app = app_on("memory://").await;
    let w = app.worker().concurrency(8).spawn();
    let results = app
        .send_many((0..500).map(|i| Add::s((i, 1))))
        .await
        .unwrap();
    app.join().await.unwrap();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.get(Duration::ZERO).await.unwrap(), i as i64 + 1);
    }
    w.stop_now();
    w.join().await.unwrap();
}

#[tokio::test]
async fn full_queue_fails_or_waits_as_asked() {
    let m = celeriac::memory::MemoryBroker::builder()
        .max_queue_length(2)
        .build();
    let shared = std::sync::Arc::new(m);
    let failing = App::builder()
        .broker_instance(shared.clone())
        .backend_instance(Some(shared.clone()))
        .task(Add)
        .build()
        .await
        .unwrap();
    Add::s((1, 1)).send(&failing).await.unwrap();
    Add::s((1, 1)).send(&failing).await.unwrap();
    let err = Add::s((1, 1)).send(&failing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QueueFull);

    let waiting = App::builder()
        .broker_instance(shared.clone())
        .backend_instance(Some(shared))
        .task(Add)
        .when_full(WhenFull::Wait(Duration::from_secs(20)))
        .build()
        .await
        .unwrap();
    let w = waiting.worker().spawn();
    let r = Add::s((20, 22)).send(&waiting).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 42);
    w.stop_now();
    w.join().await.unwrap();
}

async fn wait_until(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met in {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_until_async<F, Fut>(cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "condition not met in {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stored_message_is_dead_lettered_and_the_worker_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.db");
    let url = format!("sqlite://{}", path.display());
    let app = app_on(&url).await;
    let raw = celeriac::sqlite::SqliteBroker::open(&path).await.unwrap();
    raw.insert_raw_for_test("celery", "bad-1", b"{\"headers\": 12".to_vec())
        .await
        .unwrap();
    raw.insert_raw_for_test(
        "celery",
        "bad-2",
        br#"{"headers": {"task": "t.add", "id": "bad-2"}, "properties": {}, "body": [1, 2]}"#
            .to_vec(),
    )
    .await
    .unwrap();
    let w = app.worker().spawn();
    let after = Add::s((5, 5)).send(&app).await.unwrap();
    assert_eq!(after.get(WAIT).await.unwrap(), 10, "the worker went on");
    wait_until_async(|| async { app.broker().dead_letters(10).await.unwrap().len() == 2 }).await;
    let dead = app.broker().dead_letters(10).await.unwrap();
    for d in &dead {
        assert!(d.reason.contains("malformed task message"), "{}", d.reason);
    }
    let bad2 = app.result::<serde_json::Value>("bad-2");
    match bad2.get(WAIT).await {
        Err(GetError::Failed { exception, .. }) => {
            assert_eq!(exception.exc_type, "MalformedMessage")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    w.stop_now();
    w.join().await.unwrap();
}

/// A real memory result store behind a switch that makes stores fail as an
/// unreachable server would, so a test can cut the results off.
struct Outage {
    inner: celeriac::memory::MemoryBroker,
    /// How many more stores fail.
    failures: std::sync::atomic::AtomicU32,
    attempts: std::sync::atomic::AtomicU32,
}

impl celeriac::core::ResultBackend for Outage {
    async fn store(&self, result: celeriac::TaskResult) -> Result<(), celeriac::Error> {
        use std::sync::atomic::Ordering;
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(celeriac::Error::new(
                ErrorKind::Transient,
                "result store unreachable",
            ));
        }
        celeriac::core::ResultBackend::store(&self.inner, result).await
    }
    async fn get(
        &self,
        id: &celeriac::TaskId,
    ) -> Result<Option<celeriac::TaskResult>, celeriac::Error> {
        celeriac::core::ResultBackend::get(&self.inner, id).await
    }
    async fn wait(
        &self,
        id: &celeriac::TaskId,
        timeout: Duration,
    ) -> Result<Option<celeriac::TaskResult>, celeriac::Error> {
        celeriac::core::ResultBackend::wait(&self.inner, id, timeout).await
    }
    async fn forget(&self, id: &celeriac::TaskId) -> Result<(), celeriac::Error> {
        celeriac::core::ResultBackend::forget(&self.inner, id).await
    }
}

async fn app_with_outage(failures: u32) -> (App, std::sync::Arc<Outage>) {
    let outage = std::sync::Arc::new(Outage {
        inner: celeriac::memory::MemoryBroker::new(),
        failures: failures.into(),
        attempts: 0.into(),
    });
    let app = App::builder()
        .broker(format!("memory://{}", celeriac::TaskId::new()))
        .backend_instance(Some(outage.clone()))
        .task(Add)
        .task(Stubborn)
        .build()
        .await
        .unwrap();
    (app, outage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_result_store_outage_is_ridden_out() {
    let (app, outage) = app_with_outage(3).await;
    let w = app.worker().spawn();
    let r = Add::s((2, 3)).send(&app).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 5);
    assert_eq!(outage.attempts.load(std::sync::atomic::Ordering::SeqCst), 4);
    w.stop();
    w.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_result_store_outage_leaves_the_task_unacknowledged() {
    // Six tries fail: the attempt is not acknowledged without its result,
    // so the task is delivered again once its lease ends, and that run's
    // result is stored.
    let (app, outage) = app_with_outage(6).await;
    let key = format!("outage-{}", celeriac::TaskId::new());
    let w = app.worker().lease(Duration::from_millis(300)).spawn();
    let r = Stubborn::s((key.clone(), 0)).send(&app).await.unwrap();
    // `Stubborn` returns its delivery count: 2 proves the redelivery.
    assert_eq!(r.get(WAIT).await.unwrap(), 2);
    assert_eq!(count(&key), 2);
    assert_eq!(outage.attempts.load(std::sync::atomic::Ordering::SeqCst), 7);
    w.stop();
    w.join().await.unwrap();
}
