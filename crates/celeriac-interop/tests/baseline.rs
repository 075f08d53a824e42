//! The Python fixture against itself: a Python client and a Python worker.
//! If these fail, the venv or the fixture is broken, not celeriac; every
//! other interop test replaces one side with Rust and expects the same.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use celeriac_interop::harness::{each_venv, PyWorkerOptions, WAIT};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py00_python_fixture_against_python_worker() {
    each_venv(
        "py00_python_fixture_against_python_worker",
        |case| async move {
            let _worker = case.py_worker(&["q"], PyWorkerOptions::default()).await;
            let mut py = case.py_client().await;
            let q = json!({"queue": "q"});
            let r = py
                .call("tasks.add", json!([2, 3]), json!({}), q.clone(), WAIT)
                .await;
            assert_eq!(r.value(), &json!(5));
            let r = py
                .call(
                    "tasks.echo",
                    json!([1, "a"]),
                    json!({"k": null}),
                    q.clone(),
                    WAIT,
                )
                .await;
            assert_eq!(r.value(), &json!([[1, "a"], {"k": null}]));
            let r = py
                .call("tasks.fail", json!(["boom"]), json!({}), q.clone(), WAIT)
                .await;
            assert_eq!(r.exception(), ("ValueError", "builtins"));
            assert_eq!(r.exc_args, json!(["boom"]));
            let r = py
                .call(
                    "tasks.fail_custom",
                    json!(["boom"]),
                    json!({}),
                    q.clone(),
                    WAIT,
                )
                .await;
            assert_eq!(r.exception(), ("CustomError", "tasks"));
            let r = py
                .call("tasks.flaky", json!([2]), json!({}), q.clone(), WAIT)
                .await;
            assert_eq!(r.value(), &json!(2));
            let r = py
                .call("tasks.sleep", json!([0.1]), json!({}), q.clone(), WAIT)
                .await;
            assert_eq!(r.value(), &json!(0.1));
            let key = case.key("track");
            let r = py
                .call(
                    "tasks.track",
                    json!([case.url(), key, "m"]),
                    json!({}),
                    q,
                    WAIT,
                )
                .await;
            assert_eq!(r.value(), &json!(1));
            assert_eq!(case.wire.counts(&format!("{key}:by")).await["py"], 1);
            case.wire.wait_unacked_empty(WAIT).await;
        },
    )
    .await;
}
