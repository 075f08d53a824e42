//! The Redis result backend against a real Redis, checked against what
//! Celery writes and reads (`celery-protocol.md` §6).
//!
//! Needs Redis at `CELERIAC_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379/0`); without it every test prints `SKIP` and
//! passes, unless `CELERIAC_REQUIRE_SERVICES=1`. Each test uses its own
//! `global_keyprefix`, so tests (and other suites on the same server) never
//! see each other's keys.

// Helpers unwrap too: a failure there is a test failure with a location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use celeriac_conformance::service::note;
use celeriac_conformance::{services_required, unique_ns};
use celeriac_core::{
    Error, ErrorKind, ExceptionInfo, ResultBackend, TaskId, TaskResult, TaskState,
};
use celeriac_redis::RedisBackend;
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio::time::Instant;

/// How long a wait may take to notice a store.
const WAKE: Duration = Duration::from_secs(2);
/// How long a future must stay pending to count as "not woken".
const PARK: Duration = Duration::from_millis(300);

fn redis_url() -> String {
    std::env::var("CELERIAC_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_owned())
}

/// One test's view of Redis: a backend with its own key prefix, and a raw
/// connection to look at what it wrote.
struct Fx {
    url: String,
    prefix: String,
    backend: RedisBackend,
    raw: MultiplexedConnection,
    client: redis::Client,
}

impl Fx {
    /// Connects, or returns `None` after a visible skip note.
    async fn new(test: &str) -> Option<Fx> {
        let url = redis_url();
        let client = redis::Client::open(url.as_str()).expect("a Redis URL");
        let raw = match tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(30))),
            ),
        )
        .await
        {
            Ok(Ok(c)) => c,
            other => {
                let why = format!("no Redis at {url} ({other:?})");
                if services_required() {
                    panic!("{why}, and CELERIAC_REQUIRE_SERVICES=1 requires it");
                }
                note(&format!("SKIP results::{test}: {why}"));
                return None;
            }
        };
        let prefix = format!("{}:", unique_ns());
        let backend = RedisBackend::builder(url.as_str())
            .global_keyprefix(prefix.clone())
            .result_expires(Some(Duration::from_secs(300)))
            .open()
            .await
            .expect("open the backend");
        Some(Fx {
            url,
            prefix,
            backend,
            raw,
            client,
        })
    }

    /// The key Celery would use, built by hand.
    fn key(&self, id: &TaskId) -> String {
        format!("{}celery-task-meta-{id}", self.prefix)
    }

    async fn raw_get(&self, id: &TaskId) -> Option<Vec<u8>> {
        self.raw.clone().get(self.key(id)).await.unwrap()
    }

    async fn raw_set(&self, id: &TaskId, value: &str) {
        let _: () = self
            .raw
            .clone()
            .set_ex(self.key(id), value, 300)
            .await
            .unwrap();
    }

    /// Returns the pub/sub clients as (id, subscription count).
    async fn pubsub_clients(&self) -> Vec<(u64, u64)> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut self.raw.clone())
            .await
            .unwrap();
        list.lines()
            .filter_map(|line| {
                let field = |name: &str| {
                    line.split(' ')
                        .find_map(|kv| kv.strip_prefix(name))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                Some((field("id=")?, field("sub=")?))
            })
            .collect()
    }

    /// Returns the highest client id the server has handed out so far.
    async fn last_client_id(&self) -> u64 {
        redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut self.raw.clone())
            .await
            .unwrap()
    }

    /// Waits (with a deadline) until one pub/sub client newer than
    /// `after` holds exactly `subs` subscriptions; returns its id.
    async fn pubsub_client_with(&self, after: u64, subs: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found: Vec<u64> = self
                .pubsub_clients()
                .await
                .into_iter()
                .filter(|&(id, n)| id > after && n == subs)
                .map(|(id, _)| id)
                .collect();
            if let [one] = found[..] {
                return one;
            }
            assert!(
                Instant::now() < deadline,
                "no single pub/sub client with {subs} subscriptions (found {found:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Asserts `fut` stays pending for `PARK`.
async fn assert_pending<F: Future + Unpin>(fut: &mut F, what: &str)
where
    F::Output: std::fmt::Debug,
{
    if let Ok(out) = tokio::time::timeout(PARK, fut).await {
        panic!("{what} finished early: {out:?}");
    }
}

/// Awaits `fut` for at most `WAKE`.
async fn woken<F: Future + Unpin>(fut: &mut F, what: &str) -> F::Output {
    match tokio::time::timeout(WAKE, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {WAKE:?}"),
    }
}

fn exc() -> ExceptionInfo {
    ExceptionInfo::new("ValueError", "builtins", "boom")
}

fn result_in(id: &TaskId, state: TaskState) -> TaskResult {
    let value = match state {
        TaskState::Started => json!({"pid": 42, "hostname": "w1@host"}),
        TaskState::Failure | TaskState::Retry => exc().to_value(),
        TaskState::Revoked => TaskResult::revoked(id.clone(), "expired").result,
        _ => json!({"sum": 5, "items": [1, "x", null]}),
    };
    let mut r = TaskResult::new(id.clone(), state, value, None);
    if state == TaskState::Failure {
        r.traceback = Some("Traceback (most recent call last):\n  boom\n".to_owned());
    }
    r.children = vec![json!([
        ["c3106f7f-0000-0000-0000-000000000000", null],
        null
    ])];
    r
}

const ALL_STATES: [TaskState; 7] = [
    TaskState::Pending,
    TaskState::Received,
    TaskState::Started,
    TaskState::Success,
    TaskState::Failure,
    TaskState::Retry,
    TaskState::Revoked,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_round_trips() {
    let Some(fx) = Fx::new("every_state_round_trips").await else {
        return;
    };
    for state in ALL_STATES {
        let id = TaskId::new();
        let r = result_in(&id, state);
        fx.backend.store(r.clone()).await.unwrap();
        let got = fx.backend.get(&id).await.unwrap().expect("stored");
        assert_eq!(got.status, state);
        assert_eq!(got.result, r.result, "{state}");
        assert_eq!(got.traceback, r.traceback, "{state}");
        assert_eq!(got.children, r.children, "{state}");
        assert_eq!(got.task_id, id);
        if state.is_ready() {
            // Python keeps microseconds.
            let sent = r.date_done.unwrap().timestamp_micros();
            assert_eq!(got.date_done.map(|d| d.timestamp_micros()), Some(sent));
        } else {
            assert_eq!(got.date_done, None, "Celery stores no date for {state}");
        }
    }
    assert_eq!(fx.backend.get(&TaskId::new()).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_json_has_exactly_celerys_fields() {
    let Some(fx) = Fx::new("stored_json_has_exactly_celerys_fields").await else {
        return;
    };
    let id = TaskId::new();
    fx.backend
        .store(TaskResult::success(id.clone(), json!(5)))
        .await
        .unwrap();
    assert_eq!(fx.backend.key(&id), fx.key(&id));
    let raw = fx
        .raw_get(&id)
        .await
        .expect("the Celery key holds the result");
    let v: Value = serde_json::from_slice(&raw).unwrap();
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let celery: BTreeSet<&str> = [
        "status",
        "result",
        "traceback",
        "children",
        "date_done",
        "task_id",
    ]
    .into();
    assert_eq!(keys, celery);
    assert_eq!(v["status"], "SUCCESS");
    assert_eq!(v["result"], 5);
    assert_eq!(v["traceback"], Value::Null);
    assert_eq!(v["children"], json!([]));
    assert_eq!(v["task_id"], id.as_str());
    let date = v["date_done"].as_str().unwrap();
    assert!(date.ends_with("+00:00"), "{date}");
    assert_eq!(
        date.len(),
        "2026-11-23T11:01:41.868986+00:00".len(),
        "{date}"
    );
    // The status comes first, as in Python's output.
    assert!(raw.starts_with(br#"{"status":"SUCCESS""#));

    let id = TaskId::new();
    let fail = TaskResult::failure(id.clone(), &exc(), Some("tb".to_owned()));
    fx.backend.store(fail).await.unwrap();
    let v: Value = serde_json::from_slice(&fx.raw_get(&id).await.unwrap()).unwrap();
    assert_eq!(v["status"], "FAILURE");
    assert_eq!(
        v["result"],
        json!({"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"})
    );
    assert_eq!(v["traceback"], "tb");

    let id = TaskId::new();
    let started = TaskResult::new(id.clone(), TaskState::Started, json!({"pid": 1}), None);
    fx.backend.store(started).await.unwrap();
    let v: Value = serde_json::from_slice(&fx.raw_get(&id).await.unwrap()).unwrap();
    assert_eq!(v["date_done"], Value::Null);
    assert_eq!(v["task_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_publishes_the_same_json() {
    let Some(fx) = Fx::new("every_store_publishes_the_same_json").await else {
        return;
    };
    let id = TaskId::new();
    let mut pubsub = fx.client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(fx.key(&id)).await.unwrap();
    let mut messages = pubsub.on_message();
    for state in [TaskState::Started, TaskState::Retry, TaskState::Success] {
        fx.backend.store(result_in(&id, state)).await.unwrap();
        let msg = tokio::time::timeout(WAKE, messages.next())
            .await
            .expect("a message on the result channel")
            .unwrap();
        assert_eq!(msg.get_channel_name(), fx.key(&id));
        let stored = fx.raw_get(&id).await.unwrap();
        assert_eq!(msg.get_payload_bytes(), &stored[..], "{state}");
        let v: Value = serde_json::from_slice(&stored).unwrap();
        assert_eq!(v["status"], state.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_is_never_overwritten() {
    let Some(fx) = Fx::new("a_success_is_never_overwritten").await else {
        return;
    };
    // Written by celeriac, by Python, and by Python with a NaN (which
    // Redis's cjson may refuse): a later FAILURE changes none of them.
    let celeriac = TaskId::new();
    fx.backend
        .store(TaskResult::success(celeriac.clone(), json!(1)))
        .await
        .unwrap();
    let python = TaskId::new();
    fx.raw_set(
        &python,
        &format!(
            r#"{{"status": "SUCCESS", "result": 1, "traceback": null, "children": [], "date_done": "2026-11-23T11:01:41.868986+00:00", "task_id": "{python}"}}"#
        ),
    )
    .await;
    let nan = TaskId::new();
    fx.raw_set(
        &nan,
        &format!(r#"{{"status": "SUCCESS", "result": NaN, "task_id": "{nan}"}}"#),
    )
    .await;

    for id in [&celeriac, &python, &nan] {
        let before = fx.raw_get(id).await.unwrap();
        let mut pubsub = fx.client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(fx.key(id)).await.unwrap();
        let fail = TaskResult::failure(id.clone(), &exc(), None);
        fx.backend.store(fail).await.unwrap();
        assert_eq!(fx.raw_get(id).await.unwrap(), before, "the SUCCESS stays");
        // Nothing was published: the first message is the marker sent after.
        let _: i64 = fx.raw.clone().publish(fx.key(id), "marker").await.unwrap();
        let msg = tokio::time::timeout(WAKE, pubsub.on_message().next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.get_payload_bytes(), b"marker");
    }

    // Any other state is replaced.
    let id = TaskId::new();
    for state in [TaskState::Started, TaskState::Retry, TaskState::Failure] {
        fx.backend.store(result_in(&id, state)).await.unwrap();
        let got = fx.backend.get(&id).await.unwrap().unwrap();
        assert_eq!(got.status, state);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_expire_after_result_expires() {
    let Some(fx) = Fx::new("results_expire_after_result_expires").await else {
        return;
    };
    let ttl = |b: RedisBackend, id: TaskId| {
        let mut raw = fx.raw.clone();
        let key = fx.key(&id);
        async move {
            b.store(TaskResult::success(id.clone(), json!(1)))
                .await
                .unwrap();
            let t: i64 = raw.ttl(&key).await.unwrap();
            b.forget(&id).await.unwrap();
            t
        }
    };
    let prefix = urlencode(&fx.prefix);
    // The default: Celery's one day.
    let default = RedisBackend::from_url(&format!("{}?global_keyprefix={prefix}", fx.url))
        .await
        .unwrap();
    assert_eq!(default.result_expires(), Some(Duration::from_secs(86_400)));
    let t = ttl(default, TaskId::new()).await;
    assert!((86_390..=86_400).contains(&t), "ttl {t}");
    // From the URL.
    let url = format!("{}?result_expires=60&global_keyprefix={prefix}", fx.url);
    let t = ttl(RedisBackend::from_url(&url).await.unwrap(), TaskId::new()).await;
    assert!((55..=60).contains(&t), "ttl {t}");
    // Zero: kept forever (SET without expiry).
    let url = format!("{}?result_expires=0&global_keyprefix={prefix}", fx.url);
    let forever = RedisBackend::from_url(&url).await.unwrap();
    assert_eq!(forever.result_expires(), None);
    assert_eq!(ttl(forever, TaskId::new()).await, -1);
    // Sub-second expiries work too.
    let short = RedisBackend::builder(fx.url.as_str())
        .global_keyprefix(fx.prefix.clone())
        .result_expires(Some(Duration::from_millis(1500)))
        .open()
        .await
        .unwrap();
    let id = TaskId::new();
    short
        .store(TaskResult::success(id.clone(), json!(1)))
        .await
        .unwrap();
    let pttl: i64 = fx.raw.clone().pttl(fx.key(&id)).await.unwrap();
    assert!((1000..=1500).contains(&pttl), "pttl {pttl}");
}

/// Percent-encodes a prefix for a URL query.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_deletes() {
    let Some(fx) = Fx::new("forget_deletes").await else {
        return;
    };
    let id = TaskId::new();
    fx.backend
        .store(TaskResult::success(id.clone(), json!(1)))
        .await
        .unwrap();
    fx.backend.forget(&id).await.unwrap();
    assert_eq!(fx.raw_get(&id).await, None);
    assert_eq!(fx.backend.get(&id).await.unwrap(), None);
    fx.backend.forget(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_finds_a_result_stored_before() {
    let Some(fx) = Fx::new("wait_finds_a_result_stored_before").await else {
        return;
    };
    let id = TaskId::new();
    fx.backend
        .store(TaskResult::success(id.clone(), json!("early")))
        .await
        .unwrap();
    let t = Instant::now();
    let got = fx.backend.wait(&id, Duration::from_secs(30)).await.unwrap();
    assert!(t.elapsed() < WAKE, "took {:?}", t.elapsed());
    assert_eq!(got.map(|r| r.result), Some(json!("early")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_wakes_on_a_ready_publish_only() {
    let Some(fx) = Fx::new("wait_wakes_on_a_ready_publish_only").await else {
        return;
    };
    // The storer is another handle, as a worker would be.
    let storer = RedisBackend::builder(fx.url.as_str())
        .global_keyprefix(fx.prefix.clone())
        .open()
        .await
        .unwrap();
    let id = TaskId::new();
    let mut fut = pin!(fx.backend.wait(&id, Duration::from_secs(30)));
    assert_pending(&mut fut, "a wait on nothing").await;
    storer
        .store(result_in(&id, TaskState::Started))
        .await
        .unwrap();
    storer
        .store(result_in(&id, TaskState::Retry))
        .await
        .unwrap();
    assert_pending(&mut fut, "a wait after STARTED and RETRY").await;
    let t = Instant::now();
    storer
        .store(TaskResult::success(id.clone(), json!("done")))
        .await
        .unwrap();
    let got = woken(&mut fut, "a wait after SUCCESS").await.unwrap();
    assert!(t.elapsed() < WAKE);
    let got = got.expect("the result");
    assert_eq!(got.status, TaskState::Success);
    assert_eq!(got.result, json!("done"));

    // FAILURE and REVOKED end a wait too.
    for state in [TaskState::Failure, TaskState::Revoked] {
        let id = TaskId::new();
        let mut fut = pin!(fx.backend.wait(&id, Duration::from_secs(30)));
        assert_pending(&mut fut, "a wait on nothing").await;
        storer.store(result_in(&id, state)).await.unwrap();
        let got = woken(&mut fut, "a wait after a ready state").await.unwrap();
        assert_eq!(got.map(|r| r.status), Some(state));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_times_out() {
    let Some(fx) = Fx::new("wait_times_out").await else {
        return;
    };
    let timeout = Duration::from_millis(300);
    let t = Instant::now();
    assert_eq!(
        fx.backend.wait(&TaskId::new(), timeout).await.unwrap(),
        None
    );
    let took = t.elapsed();
    assert!(took >= timeout && took < timeout + WAKE, "took {took:?}");

    // With a state that is not ready: the latest one, after the timeout.
    let id = TaskId::new();
    fx.backend
        .store(result_in(&id, TaskState::Started))
        .await
        .unwrap();
    let t = Instant::now();
    let got = fx.backend.wait(&id, timeout).await.unwrap();
    assert!(t.elapsed() >= timeout);
    assert_eq!(got.map(|r| r.status), Some(TaskState::Started));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waiters_share_one_connection() {
    let Some(fx) = Fx::new("concurrent_waiters_share_one_connection").await else {
        return;
    };
    const N: usize = 10_000;
    let before = fx.last_client_id().await;
    let ids: Vec<TaskId> = (0..N).map(|_| TaskId::new()).collect();
    let waits = ids.iter().map(|id| {
        let b = fx.backend.clone();
        let id = id.clone();
        tokio::spawn(async move { b.wait(&id, Duration::from_secs(60)).await })
    });
    let waits: Vec<_> = waits.collect();
    // One connection holds every subscription.
    fx.pubsub_client_with(before, N as u64).await;
    assert_eq!(fx.backend.pubsub_connects(), 1);

    let t = Instant::now();
    let stores = ids.iter().map(|id| {
        let b = fx.backend.clone();
        let id = id.clone();
        async move { b.store(TaskResult::success(id, json!(1))).await }
    });
    for r in futures::future::join_all(stores).await {
        r.unwrap();
    }
    for w in waits {
        let got = w.await.unwrap().unwrap();
        assert_eq!(got.map(|r| r.status), Some(TaskState::Success));
    }
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(fx.backend.pubsub_connects(), 1);
    // The waiters are gone, and so are their subscriptions.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(fx.key(&ids[0]))
            .arg(fx.key(&ids[N - 1]))
            .query_async(&mut fx.raw.clone())
            .await
            .unwrap();
        if counts.iter().all(|(_, n)| *n == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "still subscribed: {counts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_pubsub_connection_loses_nothing() {
    let Some(fx) = Fx::new("a_dropped_pubsub_connection_loses_nothing").await else {
        return;
    };
    // 23 waits at once, to recognise this handle's connection among the
    // server's pub/sub clients.
    const WAITS: usize = 23;
    let before = fx.last_client_id().await;
    let ids: Vec<TaskId> = (0..WAITS).map(|_| TaskId::new()).collect();
    let mut waits: Vec<_> = ids
        .iter()
        .map(|id| {
            let b = fx.backend.clone();
            let id = id.clone();
            tokio::spawn(async move { b.wait(&id, Duration::from_secs(60)).await })
        })
        .collect();
    let conn = fx.pubsub_client_with(before, WAITS as u64).await;
    assert_pending(&mut waits[0], "a wait on nothing").await;

    // A result written without PUBLISH is not seen by a listening waiter...
    let silent = &ids[0];
    fx.raw_set(
        silent,
        &format!(r#"{{"status": "SUCCESS", "result": "silent", "task_id": "{silent}"}}"#),
    )
    .await;
    assert_pending(&mut waits[0], "a wait after a write without PUBLISH").await;

    // ...until the connection drops: the reconnected waiter reads the key.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(conn)
        .query_async(&mut fx.raw.clone())
        .await
        .unwrap();
    assert_eq!(killed, 1);
    let got = tokio::time::timeout(Duration::from_secs(10), &mut waits[0])
        .await
        .expect("the waiter recovers after a reconnection")
        .unwrap()
        .unwrap();
    assert_eq!(got.map(|r| r.result), Some(json!("silent")));

    // The others still hear ordinary stores on the new connection.
    fx.pubsub_client_with(conn, (WAITS - 1) as u64).await;
    assert_eq!(fx.backend.pubsub_connects(), 2);
    for id in &ids[1..] {
        fx.backend
            .store(TaskResult::success(id.clone(), json!("after")))
            .await
            .unwrap();
    }
    for w in waits.drain(1..) {
        let got = tokio::time::timeout(WAKE, w)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.map(|r| r.result), Some(json!("after")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_what_python_writes() {
    let Some(fx) = Fx::new("reads_what_python_writes").await else {
        return;
    };
    // Python's spacing, an aware date with microseconds, extra fields, and
    // kombu tagged values, which pass through untouched.
    let id = TaskId::new();
    fx.raw_set(
        &id,
        &format!(
            r#"{{"status": "SUCCESS", "result": {{"d": {{"__type__": "decimal", "__value__": "3.5"}}, "b": {{"__type__": "base64", "__value__": "/wA="}}}}, "traceback": null, "children": [[["c1", null], null]], "date_done": "2026-11-23T11:01:41.868986+00:00", "task_id": "{id}", "group_id": "g1", "parent_id": "p1"}}"#
        ),
    )
    .await;
    let r = fx.backend.get(&id).await.unwrap().unwrap();
    assert_eq!(r.status, TaskState::Success);
    assert_eq!(
        r.result,
        json!({"d": {"__type__": "decimal", "__value__": "3.5"}, "b": {"__type__": "base64", "__value__": "/wA="}})
    );
    assert_eq!(r.children, vec![json!([["c1", null], null])]);
    assert_eq!(
        r.date_done.map(|d| d.to_rfc3339()),
        Some("2026-11-23T11:01:41.868986+00:00".to_owned())
    );

    // The minimal value the Python client accepts; a Z date with 9 digits.
    let id = TaskId::new();
    fx.raw_set(
        &id,
        &format!(
            r#"{{"status": "FAILURE", "result": {{"exc_type": "MyError", "exc_message": ["custom boom"], "exc_module": "tasks"}}, "date_done": "2026-11-23T11:01:41.123456789Z", "task_id": "{id}"}}"#
        ),
    )
    .await;
    let r = fx.backend.get(&id).await.unwrap().unwrap();
    assert_eq!(r.status, TaskState::Failure);
    assert_eq!(
        r.exception(),
        Some(ExceptionInfo::new("MyError", "tasks", "custom boom"))
    );
    assert_eq!(r.traceback, None);
    assert!(r.children.is_empty());
    assert!(r.date_done.is_some());
}

fn assert_malformed(e: &Error, needle: &str) {
    assert_eq!(e.kind(), ErrorKind::Malformed, "{}", e.chain_text());
    assert!(
        e.chain_text().contains(needle),
        "`{}` does not say `{needle}`",
        e.chain_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_are_clear_errors() {
    let Some(fx) = Fx::new("bad_values_are_clear_errors").await else {
        return;
    };
    let id = TaskId::new();
    fx.raw_set(&id, r#"{"status": "SUCCESS", "result": 7}"#)
        .await;
    let e = fx.backend.get(&id).await.unwrap_err();
    assert_malformed(&e, "no task_id");
    assert!(e.chain_text().contains(id.as_str()), "{}", e.chain_text());
    // A wait does not end on it, and reports it when its time is up.
    let e = fx
        .backend
        .wait(&id, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_malformed(&e, "no task_id");

    let id = TaskId::new();
    fx.raw_set(
        &id,
        &format!(r#"{{"status": "success", "task_id": "{id}"}}"#),
    )
    .await;
    assert_malformed(&fx.backend.get(&id).await.unwrap_err(), "unknown status");

    let id = TaskId::new();
    fx.raw_set(&id, "\u{1}garbage").await;
    assert_malformed(&fx.backend.get(&id).await.unwrap_err(), "not valid JSON");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_does_not_end_a_wait() {
    let Some(fx) = Fx::new("a_bad_message_does_not_end_a_wait").await else {
        return;
    };
    let id = TaskId::new();
    let mut fut = pin!(fx.backend.wait(&id, Duration::from_secs(30)));
    assert_pending(&mut fut, "a wait on nothing").await;
    let key = fx.key(&id);
    let mut raw = fx.raw.clone();
    for junk in [
        r#"{"status": "SUCCESS", "result": 7}"#.to_owned(),
        format!(r#"{{"status": "PROGRESS", "result": 1, "task_id": "{id}"}}"#),
        "not json".to_owned(),
    ] {
        let _: i64 = raw.publish(&key, junk).await.unwrap();
    }
    assert_pending(&mut fut, "a wait after unreadable messages").await;
    fx.backend
        .store(TaskResult::success(id.clone(), json!(3)))
        .await
        .unwrap();
    let got = woken(&mut fut, "a wait after SUCCESS").await.unwrap();
    assert_eq!(got.map(|r| r.result), Some(json!(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_pythons_nan_and_big_ints() {
    let Some(fx) = Fx::new("reads_pythons_nan_and_big_ints").await else {
        return;
    };
    let id = TaskId::new();
    fx.raw_set(
        &id,
        &format!(
            r#"{{"status": "SUCCESS", "result": [NaN, Infinity, -Infinity, 1180591620717411303424], "traceback": null, "children": [], "date_done": "2026-11-23T11:01:41.868986+00:00", "task_id": "{id}"}}"#
        ),
    )
    .await;
    let r = fx.backend.get(&id).await.unwrap().unwrap();
    assert_eq!(r.status, TaskState::Success);
    let items = r.result.as_array().unwrap();
    let floats: Vec<f64> = items
        .iter()
        .map(|v| celeriac_core::wire::json::as_f64(v).unwrap())
        .collect();
    assert!(floats[0].is_nan());
    assert_eq!(floats[1], f64::INFINITY);
    assert_eq!(floats[2], f64::NEG_INFINITY);
    assert_eq!(floats[3], 2f64.powi(70));

    // The same value published wakes a waiter.
    let id = TaskId::new();
    let mut fut = pin!(fx.backend.wait(&id, Duration::from_secs(30)));
    assert_pending(&mut fut, "a wait on nothing").await;
    let _: i64 = fx
        .raw
        .clone()
        .publish(
            fx.key(&id),
            format!(r#"{{"status": "SUCCESS", "result": NaN, "task_id": "{id}"}}"#),
        )
        .await
        .unwrap();
    let got = woken(&mut fut, "a wait on a NaN result").await.unwrap();
    assert_eq!(got.map(|r| r.result), Some(json!("NaN")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_celery_57_compressed_results() {
    let Some(fx) = Fx::new("reads_celery_57_compressed_results").await else {
        return;
    };
    use std::io::Write;
    let id = TaskId::new();
    let json = format!(
        r#"{{"status": "SUCCESS", "result": {{"big": "{}"}}, "traceback": null, "children": [], "date_done": null, "task_id": "{id}"}}"#,
        "x".repeat(10_000)
    );
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(json.as_bytes()).unwrap();
    let mut value = b"\x00celery-compressed\x00application/x-gzip\x00".to_vec();
    value.extend(z.finish().unwrap());
    let _: () = fx
        .raw
        .clone()
        .set_ex(fx.key(&id), value, 300)
        .await
        .unwrap();
    let r = fx.backend.get(&id).await.unwrap().unwrap();
    assert_eq!(r.status, TaskState::Success);
    assert_eq!(r.result["big"].as_str().map(str::len), Some(10_000));
    // The guard runs in Redis, which cannot decompress: a compressed value
    // counts as not SUCCESS, and a later store replaces it.
    let started = TaskResult::new(id.clone(), TaskState::Started, json!(null), None);
    fx.backend.store(started).await.unwrap();
    assert_eq!(
        fx.backend.get(&id).await.unwrap().map(|r| r.status),
        Some(TaskState::Started)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_are_checked_and_tls_is_built_in() {
    let e = RedisBackend::from_url("redis://127.0.0.1:6379/0?result_expires=soon")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = RedisBackend::from_url("amqp://127.0.0.1/")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    // Nothing listens on port 1: a passing fault, whatever the scheme. A
    // rediss:// URL gets that far only if TLS is compiled in.
    for url in ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0"] {
        let e = RedisBackend::from_url(url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transient, "{url}: {}", e.chain_text());
    }
    let e = RedisBackend::from_url("redis://:hunter2@127.0.0.1:1/0")
        .await
        .unwrap_err();
    assert!(!e.chain_text().contains("hunter2"), "{}", e.chain_text());
}
