//! celery-protocol.md §12.4 (a Python client reads what the Rust worker
//! writes, for every state, and survives 1000 results in one process), a
//! Python and a Rust worker consuming one queue, a Rust worker process
//! SIGKILLed while Python producers keep sending, and what a killed Rust
//! worker held restored by a Python worker's sweep.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use celeriac_interop::harness::{
    each_venv, each_venv_within, new_id, wait_for, Published, PyWorkerOptions, WAIT,
};
use serde_json::{json, Value};

/// Not a test of its own: the worker processes of the kill test.
#[test]
fn child_worker() {
    celeriac_interop::harness::child_worker_entry();
}

fn q(extra: Value) -> Value {
    let mut o = json!({"queue": "q"});
    for (k, v) in extra.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

/// Checks a record as Python's result consumer needs it (§6.7).
fn well_formed(meta: &Value, id: &str) {
    assert_eq!(meta["task_id"], id, "task_id present: {meta}");
    let status = meta["status"].as_str().expect("status");
    assert_eq!(status, status.to_uppercase());
    if ["FAILURE", "RETRY", "REVOKED"].contains(&status) {
        let r = &meta["result"];
        assert!(
            r["exc_type"].is_string() && r["exc_module"].is_string() && r["exc_message"].is_array(),
            "exception dict: {meta}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_python_client_reads_every_state() {
    each_venv("s01_python_client_reads_every_state", |case| async move {
        let app = case.app().await;
        let _w = case.rust_worker(&app, &["q"], 8);
        let mut py = case.py_client().await;
        let past = (chrono::Utc::now() - chrono::Duration::seconds(10)).to_rfc3339();
        // (task, args, extra options, expected: Ok(value) or Err(exception class))
        let cases: Vec<(&str, Value, Value, Result<Value, &str>)> = vec![
            ("tasks.add", json!([2, 3]), json!({}), Ok(json!(5))),
            ("tasks.fail", json!(["boom"]), json!({}), Err("ValueError")),
            (
                "tasks.fail_custom",
                json!(["boom"]),
                json!({}),
                Err("CustomError"),
            ),
            ("tasks.add", json!([1]), json!({}), Err("TypeError")),
            ("tasks.nope", json!([]), json!({}), Err("NotRegistered")),
            ("tasks.flaky", json!([2]), json!({}), Ok(json!(2))),
            (
                "tasks.sleep_started",
                json!([0.3]),
                json!({}),
                Ok(json!(0.3)),
            ),
            (
                "tasks.add",
                json!([1, 1]),
                json!({"expires": {"$py": "datetime", "value": past}}),
                Err("TaskRevokedError"),
            ),
        ];
        let ids: Vec<String> = cases.iter().map(|_| new_id()).collect();
        let published = Published::subscribe(case.base(), &ids).await;
        for ((task, args, extra, want), id) in cases.iter().zip(&ids) {
            let mut opts = q(extra.clone());
            opts["task_id"] = json!(id);
            let r = py.call(task, args.clone(), json!({}), opts, WAIT).await;
            match want {
                Ok(v) => assert_eq!(r.value(), v, "{task}"),
                Err(exc) => assert_eq!(r.exception().0, *exc, "{task}"),
            }
            let meta = case.wire.meta(id).await.expect("a record");
            well_formed(&meta, id);
            let final_status = meta["status"].as_str().unwrap().to_owned();
            let msgs = published.wait_status(id, &final_status, WAIT).await;
            for m in &msgs {
                well_formed(m, id);
            }
            if *task == "tasks.flaky" {
                assert_eq!(
                    msgs.iter().filter(|m| m["status"] == "RETRY").count(),
                    2,
                    "{msgs:?}"
                );
            }
            if *task == "tasks.sleep_started" {
                assert_eq!(msgs[0]["status"], "STARTED", "{msgs:?}");
                assert!(
                    msgs[0]["result"]["pid"].is_u64() && msgs[0]["result"]["hostname"].is_string()
                );
            }
        }
        let (state, _) = py.state(&new_id()).await;
        assert_eq!(state, "PENDING");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_thousand_results_in_one_python_process() {
    each_venv("s02_thousand_results_in_one_python_process", |case| async move {
        let app = case.app().await;
        let _w = case.rust_worker(&app, &["q"], 16);
        let mut py = case.py_client().await;
        let calls: Vec<Value> = (0..1000).map(|i| json!({"args": [i, i]})).collect();
        let r = py
            .request(
                &json!({"op": "send_many", "task": "tasks.add", "calls": calls, "options": {"queue": "q"}}),
                Duration::from_secs(60),
            )
            .await;
        let ids: Vec<String> = serde_json::from_value(r["ids"].clone()).unwrap();
        let outcomes = py.get_many(&ids, WAIT, Duration::from_secs(90)).await;
        for (i, o) in outcomes.iter().enumerate() {
            assert_eq!(o.value(), &json!(2 * i), "result {i}");
        }
        // The same process still works after them.
        let r = py.call("tasks.add", json!([1, 1]), json!({}), q(json!({})), WAIT).await;
        assert_eq!(r.value(), &json!(2));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m01_python_and_rust_workers_share_a_queue() {
    each_venv_within("m01_python_and_rust_workers_share_a_queue", Duration::from_secs(180), |case| async move {
        const N: usize = 2000;
        let app = case.app().await;
        let _rust = case.rust_worker(&app, &["q"], 8);
        let _py = case.py_worker(&["q"], PyWorkerOptions::default()).await;
        let mut client = case.py_client().await;
        let key = case.key("m01");
        let calls: Vec<Value> = (0..N).map(|i| json!({"args": [case.url(), key, i.to_string()]})).collect();
        let r = client
            .request(
                &json!({"op": "send_many", "task": "tasks.track", "calls": calls, "options": {"queue": "q"}}),
                Duration::from_secs(90),
            )
            .await;
        let ids: Vec<String> = serde_json::from_value(r["ids"].clone()).unwrap();
        assert_eq!(ids.len(), N);
        wait_for("2000 executions", Duration::from_secs(120), || async {
            let n: usize = case.wire.cmd(redis::cmd("HLEN").arg(&key)).await;
            (n == N).then_some(())
        })
        .await;
        case.wire.wait_unacked_empty(WAIT).await;
        let counts = case.wire.counts(&key).await;
        let dup: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
        assert!(dup.is_empty(), "executed more than once: {dup:?}");
        let by = case.wire.counts(&format!("{key}:by")).await;
        assert_eq!(by.values().sum::<i64>(), N as i64, "{by:?}");
        assert!(by.get("py").copied().unwrap_or(0) > 0, "the Python worker took some: {by:?}");
        assert!(by.get("rs").copied().unwrap_or(0) > 0, "the Rust worker took some: {by:?}");
        let outcomes = client.get_many(&ids, WAIT, Duration::from_secs(90)).await;
        assert!(outcomes.iter().all(|o| o.value() == &json!(1)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k01_kill9_rust_worker_while_python_produces() {
    each_venv_within(
        "k01_kill9_rust_worker_while_python_produces",
        Duration::from_secs(180),
        |case| async move {
            const N: usize = 600;
            const CONCURRENCY: usize = 8;
            let url = format!("{}?visibility_timeout=2", case.url());
            let worker = case.rust_process(&url, &["q"], CONCURRENCY);
            let mut client = case.py_client().await;
            let key = case.key("k01");
            let calls: Vec<Value> = (0..N)
                .map(|i| json!({"args": [case.url(), key, i.to_string(), 0.02]}))
                .collect();
            client
                .start(
                    &json!({"op": "send_many", "task": "tasks.track", "calls": calls,
                           "options": {"queue": "q"}, "interval": 0.005}),
                )
                .await;
            // Kill it mid-run, with tasks running and more arriving.
            wait_for("100 executions before the kill", WAIT, || async {
                let n: usize = case.wire.cmd(redis::cmd("HLEN").arg(&key)).await;
                (n >= 100).then_some(())
            })
            .await;
            worker.kill9();
            let killed_at: usize = case.wire.cmd(redis::cmd("HLEN").arg(&key)).await;
            assert!(killed_at < N, "killed while producers were still sending");
            let _again = case.rust_process(&url, &["q"], CONCURRENCY);
            let r = client.reply(Duration::from_secs(60)).await;
            let ids: Vec<String> = serde_json::from_value(r["ids"].clone()).unwrap();
            assert_eq!(ids.len(), N);
            let outcomes = client.get_many(&ids, WAIT, Duration::from_secs(120)).await;
            for o in &outcomes {
                assert_eq!(o.state, "SUCCESS", "{o:?}");
                assert!(o.value().as_i64().is_some_and(|n| n >= 1));
            }
            for id in &ids {
                let meta = case.wire.meta(id).await.expect("one record per task");
                assert_eq!(meta["status"], "SUCCESS");
            }
            case.wire.wait_unacked_empty(WAIT).await;
            let counts = case.wire.counts(&key).await;
            assert_eq!(counts.len(), N, "every task ran");
            let extra: i64 = counts.values().map(|c| c - 1).sum();
            // At-least-once: only what was in flight at the kill may run twice.
            assert!(extra <= 4 * CONCURRENCY as i64, "{extra} extra executions");
            celeriac_conformance::service::note(&format!(
                "k01 on {}: killed after {killed_at} executions; {extra} ran twice",
                case.venv.name
            ));
        },
    )
    .await;
}

/// K2. A celeriac worker process dies (SIGKILL) holding messages; no Rust
/// worker comes back. A Python worker started once the dead worker's
/// leases have ended restores them with kombu's own sweep (celeriac files
/// each attempt under `celeriac:<token>` as `[envelope, "", queue]`, which
/// kombu's restore sends back to that queue) and runs every task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k02_python_sweep_restores_what_a_killed_rust_worker_held() {
    each_venv_within(
        "k02_python_sweep_restores_what_a_killed_rust_worker_held",
        Duration::from_secs(180),
        |case| async move {
            const N: usize = 40;
            let url = format!("{}?visibility_timeout=2", case.url());
            let worker = case.rust_process(&url, &["q"], 4);
            let mut client = case.py_client().await;
            let key = case.key("k02");
            let calls: Vec<Value> = (0..N)
                .map(|i| json!({"args": [case.url(), key, i.to_string(), 0.5]}))
                .collect();
            let r = client
                .request(
                    &json!({"op": "send_many", "task": "tasks.track", "calls": calls,
                           "options": {"queue": "q"}}),
                    Duration::from_secs(60),
                )
                .await;
            let ids: Vec<String> = serde_json::from_value(r["ids"].clone()).unwrap();
            assert_eq!(ids.len(), N);
            wait_for("the Rust worker to hold messages", WAIT, || async {
                let tags: Vec<String> = case.wire.cmd(redis::cmd("HKEYS").arg("unacked")).await;
                (tags.len() >= 8 && tags.iter().all(|t| t.starts_with("celeriac:"))).then_some(())
            })
            .await;
            worker.kill9();
            let held = case.wire.unacked().await;
            let entries = case.wire.unacked_entries().await;
            assert!(
                entries.iter().all(|e| e[1] == "" && e[2] == "q"),
                "kombu's restore routes them back to q: {entries:?}"
            );
            // Its leases (2 s) end; then the Python worker's start-up sweep
            // (visibility timeout 2 s) takes them back.
            wait_for("the dead worker's leases to end", WAIT, || async {
                let now: (String, String) = case.wire.cmd(&redis::cmd("TIME")).await;
                let now: f64 = now.0.parse::<f64>().unwrap();
                let last: Vec<(String, f64)> = case
                    .wire
                    .cmd(
                        redis::cmd("ZRANGE")
                            .arg("unacked_index")
                            .arg(-1)
                            .arg(-1)
                            .arg("WITHSCORES"),
                    )
                    .await;
                last.iter().all(|(_, s)| s + 2.0 < now).then_some(())
            })
            .await;
            let env = vec![("CELERY_VISIBILITY_TIMEOUT".to_owned(), "2".to_owned())];
            let _py = case
                .py_worker(
                    &["q"],
                    PyWorkerOptions {
                        env,
                        concurrency: 4,
                        ..PyWorkerOptions::default()
                    },
                )
                .await;
            let outcomes = client.get_many(&ids, WAIT, Duration::from_secs(120)).await;
            for o in &outcomes {
                assert_eq!(o.state, "SUCCESS", "{o:?}");
            }
            case.wire.wait_unacked_empty(WAIT).await;
            let counts = case.wire.counts(&key).await;
            assert_eq!(counts.len(), N, "every task ran");
            let by = case.wire.counts(&format!("{key}:by")).await;
            assert!(
                by.get("py").copied().unwrap_or(0) >= i64::try_from(held).unwrap_or(0) - 4,
                "the Python worker ran what the dead worker held ({held}): {by:?}"
            );
            celeriac_conformance::service::note(&format!(
                "k02 on {}: {held} held at the kill, restored by Python; runs by worker {by:?}",
                case.venv.name
            ));
        },
    )
    .await;
}
