//! The Redis broker against a real Redis, read raw: the keys and entries
//! kombu expects, the visibility sweep, leases kept by `extend`, fencing
//! against Python's bookkeeping, durable delays, malformed input
//! (`celery-protocol.md` §10) and a connection killed mid-run.
//!
//! Needs Redis at `CELERIAC_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379/0`); without it every test prints `SKIP` and
//! passes, unless `CELERIAC_REQUIRE_SERVICES=1`. Each test uses its own
//! `global_keyprefix` and deletes its keys at the end. The connection-kill
//! test uses database 8, which no other suite uses, and kills only the
//! clients connected to it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use celeriac_conformance::service::note;
use celeriac_conformance::services_required;
use celeriac_core::{
    Broker, Delivery, ErrorKind, FetchRequest, Message, ResultBackend, Settlement, TaskId,
    TaskResult, TaskState,
};
use chrono::Utc;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio::time::Instant;

fn base_url() -> String {
    std::env::var("CELERIAC_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_owned())
}

/// One test's namespace: a broker, a raw connection, a queue.
struct Fx {
    url: String,
    prefix: String,
    queue: String,
    broker: celeriac_redis::RedisBroker,
    raw: MultiplexedConnection,
}

impl Fx {
    async fn new(test: &str) -> Option<Fx> {
        Self::with(test, &base_url(), |b| b).await
    }

    async fn with(
        test: &str,
        url: &str,
        f: impl FnOnce(celeriac_redis::RedisBrokerBuilder) -> celeriac_redis::RedisBrokerBuilder,
    ) -> Option<Fx> {
        let client = redis::Client::open(url).unwrap();
        let raw = match tokio::time::timeout(
            Duration::from_secs(3),
            client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(c)) => c,
            _ => {
                assert!(
                    !services_required(),
                    "{test}: Redis at {url} is unreachable and CELERIAC_REQUIRE_SERVICES=1"
                );
                note(&format!("SKIP {test}: Redis at {url} is unreachable"));
                return None;
            }
        };
        let prefix = format!("{}:", celeriac_conformance::unique_ns());
        let broker = f(celeriac_redis::RedisBroker::builder(url).global_keyprefix(&prefix))
            .build()
            .await
            .unwrap();
        Some(Fx {
            url: url.to_owned(),
            queue: celeriac_conformance::support::queue_name(test),
            prefix,
            broker,
            raw,
        })
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    fn list(&self, step: u8) -> String {
        if step == 0 {
            self.key(&self.queue)
        } else {
            self.key(&format!("{}\x06\x16{step}", self.queue))
        }
    }

    fn message(&self, n: u64) -> Message {
        celeriac_conformance::support::message(&self.queue, n)
    }

    fn req(&self, max: usize, lease: Duration, wait: Duration) -> FetchRequest {
        celeriac_conformance::support::request(&[&self.queue], max, lease, wait)
    }

    async fn fetch(&self, max: usize, wait: Duration) -> Vec<Delivery> {
        self.broker
            .fetch(&self.req(max, Duration::from_secs(60), wait))
            .await
            .unwrap()
    }

    async fn hget(&mut self, key: &str, field: &str) -> Option<Vec<u8>> {
        self.raw.hget(self.key(key), field).await.unwrap()
    }

    async fn zscore(&mut self, key: &str, member: &str) -> Option<f64> {
        self.raw.zscore(self.key(key), member).await.unwrap()
    }

    async fn now(&mut self) -> f64 {
        let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut self.raw).await.unwrap();
        s as f64 + us as f64 / 1e6
    }
}

impl Drop for Fx {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    }
}

/// A kombu envelope as Python writes it, with `headers` and `body` given.
fn py_envelope(queue: &str, headers: Value, body: &str, tag: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(body);
    json!({
        "body": b64,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": headers.get("id").cloned().unwrap_or(Value::Null),
            "reply_to": "5f968c8c-49b6-344a-822b-e609ce66d58f",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": tag,
        },
    })
    .to_string()
}

fn py_headers(id: &str) -> Value {
    json!({"lang": "py", "task": "tasks.add", "id": id, "shadow": null, "eta": null,
           "expires": null, "group": null, "group_index": null, "retries": 0,
           "timelimit": [null, null], "root_id": id, "parent_id": null,
           "argsrepr": "(2, 3)", "kwargsrepr": "{}", "origin": "gen1@host",
           "ignore_result": false})
}

const PY_BODY: &str =
    r#"[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_claim_ack_leave_kombus_keys() {
    let Some(mut fx) = Fx::new("layout").await else {
        return;
    };
    let m = fx.message(1);
    let id = m.id().clone();
    fx.broker.publish(vec![m]).await.unwrap();

    // After publish: one entry in the bare list, kombu's envelope.
    let entries: Vec<String> = fx.raw.lrange(fx.list(0), 0, -1).await.unwrap();
    assert_eq!(entries.len(), 1);
    let env: Value = serde_json::from_str(&entries[0]).unwrap();
    assert_eq!(env["headers"]["id"], json!(id.as_str()));
    assert_eq!(env["properties"]["body_encoding"], json!("base64"));
    assert_eq!(
        env["properties"]["delivery_info"],
        json!({"exchange": "", "routing_key": fx.queue})
    );
    let tag = env["properties"]["delivery_tag"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&tag).is_ok(), "a UUID delivery tag");
    let members: Vec<Vec<u8>> = fx
        .raw
        .smembers(fx.key(&format!("_kombu.binding.{}", fx.queue)))
        .await
        .unwrap();
    let member = format!("{q}\x06\x16\x06\x16{q}", q = fx.queue).into_bytes();
    assert_eq!(members, vec![member]);

    // After the claim: out of the list, in unacked as [envelope, "", queue],
    // scored lease end - visibility timeout.
    let before = fx.now().await;
    let got = fx
        .broker
        .fetch(&fx.req(1, Duration::from_secs(60), Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let len: usize = fx.raw.llen(fx.list(0)).await.unwrap();
    assert_eq!(len, 0);
    // Filed under the attempt's own tag, not the envelope's.
    assert_eq!(fx.hget("unacked", &tag).await, None);
    let tag = format!("celeriac:{}", got[0].lease.token);
    let value = fx.hget("unacked", &tag).await.expect("an unacked entry");
    let value: Value = serde_json::from_slice(&value).unwrap();
    assert_eq!(value[0], env, "the envelope as popped");
    assert_eq!(value[1], json!(""));
    assert_eq!(value[2], json!(fx.queue));
    let score = fx
        .zscore("unacked_index", &tag)
        .await
        .expect("an index entry");
    let expected = before + 60.0 - 3600.0;
    assert!(
        (score - expected).abs() < 2.0,
        "score {score}, expected about {expected}"
    );

    // After the ack: gone from both.
    fx.broker
        .settle(&got[0].lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    assert_eq!(fx.hget("unacked", &tag).await, None);
    assert_eq!(fx.zscore("unacked_index", &tag).await, None);
    let mut keys: Vec<String> = fx.raw.keys(fx.key("celeriac.*")).await.unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![fx.key("celeriac.queues"), fx.key("celeriac.token")],
        "nothing else is kept per message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_go_to_kombus_step_lists() {
    let Some(mut fx) = Fx::new("steps").await else {
        return;
    };
    let ms = [0u8, 2, 5, 7, 9].map(|p| {
        let mut m = fx.message(u64::from(p));
        m.properties.priority = Some(p);
        m
    });
    fx.broker.publish(ms.to_vec()).await.unwrap();
    for (step, n) in [(0u8, 2usize), (3, 1), (6, 1), (9, 1)] {
        let len: usize = fx.raw.llen(fx.list(step)).await.unwrap();
        assert_eq!(len, n, "list of step {step}");
    }
    // kombu's order: step 0 first.
    let got = fx.fetch(5, Duration::from_secs(5)).await;
    let order: Vec<u64> = got.iter().map(celeriac_conformance::support::arg).collect();
    assert_eq!(order, vec![0, 2, 5, 7, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_envelopes_are_consumed() {
    let Some(mut fx) = Fx::new("python").await else {
        return;
    };
    let id = uuid::Uuid::new_v4().to_string();
    let env = py_envelope(&fx.queue, py_headers(&id), PY_BODY, "tag-py-1");
    let _: () = fx.raw.lpush(fx.list(0), &env).await.unwrap();
    let d = fx.fetch(1, Duration::from_secs(5)).await.remove(0);
    let m = d.message.as_ref().expect("a Python message decodes");
    assert_eq!(m.id().as_str(), id);
    assert_eq!(m.body.args, vec![json!(2), json!(3)]);
    let tag = format!("celeriac:{}", d.lease.token);
    assert!(fx.hget("unacked", &tag).await.is_some());
    fx.broker
        .settle(&d.lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    assert!(fx.hget("unacked", &tag).await.is_none());
    let left: usize = fx.raw.hlen(fx.key("unacked")).await.unwrap();
    assert_eq!(left, 0);
}

/// A Python envelope is filed as `[envelope, "", queue]`, whatever route
/// its `delivery_info` names, so every sweep restores it to the queue it
/// came from. When it carries kombu's redelivered mark, the claim finds its
/// delivery tag (written with Python's `json.dumps` separators, past
/// decoys: the same names as string values and as keys elsewhere) and
/// counts the delivery under it; the ack deletes the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_envelopes_go_back_to_their_queue_and_redeliveries_count() {
    let Some(mut fx) = Fx::new("spaced").await else {
        return;
    };
    let id = uuid::Uuid::new_v4().to_string();
    let b64 = base64::engine::general_purpose::STANDARD.encode(PY_BODY);
    let env = format!(
        r#"{{"body": "{b64}", "content-encoding": "utf-8", "content-type": "application/json", "headers": {{"lang": "py", "task": "tasks.add", "id": "{id}", "root_id": "{id}", "parent_id": null, "group": null, "argsrepr": "('properties', \"delivery_tag\": \"no\")", "kwargsrepr": "{{}}", "origin": "gen1@host", "stamps": {{"delivery_tag": "decoy", "exchange": "decoy"}}, "shadow": "properties", "redelivered": true}}, "properties": {{"correlation_id": "{id}", "reply_to": "r", "delivery_mode": 2, "delivery_info": {{"exchange": "ex1", "routing_key": "rk1", "redelivered": true}}, "priority": 0, "body_encoding": "base64", "delivery_tag": "tag-spaced-1"}}}}"#
    );
    serde_json::from_str::<Value>(&env).expect("the test envelope is JSON");
    let _: () = fx.raw.lpush(fx.list(0), &env).await.unwrap();
    let d = fx.fetch(1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(d.message.as_ref().expect("decodes").id().as_str(), id);
    assert_eq!(d.deliveries, 2, "a redelivered envelope counts 2");
    let counter = "celeriac.deliveries.tag-spaced-1";
    let count: Option<u32> = fx.raw.get(fx.key(counter)).await.unwrap();
    assert_eq!(count, Some(2));
    let value = fx
        .hget("unacked", &format!("celeriac:{}", d.lease.token))
        .await
        .expect("held under the attempt's tag");
    let value: Value = serde_json::from_slice(&value).unwrap();
    assert_eq!(
        value,
        json!([serde_json::from_str::<Value>(&env).unwrap(), "", fx.queue])
    );
    fx.broker
        .settle(&d.lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    let left: usize = fx.raw.hlen(fx.key("unacked")).await.unwrap();
    assert_eq!(left, 0);
    let count: Option<u32> = fx.raw.get(fx.key(counter)).await.unwrap();
    assert_eq!(count, None, "the ack deletes the count");
}

/// `settle_many` settles a batch in one call, each settlement fenced on
/// its own: a lease already settled and a repeated lease are refused, the
/// others are settled, with their results stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_many_fences_each_settlement() {
    let Some(mut fx) = Fx::new("settle-many").await else {
        return;
    };
    let ms: Vec<Message> = (0..3).map(|i| fx.message(i)).collect();
    fx.broker.publish(ms).await.unwrap();
    let got = fx.fetch(3, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3);
    fx.broker
        .settle(&got[0].lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    let id2 = got[2].lease.id.clone();
    let ack = |result| Settlement::Ack { result };
    let batch = vec![
        (got[0].lease.clone(), ack(None)),
        (got[1].lease.clone(), ack(None)),
        (
            got[2].lease.clone(),
            ack(Some(TaskResult::success(id2.clone(), json!(5)))),
        ),
        (got[1].lease.clone(), ack(None)),
    ];
    let out = fx.broker.settle_many(&batch).await;
    let kinds: Vec<Option<ErrorKind>> = out
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.kind()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            Some(ErrorKind::LeaseLost),
            None,
            None,
            Some(ErrorKind::LeaseLost)
        ]
    );
    let stored = fx
        .broker
        .get(&id2)
        .await
        .unwrap()
        .expect("the result is stored");
    assert_eq!(stored.result, json!(5));
    let left: usize = fx.raw.hlen(fx.key("unacked")).await.unwrap();
    assert_eq!(left, 0);
    let index: usize = fx.raw.zcard(fx.key("unacked_index")).await.unwrap();
    assert_eq!(index, 0);
}

/// Many idle fetches share one watcher per list key: each raw `LPUSH` (as
/// a Python producer sends) wakes them, every message goes to exactly one
/// fetch, and no fetch sits out its wait, however the pushes interleave
/// with the fetches parking, waking and claiming again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_fetches_share_watchers_and_each_push_is_claimed_once() {
    let Some(mut fx) = Fx::new("idle_fetches_share_watchers").await else {
        return;
    };
    const FETCHES: usize = 8;
    let wait = Duration::from_secs(60);
    let started = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..FETCHES {
        let broker = fx.broker.clone();
        let req = fx.req(1, Duration::from_secs(60), wait);
        joins.push(tokio::spawn(
            async move { broker.fetch(&req).await.unwrap() },
        ));
    }
    let mut sent = HashSet::new();
    for i in 0..FETCHES {
        let id = format!("watch-{i}");
        let env = py_envelope(&fx.queue, py_headers(&id), PY_BODY, &format!("tag-{i}"));
        let list = fx.list(0);
        let _: () = fx.raw.lpush(list, env).await.unwrap();
        sent.insert(id);
        tokio::task::yield_now().await;
    }
    let mut got = HashSet::new();
    for j in joins {
        let ds = j.await.unwrap();
        assert_eq!(ds.len(), 1, "each fetch of max 1 gets one message");
        for d in ds {
            assert!(
                got.insert(d.lease.id.as_str().to_owned()),
                "delivered twice"
            );
            fx.broker
                .settle(&d.lease, Settlement::Ack { result: None })
                .await
                .unwrap();
        }
    }
    assert_eq!(got, sent);
    assert!(
        started.elapsed() < wait / 2,
        "a fetch waited out its wait: a wake-up was lost ({:?})",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_restores_an_old_entry_and_leaves_a_fresh_one() {
    let Some(mut fx) = Fx::new("sweep").await else {
        return;
    };
    // What a Python worker that died left behind: one entry 4000 s old, one
    // just taken.
    let now = fx.now().await;
    let (old_id, fresh_id) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    for (id, tag, score) in [
        (&old_id, "tag-old", now - 4000.0),
        (&fresh_id, "tag-fresh", now),
    ] {
        let env = py_envelope(&fx.queue, py_headers(id), PY_BODY, tag);
        let value = format!("[{env}, \"\", \"{}\"]", fx.queue);
        let _: () = fx.raw.hset(fx.key("unacked"), tag, value).await.unwrap();
        let _: () = fx
            .raw
            .zadd(fx.key("unacked_index"), tag, score)
            .await
            .unwrap();
    }
    let restored = fx.broker.restore_visible().await.unwrap();
    assert_eq!(restored, 1);
    assert!(fx.hget("unacked", "tag-old").await.is_none());
    assert!(fx.hget("unacked", "tag-fresh").await.is_some());
    // Restored to the list, marked redelivered as kombu marks it.
    let entries: Vec<String> = fx.raw.lrange(fx.list(0), 0, -1).await.unwrap();
    assert_eq!(entries.len(), 1);
    let env: Value = serde_json::from_str(&entries[0]).unwrap();
    assert_eq!(env["headers"]["redelivered"], json!(true));
    assert_eq!(
        env["properties"]["delivery_info"]["redelivered"],
        json!(true)
    );
    let d = fx.fetch(1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(d.lease.id.as_str(), old_id);
    // The lock is released.
    let lock: Option<String> = fx.raw.get(fx.key("unacked_mutex")).await.unwrap();
    assert_eq!(lock, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_keeps_a_long_task_from_every_sweep() {
    let vt = Duration::from_secs(1);
    let Some(mut fx) = Fx::with("extend_vt", &base_url(), |b| b.visibility_timeout(vt)).await
    else {
        return;
    };
    fx.broker.publish(vec![fx.message(1)]).await.unwrap();
    let d = fx
        .broker
        .fetch(&fx.req(1, Duration::from_millis(800), Duration::from_secs(5)))
        .await
        .unwrap()
        .remove(0);
    let end = Instant::now() + Duration::from_millis(2500);
    // A long task: its worker extends the lease while it runs, past the
    // visibility timeout and past the first lease.
    while Instant::now() < end {
        let st = fx
            .broker
            .extend(std::slice::from_ref(&d.lease), Duration::from_millis(800))
            .await
            .unwrap();
        assert_eq!(st, vec![celeriac_core::LeaseStatus::Held]);
        // kombu's sweep query finds nothing to restore, nor does ours.
        let now = fx.now().await;
        let due: Vec<String> = fx
            .raw
            .zrangebyscore(fx.key("unacked_index"), 0, now - vt.as_secs_f64())
            .await
            .unwrap();
        assert!(due.is_empty(), "kombu would restore {due:?}");
        assert_eq!(fx.broker.restore_visible().await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fx.broker
        .settle(&d.lease, Settlement::Ack { result: None })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_restore_and_reclaim_fences_the_rust_attempt() {
    let Some(mut fx) = Fx::new("fence_py").await else {
        return;
    };
    fx.broker.publish(vec![fx.message(1)]).await.unwrap();
    let d = fx.fetch(1, Duration::from_secs(5)).await.remove(0);
    let tag = {
        let recs: Vec<String> = fx.raw.hkeys(fx.key("unacked")).await.unwrap();
        recs[0].clone()
    };
    assert_eq!(tag, format!("celeriac:{}", d.lease.token));
    // A Python worker's sweep restores it (HGET, ZREM, HDEL, RPUSH) and a
    // Python worker takes it again (ZADD now, HSET), under the envelope's
    // delivery tag.
    let value: Vec<u8> = fx.hget("unacked", &tag).await.unwrap();
    let parsed: Value = serde_json::from_slice(&value).unwrap();
    let env = parsed[0].to_string();
    let py_tag = parsed[0]["properties"]["delivery_tag"]
        .as_str()
        .unwrap()
        .to_owned();
    let _: () = redis::pipe()
        .atomic()
        .zrem(fx.key("unacked_index"), &tag)
        .hdel(fx.key("unacked"), &tag)
        .rpush(fx.list(0), &env)
        .query_async(&mut fx.raw)
        .await
        .unwrap();
    let _: Option<String> = fx.raw.rpop(fx.list(0), None).await.unwrap();
    let now = fx.now().await;
    let _: () = redis::pipe()
        .atomic()
        .zadd(fx.key("unacked_index"), &py_tag, now)
        .hset(fx.key("unacked"), &py_tag, &value)
        .query_async(&mut fx.raw)
        .await
        .unwrap();
    // The Rust attempt can neither ack nor extend; Python's entry stays.
    let err = fx
        .broker
        .settle(&d.lease, Settlement::Ack { result: None })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LeaseLost);
    let st = fx
        .broker
        .extend(std::slice::from_ref(&d.lease), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(st, vec![celeriac_core::LeaseStatus::Lost]);
    assert!(fx.hget("unacked", &py_tag).await.is_some());
    assert_eq!(fx.zscore("unacked_index", &py_tag).await, Some(now));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_are_held_in_redis_and_outlive_their_handle() {
    let Some(mut fx) = Fx::new("delay").await else {
        return;
    };
    let eta = celeriac_conformance::support::in_future(Duration::from_millis(1500));
    let m = celeriac_conformance::support::with_eta(fx.message(1), eta);
    let id = m.id().clone();
    fx.broker.publish(vec![m]).await.unwrap();
    assert!(fx.fetch(1, Duration::ZERO).await.is_empty());
    // Held in kombu's unacked (visible to Python tooling), in the delayed
    // set by eta, and scored so no sweep restores it before its eta.
    let tags: Vec<String> = fx.raw.hkeys(fx.key("unacked")).await.unwrap();
    assert_eq!(tags.len(), 1);
    let delayed = format!("celeriac.delayed.{}", fx.queue);
    let at = fx.zscore(&delayed, &tags[0]).await.unwrap();
    assert!((at - eta.timestamp_millis() as f64 / 1000.0).abs() < 0.01);
    let score = fx.zscore("unacked_index", &tags[0]).await.unwrap();
    assert!(
        score + 3600.0 > at,
        "a sweep would restore it before its eta"
    );

    // The handle goes away (a worker dies); another one delivers it at its eta.
    let url = fx.url.clone();
    let prefix = fx.prefix.clone();
    let other = celeriac_redis::RedisBroker::builder(url.as_str())
        .global_keyprefix(prefix.as_str())
        .build()
        .await
        .unwrap();
    fx.broker = other;
    let d = fx.fetch(1, Duration::from_secs(10)).await.remove(0);
    celeriac_conformance::support::assert_reached(eta, "a delayed message came early");
    assert_eq!(d.lease.id, id);
    assert_eq!(d.deliveries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_eta_message_is_held_until_due() {
    let Some(mut fx) = Fx::new("py_eta").await else {
        return;
    };
    let id = uuid::Uuid::new_v4().to_string();
    let eta = Utc::now() + chrono::TimeDelta::milliseconds(1200);
    let mut headers = py_headers(&id);
    headers["eta"] = json!(eta.to_rfc3339());
    let env = py_envelope(&fx.queue, headers, PY_BODY, "tag-eta");
    let _: () = fx.raw.lpush(fx.list(0), &env).await.unwrap();
    // The claim moves it into the delayed set; it stays in unacked, under
    // the tag of the claim that found it early.
    assert!(fx.fetch(1, Duration::ZERO).await.is_empty());
    let tags: Vec<String> = fx.raw.hkeys(fx.key("unacked")).await.unwrap();
    assert_eq!(tags.len(), 1);
    assert!(tags[0].starts_with("celeriac:"), "{tags:?}");
    let delayed = format!("celeriac.delayed.{}", fx.queue);
    assert!(fx.zscore(&delayed, &tags[0]).await.is_some());
    let d = fx.fetch(1, Duration::from_secs(10)).await.remove(0);
    assert!(Utc::now() + chrono::TimeDelta::milliseconds(10) >= eta);
    assert_eq!(d.lease.id.as_str(), id);
    assert_eq!(d.deliveries, 1, "holding it was not a delivery");
    fx.broker
        .settle(&d.lease, Settlement::Ack { result: None })
        .await
        .unwrap();
    let left: usize = fx.raw.hlen(fx.key("unacked")).await.unwrap();
    assert_eq!(left, 0);
}

/// Every row of `celery-protocol.md` §10 that a list entry can carry,
/// each followed by a valid message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_dead_lettered_and_the_next_one_runs() {
    let Some(mut fx) = Fx::new("malformed").await else {
        return;
    };
    let q = fx.queue.clone();
    let id = || uuid::Uuid::new_v4().to_string();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut rows: Vec<(&str, String)> = vec![
        ("1 not JSON", "this is not json {".to_owned()),
        ("1b JSON but not an object", "[1, 2, 3]".to_owned()),
        ("2 body not base64", {
            let mut e: Value =
                serde_json::from_str(&py_envelope(&q, py_headers(&id()), PY_BODY, "t2")).unwrap();
            e["body"] = json!("!!!not base64!!!");
            e.to_string()
        }),
        ("3 unknown body_encoding", {
            let mut e: Value =
                serde_json::from_str(&py_envelope(&q, py_headers(&id()), PY_BODY, "t3")).unwrap();
            e["properties"]["body_encoding"] = json!("rot13");
            e.to_string()
        }),
        ("4 no delivery_tag", {
            let mut e: Value =
                serde_json::from_str(&py_envelope(&q, py_headers(&id()), PY_BODY, "t4")).unwrap();
            e["properties"]
                .as_object_mut()
                .unwrap()
                .remove("delivery_tag");
            e.to_string()
        }),
        ("5 no delivery_info", {
            let mut e: Value =
                serde_json::from_str(&py_envelope(&q, py_headers(&id()), PY_BODY, "t5")).unwrap();
            e["properties"]
                .as_object_mut()
                .unwrap()
                .remove("delivery_info");
            e.to_string()
        }),
        ("6 no id header", {
            let mut h = py_headers(&id());
            h.as_object_mut().unwrap().remove("id");
            py_envelope(&q, h, PY_BODY, "t6")
        }),
        (
            "7 body JSON invalid",
            py_envelope(&q, py_headers(&id()), "[[1, 2], {", "t7"),
        ),
        (
            "8 body of 2 elements",
            py_envelope(&q, py_headers(&id()), "[[1, 2], {}]", "t8"),
        ),
        (
            "9 kwargs not an object",
            py_envelope(&q, py_headers(&id()), "[[1], [2], {}]", "t9"),
        ),
        ("12 pickle", {
            let mut e: Value =
                serde_json::from_str(&py_envelope(&q, py_headers(&id()), PY_BODY, "t12")).unwrap();
            e["content-type"] = json!("application/x-python-serialize");
            e["body"] = json!(b64("\u{80}\u{4}K\u{1}."));
            e.to_string()
        }),
        ("15 unparseable eta", {
            let mut h = py_headers(&id());
            h["eta"] = json!("next tuesday");
            py_envelope(&q, h, PY_BODY, "t15")
        }),
        ("20 object body without task", {
            let mut e: Value =
                serde_json::from_str(&py_envelope(&q, json!({}), "{\"args\": []}", "t20")).unwrap();
            e["headers"] = json!({});
            e.to_string()
        }),
        (
            "22 NaN",
            py_envelope(&q, py_headers(&id()), "[[NaN, Infinity], {}, {}]", "t22"),
        ),
        (
            "23 unknown tagged type",
            py_envelope(
                &q,
                py_headers(&id()),
                r#"[[{"__type__": "frobnicator", "__value__": 1}], {}, {}]"#,
                "t23",
            ),
        ),
    ];
    // Duplicate delivery tags: a second message reusing a tag in flight.
    rows.push((
        "duplicate tag",
        py_envelope(&q, py_headers(&id()), PY_BODY, "t22"),
    ));
    let mut dead = 0;
    for (row, bad) in &rows {
        let good = fx.message(7);
        let good_id = good.id().clone();
        let _: () = fx.raw.lpush(fx.list(0), bad).await.unwrap();
        fx.broker.publish(vec![good]).await.unwrap();
        let mut seen_good = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen_good {
            assert!(
                Instant::now() < deadline,
                "row {row}: the valid message never came"
            );
            for d in fx.fetch(10, Duration::from_secs(2)).await {
                match &d.message {
                    Ok(m) if *m.id() == good_id => {
                        seen_good = true;
                        fx.broker
                            .settle(&d.lease, Settlement::Ack { result: None })
                            .await
                            .unwrap();
                    }
                    Ok(_) => {
                        // A row our decoder accepts (a two-element body,
                        // NaN, a tagged value, a missing tag or route): it
                        // runs like any message.
                        fx.broker
                            .settle(&d.lease, Settlement::Ack { result: None })
                            .await
                            .unwrap();
                    }
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::Malformed, "row {row}: {e}");
                        let result = (!d.lease.id.as_str().is_empty()).then(|| {
                            let exc = celeriac_core::ExceptionInfo::new(
                                "DecodeError",
                                "kombu.exceptions",
                                "malformed",
                            );
                            TaskResult::failure(d.lease.id.clone(), &exc, None)
                        });
                        fx.broker
                            .settle(
                                &d.lease,
                                Settlement::DeadLetter {
                                    reason: format!("row {row}: {}", e.chain_text()),
                                    result,
                                },
                            )
                            .await
                            .unwrap();
                        dead += 1;
                    }
                }
            }
        }
        let held: usize = fx.raw.hlen(fx.key("unacked")).await.unwrap();
        assert_eq!(held, 0, "row {row}: a stale unacked entry");
        let left: usize = fx.raw.llen(fx.list(0)).await.unwrap();
        assert_eq!(left, 0, "row {row}: something is left in the list");
    }
    // Rows 1 and 1b were dead-lettered by the claim itself.
    let letters = fx.broker.dead_letters(100).await.unwrap();
    assert_eq!(letters.len(), dead + 2, "{letters:?}");
    assert!(letters.iter().all(|l| !l.reason.is_empty() && l.queue == q));
    // A FAILURE was stored where the id was readable (row 7, say).
    let with_id: Vec<_> = letters
        .iter()
        .filter(|l| !l.id.as_str().is_empty())
        .collect();
    assert!(!with_id.is_empty());
    for l in with_id {
        let r = fx.broker.get(&l.id).await.unwrap();
        assert_eq!(
            r.map(|r| r.status),
            Some(TaskState::Failure),
            "{}",
            l.reason
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connection_loses_nothing() {
    // Database 8 is this test's alone: it kills every client on it.
    let url = {
        let base = base_url();
        let mut u = url::Url::parse(&base).unwrap();
        u.set_path("/8");
        u.to_string()
    };
    let Some(fx) = Fx::with("kill", &url, |b| b).await else {
        return;
    };
    const TOTAL: u64 = 300;
    let ids: HashSet<TaskId> = {
        let ms: Vec<Message> = (0..TOTAL).map(|n| fx.message(n)).collect();
        let ids = ms.iter().map(|m| m.id().clone()).collect();
        fx.broker.publish(ms).await.unwrap();
        ids
    };
    let fx = Arc::new(fx);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let url = url.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut admin = client.get_multiplexed_async_connection().await.unwrap();
            let me: i64 = redis::cmd("CLIENT")
                .arg("ID")
                .query_async(&mut admin)
                .await
                .unwrap();
            let mut kills = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(40)).await;
                let list: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                for line in list.lines().filter(|l| l.contains(" db=8 ")) {
                    let id: i64 = line
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("id="))
                        .and_then(|v| v.parse().ok())
                        .unwrap();
                    if id != me {
                        let killed: Result<i64, _> = redis::cmd("CLIENT")
                            .arg("KILL")
                            .arg("ID")
                            .arg(id)
                            .query_async(&mut admin)
                            .await;
                        kills += killed.unwrap_or(0);
                    }
                }
            }
            kills
        })
    };
    let mut acked: HashSet<TaskId> = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let req = fx.req(5, Duration::from_secs(1), Duration::from_millis(500));
    while acked.len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {TOTAL} acked: messages were lost",
            acked.len()
        );
        let got = match fx.broker.fetch(&req).await {
            Ok(g) => g,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Transient, "{}", e.chain_text());
                continue;
            }
        };
        for d in got {
            let id = d.lease.id.clone();
            match fx
                .broker
                .settle(&d.lease, Settlement::Ack { result: None })
                .await
            {
                Ok(()) => {
                    acked.insert(id);
                }
                Err(e) if e.kind() == ErrorKind::LeaseLost => {}
                // The ack may have been applied before the reply was lost;
                // the message then never comes back, so count it.
                Err(e) if e.kind() == ErrorKind::Transient => {
                    acked.insert(id);
                }
                Err(e) => panic!("ack failed: {}", e.chain_text()),
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kills = killer.await.unwrap();
    assert!(
        kills >= 2,
        "only {kills} connection(s) killed: the test proved nothing"
    );
    assert_eq!(acked, ids);
}

/// Returns the arm keys of armed claims under the fixture's prefix.
async fn arm_keys(fx: &mut Fx) -> Vec<String> {
    fx.raw.keys(fx.key("celeriac.armed.*")).await.unwrap()
}

/// Waits until some fetch of the fixture has armed a claim.
async fn wait_armed(fx: &mut Fx) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while arm_keys(fx).await.is_empty() {
        assert!(Instant::now() < deadline, "the idle fetch never armed");
        tokio::task::yield_now().await;
    }
}

/// An idle fetch arms its claim behind a blocked `BLMOVE` on the queue's
/// first list. Woken by another list instead, it disarms, and the armed
/// claim takes nothing: a message pushed later waits for the next fetch and
/// is delivered once, as a first delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disarmed_claim_takes_nothing() {
    let Some(mut fx) = Fx::new("disarm").await else {
        return;
    };
    let broker = fx.broker.clone();
    let req = fx.req(1, Duration::from_secs(60), Duration::from_secs(20));
    let waiting = tokio::spawn(async move { broker.fetch(&req).await });
    wait_armed(&mut fx).await;
    // A message of priority 9 lands on another list: a watcher wakes it.
    let mut urgent = fx.message(1);
    urgent.properties.priority = Some(9);
    fx.broker.publish(vec![urgent]).await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(celeriac_conformance::support::arg(&got[0]), 1);
    assert!(arm_keys(&mut fx).await.is_empty(), "disarmed");
    // The disarmed claim, still queued behind its BLMOVE, runs on this
    // push and takes nothing.
    fx.broker.publish(vec![fx.message(2)]).await.unwrap();
    let next = fx.fetch(1, Duration::from_secs(5)).await;
    assert_eq!(next.len(), 1);
    assert_eq!(celeriac_conformance::support::arg(&next[0]), 2);
    assert_eq!(next[0].deliveries, 1, "never claimed before");
    for d in got.iter().chain(&next) {
        fx.broker
            .settle(&d.lease, Settlement::Ack { result: None })
            .await
            .unwrap();
    }
}

/// An armed claim answers a push to the queue's first list by itself: the
/// waiting fetch returns the message, and nothing stays armed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_armed_claim_delivers_a_push() {
    let Some(mut fx) = Fx::new("armed").await else {
        return;
    };
    let broker = fx.broker.clone();
    let req = fx.req(4, Duration::from_secs(60), Duration::from_secs(20));
    let waiting = tokio::spawn(async move { broker.fetch(&req).await });
    wait_armed(&mut fx).await;
    let env = py_envelope(&fx.queue, py_headers("armed-1"), PY_BODY, "tag-armed-1");
    let _: () = fx.raw.lpush(fx.list(0), &env).await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].lease.id.as_str(), "armed-1");
    assert_eq!(got[0].deliveries, 1);
    assert!(arm_keys(&mut fx).await.is_empty(), "the claim took its arm");
    fx.broker
        .settle(&got[0].lease, Settlement::Ack { result: None })
        .await
        .unwrap();
}
