//! celery-protocol.md §12.2: a Rust producer (celeriac's `App` on Redis)
//! sends to a Python Celery worker; the Rust client waits with
//! `AsyncResult::get`. Each case runs against every Celery venv found.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use celeriac::GetError;
use celeriac_interop::harness::{
    each_venv, new_id, Case, Envelope, Published, PyWorkerOptions, SEP, WAIT,
};
use celeriac_interop::tasks;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

fn workers() -> PyWorkerOptions {
    PyWorkerOptions::default()
}

fn date_done(meta: &Value) -> DateTime<Utc> {
    let s = meta["date_done"]
        .as_str()
        .unwrap_or_else(|| panic!("no date_done in {meta}"));
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("date_done {s}: {e}"))
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r01_add_publish_and_get_paths() {
    each_venv("r01_add_publish_and_get_paths", |case| async move {
        let app = case.app().await;
        let _w = case.py_worker(&["q"], workers()).await;
        // PUBLISH path: the client waits before the result exists.
        let r = tasks::add::s(2, 3).queue("q").send(&app).await.unwrap();
        assert_eq!(r.get(WAIT).await.unwrap(), 5);
        // GET path: the result is already stored when the client asks.
        let r = tasks::add::s(20, 22).queue("q").send(&app).await.unwrap();
        case.wire.wait_meta(r.id().as_str(), "SUCCESS", WAIT).await;
        let again = app.result::<i64>(r.id().clone());
        assert_eq!(again.get(Duration::from_millis(500)).await.unwrap(), 42);
        assert_eq!(again.state().await.unwrap(), celeriac::TaskState::Success);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r02_python_error_fields() {
    each_venv("r02_python_error_fields", |case| async move {
        let app = case.app().await;
        let _w = case.py_worker(&["q"], workers()).await;
        let r = app
            .send_task("tasks.fail")
            .args(vec![json!("x"), json!(42)])
            .queue("q")
            .send()
            .await
            .unwrap();
        match r.get(WAIT).await {
            Err(GetError::Failed {
                exception,
                traceback,
            }) => {
                assert_eq!(exception.exc_type, "ValueError");
                assert_eq!(exception.exc_module, "builtins");
                assert!(
                    exception.exc_message.contains('x') && exception.exc_message.contains("42"),
                    "exc_message {:?}",
                    exception.exc_message
                );
                let tb = traceback.expect("Python stores a traceback");
                assert!(tb.contains("ValueError"), "traceback {tb}");
            }
            other => panic!("expected a ValueError failure, got {other:?}"),
        }
        let r = tasks::fail_custom::s("custom".to_owned())
            .queue("q")
            .send(&app)
            .await
            .unwrap();
        match r.get(WAIT).await {
            Err(GetError::Failed { exception, .. }) => {
                assert_eq!(
                    (exception.exc_type.as_str(), exception.exc_module.as_str()),
                    ("CustomError", "tasks")
                );
                assert_eq!(exception.exc_message, "custom");
            }
            other => panic!("expected a CustomError failure, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r03_python_retries_then_succeeds() {
    each_venv("r03_python_retries_then_succeeds", |case| async move {
        let app = case.app().await;
        let _w = case.py_worker(&["q"], workers()).await;
        let id = new_id();
        let published = Published::subscribe(case.base(), std::slice::from_ref(&id)).await;
        let r = tasks::flaky::s(2)
            .queue("q")
            .task_id(id.clone())
            .send(&app)
            .await
            .unwrap();
        assert_eq!(r.get(WAIT).await.unwrap(), 2);
        let msgs = published.wait_status(&id, "SUCCESS", WAIT).await;
        let retries = msgs.iter().filter(|m| m["status"] == "RETRY").count();
        assert_eq!(retries, 2, "RETRY states published: {msgs:?}");
    })
    .await;
}

/// R4. A producer whose ETA tasks Python workers consume sets
/// `eta_to_list=true` (README, "Python Celery and celeriac on one Redis"):
/// the message then goes onto the queue list with its eta, as Python's own
/// producer puts it. (By default celeriac holds a future-eta message in its
/// delayed set, which only celeriac workers move; a Python worker would see
/// it only after a visibility sweep.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r04_eta_and_countdown() {
    each_venv("r04_eta_and_countdown", |case| async move {
        let url = format!("{}?eta_to_list=true", case.url());
        eta_case(&case, &url).await;
    })
    .await;
}

/// Sends by countdown and by eta from Rust, and eta variants (`Z`, 9
/// digits) as raw envelopes; a Python worker started afterwards runs each
/// at its eta, not before.
async fn eta_case(case: &Case, url: &str) {
    {
        let app = case.app_on(url).await;
        let t0 = Utc::now();
        let by_countdown = tasks::add::s(1, 1)
            .queue("q")
            .countdown(Duration::from_secs(2))
            .send(&app)
            .await
            .unwrap();
        let eta = t0 + chrono::Duration::seconds(2);
        let by_eta = tasks::add::s(2, 2)
            .queue("q")
            .eta(eta)
            .send(&app)
            .await
            .unwrap();
        // On the wire: an absolute eta with an explicit offset.
        let sent = case.wire.list("q").await;
        assert_eq!(
            sent.len(),
            2,
            "both messages are in the queue list: {sent:?}"
        );
        for env in &sent {
            let s = env["headers"]["eta"].as_str().expect("eta header");
            assert!(
                DateTime::parse_from_rfc3339(s).is_ok()
                    && (s.ends_with('Z') || s.ends_with("+00:00")),
                "eta {s} is ISO-8601 with an offset"
            );
        }
        // Python parses Celery's own forms and the variants: Z, 9 digits.
        let mut variants = Vec::new();
        for (i, s) in [
            (eta.format("%Y-%m-%dT%H:%M:%S%.6fZ")).to_string(),
            (eta.format("%Y-%m-%dT%H:%M:%S%.9f+00:00")).to_string(),
        ]
        .into_iter()
        .enumerate()
        {
            let id = new_id();
            let mut h = Envelope::headers("tasks.add", &id);
            h["eta"] = json!(s);
            let env = Envelope::with_body(
                h,
                Envelope::body(&json!([i, 10]), &json!({})).as_bytes(),
                "q",
            );
            case.wire.lpush("q", env.to_string().as_bytes()).await;
            variants.push(id);
        }
        let _w = case.py_worker(&["q"], workers()).await;
        assert_eq!(by_countdown.get(WAIT).await.unwrap(), 2);
        assert_eq!(by_eta.get(WAIT).await.unwrap(), 4);
        let not_before = eta - chrono::Duration::milliseconds(100);
        for id in [by_countdown.id().to_string(), by_eta.id().to_string()]
            .into_iter()
            .chain(variants)
        {
            let meta = case.wire.wait_meta(&id, "SUCCESS", WAIT).await;
            let done = date_done(&meta);
            assert!(
                done >= not_before,
                "{id} ran at {done}, before its eta {eta}"
            );
            assert!(
                done <= eta + chrono::Duration::seconds(10),
                "{id} ran late: {done}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r05_expired_is_revoked() {
    each_venv("r05_expired_is_revoked", |case| async move {
        let app = case.app().await;
        let _w = case.py_worker(&["q"], workers()).await;
        let r = tasks::add::s(1, 2)
            .queue("q")
            .expires(Utc::now() - chrono::Duration::seconds(10))
            .send(&app)
            .await
            .unwrap();
        match r.get(WAIT).await {
            Err(GetError::Revoked { reason }) => {
                assert!(reason.contains("expired"), "reason {reason}")
            }
            other => panic!("expected REVOKED, got {other:?}"),
        }
        let meta = case
            .wire
            .meta(r.id().as_str())
            .await
            .expect("REVOKED stored");
        assert_eq!(meta["result"]["exc_type"], "TaskRevokedError");
    })
    .await;
}

/// kombu's list key for a message of priority `p` (default steps).
fn kombu_key(queue: &str, p: u64) -> String {
    let step = [0, 3, 6, 9]
        .into_iter()
        .filter(|s| *s <= p)
        .max()
        .unwrap_or(0);
    if step == 0 {
        queue.to_owned()
    } else {
        format!("{queue}{SEP}{step}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r06_priorities_land_in_kombu_lists() {
    each_venv("r06_priorities_land_in_kombu_lists", |case| async move {
        let app = case.app().await;
        let mut results = Vec::new();
        for p in 0..=9u8 {
            let r = tasks::add::s(i64::from(p), 0)
                .queue("q")
                .priority(p)
                .send(&app)
                .await
                .unwrap();
            results.push((p, r));
        }
        let mut seen = 0;
        for key in [
            "q".to_owned(),
            format!("q{SEP}3"),
            format!("q{SEP}6"),
            format!("q{SEP}9"),
        ] {
            for env in case.wire.list(&key).await {
                let p = env["properties"]["priority"]
                    .as_u64()
                    .expect("properties.priority");
                assert_eq!(
                    kombu_key("q", p),
                    key,
                    "message of priority {p} is in {key:?}"
                );
                let x = Envelope::decode_body(&env)[0][0].as_u64().unwrap();
                assert_eq!(x, p, "sent with priority {x}, carries {p}");
                seen += 1;
            }
        }
        assert_eq!(seen, 10, "every message is in a kombu priority list");
        let _w = case.py_worker(&["q"], workers()).await;
        for (p, r) in results {
            assert_eq!(r.get(WAIT).await.unwrap(), i64::from(p));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r07_unicode_and_8mib_arguments() {
    each_venv("r07_unicode_and_8mib_arguments", |case| async move {
        let app = case.builder_on(&case.url()).max_payload_bytes(64 << 20).build().await.unwrap();
        let _w = case.py_worker(&["q"], workers()).await;
        let text = json!(["accents éàü", "snow ☃", "emoji 😀🎉", "\u{0}nul and \"quotes\"\\", {"ключ": "值"}]);
        let r = app
            .send_task("tasks.echo")
            .args(text.as_array().unwrap().clone())
            .kwargs(json!({"naïve": "𝄞"}).as_object().unwrap().clone())
            .queue("q")
            .send()
            .await
            .unwrap();
        assert_eq!(r.get(WAIT).await.unwrap(), json!([text, {"naïve": "𝄞"}]));
        let big = "x".repeat(8 << 20);
        let r = app.send_task("tasks.echo").args(vec![json!(big)]).queue("q").send().await.unwrap();
        let v = r.get(WAIT).await.unwrap();
        assert_eq!(v[0][0].as_str().map(str::len), Some(8 << 20));
        assert!(v[0][0] == json!(big), "8 MiB round trip");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_custom_queue() {
    each_venv("r08_custom_queue", |case| async move {
        let app = case.app().await;
        let _w = case.py_worker(&["emails"], workers()).await;
        let r = tasks::add::s(3, 4)
            .queue("emails")
            .send(&app)
            .await
            .unwrap();
        assert_eq!(r.get(WAIT).await.unwrap(), 7);
        let members: Vec<Vec<u8>> = case
            .wire
            .cmd(redis::cmd("SMEMBERS").arg("_kombu.binding.emails"))
            .await;
        assert!(
            members.iter().any(|m| m == b"emails\x06\x16\x06\x16emails"),
            "binding of emails: {members:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r09_time_limits_hard_then_soft() {
    each_venv("r09_time_limits_hard_then_soft", |case| async move {
        let app = case.app().await;
        let hard = tasks::sleep::s(5.0)
            .queue("q")
            .time_limit(Duration::from_secs(1))
            .send(&app)
            .await
            .unwrap();
        let soft = tasks::sleep::s(5.0)
            .queue("q")
            .soft_time_limit(Duration::from_secs(1))
            .send(&app)
            .await
            .unwrap();
        let wire = case.wire.list("q").await;
        let limit = |id: &str| {
            wire.iter()
                .find(|e| e["headers"]["id"] == id)
                .map(|e| e["headers"]["timelimit"].clone())
                .unwrap()
        };
        // [hard, soft], seconds as int or float, null when unset.
        let secs = |v: &Value| v.as_f64();
        let h = limit(hard.id().as_str());
        let so = limit(soft.id().as_str());
        assert_eq!(
            (secs(&h[0]), h[1].is_null()),
            (Some(1.0), true),
            "hard limit first: {h}"
        );
        assert_eq!((h.as_array().map(Vec::len)), Some(2));
        assert_eq!(
            (so[0].is_null(), secs(&so[1])),
            (true, Some(1.0)),
            "soft limit second: {so}"
        );
        let _w = case.py_worker(&["q"], workers()).await;
        for (r, name) in [(hard, "TimeLimitExceeded"), (soft, "SoftTimeLimitExceeded")] {
            match r.get(WAIT).await {
                Err(GetError::Failed { exception, .. }) => assert_eq!(exception.exc_type, name),
                other => panic!("expected {name}, got {other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r10_ignore_result_does_not_hang() {
    each_venv("r10_ignore_result_does_not_hang", |case| async move {
        let app = case.app().await;
        let _w = case.py_worker(&["q"], workers()).await;
        let key = case.key("ignored");
        let r = tasks::track::s(case.url(), key.clone(), "m".to_owned(), None)
            .queue("q")
            .ignore_result(true)
            .send(&app)
            .await
            .unwrap();
        let started = Instant::now();
        let got = r.get(Duration::from_secs(10)).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "get() on an ignored result waited {:?} ({got:?})",
            started.elapsed()
        );
        assert!(matches!(got, Err(GetError::NoResults)), "got {got:?}");
        celeriac_interop::harness::wait_for("the ignored task to run", WAIT, || async {
            (case.wire.counts(&key).await.get("m") == Some(&1)).then_some(())
        })
        .await;
        case.wire.wait_unacked_empty(WAIT).await;
        assert!(
            !case
                .wire
                .exists(&format!("celery-task-meta-{}", r.id()))
                .await
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_unregistered_name() {
    each_venv("r11_unregistered_name", |case| async move {
        let app = case.app().await;
        let _w = case.py_worker(&["q"], workers()).await;
        let r = app.send_task("tasks.nope").queue("q").send().await.unwrap();
        match r.get(WAIT).await {
            Err(GetError::Failed { exception, .. }) => {
                assert_eq!(exception.exc_type, "NotRegistered");
                assert_eq!(exception.exc_module, "celery.exceptions");
            }
            other => panic!("expected NotRegistered, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_full_and_minimal_headers() {
    each_venv("r13_full_and_minimal_headers", |case| async move {
        let app = case.app().await;
        let r = tasks::add::s(2, 3).queue("q").send(&app).await.unwrap();
        let id = r.id().to_string();
        let sent = case.wire.list("q").await;
        assert_eq!(sent.len(), 1);
        let env = &sent[0];
        let h = &env["headers"];
        for k in [
            "lang",
            "task",
            "id",
            "shadow",
            "eta",
            "expires",
            "group",
            "group_index",
            "retries",
            "timelimit",
            "root_id",
            "parent_id",
            "argsrepr",
            "kwargsrepr",
            "origin",
            "ignore_result",
            "replaced_task_nesting",
            "stamped_headers",
            "stamps",
        ] {
            assert!(h.get(k).is_some(), "header {k} missing: {h}");
        }
        assert_eq!(h["task"], "tasks.add");
        assert_eq!(h["id"], id.as_str());
        assert_eq!(h["root_id"], id.as_str());
        assert_eq!(h["retries"], 0);
        assert_eq!(h["argsrepr"], "(2, 3)");
        assert_eq!(h["kwargsrepr"], "{}");
        assert!(
            h["origin"].as_str().is_some_and(|o| o.contains('@')),
            "origin {}",
            h["origin"]
        );
        let p = &env["properties"];
        assert_eq!(p["correlation_id"], id.as_str());
        assert_eq!(p["delivery_mode"], 2);
        assert_eq!(
            p["delivery_info"],
            json!({"exchange": "", "routing_key": "q"})
        );
        assert_eq!(p["body_encoding"], "base64");
        assert!(p["delivery_tag"]
            .as_str()
            .is_some_and(|t| uuid::Uuid::parse_str(t).is_ok()));
        assert_eq!(env["content-type"], "application/json");
        assert_eq!(env["content-encoding"], "utf-8");
        let body = Envelope::decode_body(env);
        assert_eq!(body[0], json!([2, 3]));
        assert_eq!(body[1], json!({}));
        assert!(body[2].is_object(), "embed present: {body}");
        // Minimal headers (`task` and `id` only) also run on Python.
        let min_id = new_id();
        let min = Envelope::with_body(
            json!({"task": "tasks.add", "id": min_id}),
            Envelope::body(&json!([5, 6]), &json!({})).as_bytes(),
            "q",
        );
        case.wire.lpush("q", min.to_string().as_bytes()).await;
        let _w = case.py_worker(&["q"], workers()).await;
        assert_eq!(r.get(WAIT).await.unwrap(), 5);
        assert_eq!(app.result::<i64>(min_id).get(WAIT).await.unwrap(), 11);
        let log = std::fs::read_to_string(_w.log()).unwrap_or_default();
        assert!(
            log.contains(&format!("Task tasks.add[{id}] received")),
            "Python logged the task"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r14_ten_thousand_tasks_four_python_workers() {
    celeriac_interop::harness::each_venv_within(
        "r14_ten_thousand_tasks_four_python_workers",
        Duration::from_secs(240),
        |case| async move {
            const N: usize = 10_000;
            let app = case.app().await;
            let key = case.key("r14");
            let calls = (0..N)
                .map(|i| tasks::track::s(case.url(), key.clone(), i.to_string(), None).queue("q"));
            let sent = app.send_many(calls).await.unwrap();
            assert_eq!(sent.len(), N);
            let envs = case.wire.list("q").await;
            assert_eq!(envs.len(), N, "every message is in the list");
            let tags: std::collections::HashSet<&str> = envs
                .iter()
                .map(|e| {
                    e["properties"]["delivery_tag"]
                        .as_str()
                        .expect("delivery_tag")
                })
                .collect();
            assert_eq!(tags.len(), N, "delivery tags are unique");
            let opts = PyWorkerOptions {
                pool: "solo",
                concurrency: 1,
                ..PyWorkerOptions::default()
            };
            let mut ws = Vec::new();
            for _ in 0..4 {
                ws.push(case.py_worker(&["q"], opts.clone()).await);
            }
            celeriac_interop::harness::wait_for(
                "10 000 executions",
                Duration::from_secs(180),
                || async {
                    let n: usize = case.wire.cmd(redis::cmd("HLEN").arg(&key)).await;
                    (n == N).then_some(())
                },
            )
            .await;
            case.wire.wait_unacked_empty(WAIT).await;
            let counts = case.wire.counts(&key).await;
            let dup: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
            assert!(dup.is_empty(), "tasks run more than once: {dup:?}");
            assert_eq!(case.wire.llen("q").await, 0);
            for r in sent.iter().step_by(997) {
                assert_eq!(r.get(WAIT).await.unwrap(), 1);
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r16_python_result_dialect() {
    each_venv("r16_python_result_dialect", |case| async move {
        let app = case.app().await;
        let v57 = case.venv.name.contains("5.7");
        let env: Vec<(String, String)> = if v57 {
            vec![("CELERY_RESULT_COMPRESSION".to_owned(), "gzip".to_owned())]
        } else {
            Vec::new()
        };
        let _w = case
            .py_worker(
                &["q"],
                PyWorkerOptions {
                    env,
                    ..PyWorkerOptions::default()
                },
            )
            .await;
        // A tagged value sent from Rust is decoded by Python (Decimal) and
        // comes back tagged; with 5.7 the record is also compressed.
        let tagged = json!({"__type__": "decimal", "__value__": "1.50"});
        let r = app
            .send_task("tasks.echo")
            .args(vec![tagged.clone()])
            .queue("q")
            .send()
            .await
            .unwrap();
        assert_eq!(r.get(WAIT).await.unwrap(), json!([[tagged], {}]));
        if v57 {
            let raw: Vec<u8> = case
                .wire
                .cmd(redis::cmd("GET").arg(format!("celery-task-meta-{}", r.id())))
                .await;
            assert!(
                raw.starts_with(b"\x00celery-compressed\x00"),
                "5.7 compressed the record"
            );
        }
        // NaN and Infinity, as Python writes them: a defined outcome.
        let mut py = case.py_client().await;
        let id = py
            .send(
                "tasks.echo",
                json!([{"$py": "float", "value": "nan"}, {"$py": "float", "value": "inf"}]),
                json!({}),
                json!({"queue": "q"}),
            )
            .await;
        let got = app.result::<Value>(id).get(WAIT).await;
        match got {
            Ok(v) => assert_eq!(v[0].as_array().map(Vec::len), Some(2), "value {v}"),
            Err(GetError::Decode(_)) => {}
            other => panic!("NaN result: expected a value or a decode error, got {other:?}"),
        }
        // No key (expired or never stored): PENDING, and get() times out.
        let missing = app.result::<Value>(new_id());
        assert_eq!(missing.state().await.unwrap(), celeriac::TaskState::Pending);
        assert!(matches!(
            missing.get(Duration::from_millis(300)).await,
            Err(GetError::Timeout(_))
        ));
    })
    .await;
}
