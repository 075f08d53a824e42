//! celery-protocol.md §12.3: a celeriac worker process survives every
//! malformed message of §10 (Redis rows). Each case pushes one raw envelope
//! with a Redis client, then a valid `tasks.add`; it passes when the worker
//! process is still up, the valid task succeeds, the bad message was not
//! pushed back (no loop), `unacked` holds nothing, and — where an id was
//! readable — the stored state is what §10's "Rust worker MUST" column says.
//!
//! These involve no Python, so they run once (not per venv); they still
//! need Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use celeriac_interop::harness::{each_venv, new_id, Case, Envelope, Monitor, WAIT};
use serde_json::{json, Value};

/// Not a test of its own: the worker process.
#[test]
fn child_worker() {
    celeriac_interop::harness::child_worker_entry();
}

/// Runs `f` once, on the first venv (the case needs only Redis).
async fn once<F, Fut>(case: &str, f: F)
where
    F: Fn(Case) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let first = std::sync::atomic::AtomicBool::new(true);
    let f = &f;
    let first = &first;
    each_venv(case, |c| async move {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            f(c).await;
        }
    })
    .await;
}

/// Pushes `bad`, then a valid add; checks the common pass criteria and
/// returns the stored record of `bad_id` (if any) once the worker is past
/// the bad message.
async fn inject(case: &Case, bad: &[u8], bad_id: Option<&str>) -> Option<Value> {
    let mut worker = case.rust_process(&case.url(), &["q"], 1);
    let monitor = Monitor::start(case.base(), case.db()).await;
    case.wire.lpush("q", bad).await;
    let ok_id = new_id();
    let ok = Envelope::call("tasks.add", &ok_id, json!([20, 22]), json!({}), "q");
    case.wire.lpush("q", ok.to_string().as_bytes()).await;
    let meta = case.wire.wait_meta(&ok_id, "SUCCESS", WAIT).await;
    assert_eq!(meta["result"], 42, "the valid task after the bad one");
    case.wire.wait_unacked_empty(WAIT).await;
    assert_eq!(case.wire.llen("q").await, 0, "nothing left in the queue");
    let pushes = monitor
        .commands()
        .iter()
        .filter(|c| matches!(c.name().as_str(), "LPUSH" | "RPUSH") && c.arg(1) == "q")
        .count();
    assert_eq!(
        pushes, 2,
        "only the test's own two pushes: the bad message was not requeued"
    );
    worker.assert_running();
    let stored = match bad_id {
        Some(id) => case.wire.meta(id).await,
        None => None,
    };
    if let Some(m) = &stored {
        assert_eq!(m["task_id"], bad_id.unwrap_or_default(), "task_id in {m}");
        let status = m["status"].as_str().unwrap_or_default();
        assert_eq!(status, status.to_uppercase(), "status is upper case");
        if status == "FAILURE" || status == "REVOKED" {
            let r = &m["result"];
            assert!(
                r["exc_type"].is_string()
                    && r["exc_module"].is_string()
                    && r["exc_message"].is_array(),
                "well-formed exception: {r}"
            );
        }
    }
    stored
}

fn b64(text: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A valid add envelope with `id`, changed by `edit`.
fn edited(id: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut env = Envelope::call("tasks.add", id, json!([1, 2]), json!({}), "q");
    edit(&mut env);
    env.to_string().into_bytes()
}

/// The stored state must not be SUCCESS (the message was unusable); a
/// FAILURE is fine, nothing stored too.
fn rejected(stored: &Option<Value>) {
    if let Some(m) = stored {
        assert_eq!(m["status"], "FAILURE", "a rejected message: {m}");
    }
}

fn failed_with(stored: &Option<Value>, exc_type: &str) {
    let m = stored
        .as_ref()
        .unwrap_or_else(|| panic!("expected FAILURE {exc_type}, nothing stored"));
    assert_eq!(m["status"], "FAILURE", "{m}");
    assert_eq!(m["result"]["exc_type"], exc_type, "{m}");
}

fn succeeded(stored: &Option<Value>, value: Value) {
    let m = stored
        .as_ref()
        .unwrap_or_else(|| panic!("expected SUCCESS {value}, nothing stored"));
    assert_eq!(m["status"], "SUCCESS", "{m}");
    assert_eq!(m["result"], value, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b01_envelope_not_json() {
    once("b01_envelope_not_json", |case| async move {
        let stored = inject(&case, b"this is {not json", None).await;
        assert!(stored.is_none());
        assert!(
            case.wire.llen("celeriac.dead").await >= 1,
            "kept as a dead letter"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b02_body_not_base64() {
    once("b02_body_not_base64", |case| async move {
        let id = new_id();
        let bad = edited(&id, |e| e["body"] = json!("!!! not base64 ***"));
        rejected(&inject(&case, &bad, Some(&id)).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b03_unknown_body_encoding() {
    once("b03_unknown_body_encoding", |case| async move {
        let id = new_id();
        let bad = edited(&id, |e| e["properties"]["body_encoding"] = json!("rot13"));
        rejected(&inject(&case, &bad, Some(&id)).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b04_no_delivery_tag() {
    once("b04_no_delivery_tag", |case| async move {
        let id = new_id();
        let bad = edited(&id, |e| {
            e["properties"]
                .as_object_mut()
                .unwrap()
                .remove("delivery_tag");
        });
        // Processed with a generated tag, or rejected: never a crash.
        let stored = inject(&case, &bad, Some(&id)).await;
        if let Some(m) = &stored {
            assert!(m["status"] == "SUCCESS" || m["status"] == "FAILURE", "{m}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b05_no_delivery_info() {
    once("b05_no_delivery_info", |case| async move {
        let id = new_id();
        let bad = edited(&id, |e| {
            e["properties"]
                .as_object_mut()
                .unwrap()
                .remove("delivery_info");
        });
        succeeded(&inject(&case, &bad, Some(&id)).await, json!(3));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b06_no_id_header() {
    once("b06_no_id_header", |case| async move {
        let bad = edited("x", |e| {
            e["headers"].as_object_mut().unwrap().remove("id");
            e["properties"]
                .as_object_mut()
                .unwrap()
                .remove("correlation_id");
        });
        assert!(inject(&case, &bad, None).await.is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b07_body_json_invalid() {
    once("b07_body_json_invalid", |case| async move {
        let id = new_id();
        let bad = edited(&id, |e| e["body"] = json!(b64(b"[[1, 2], {")));
        rejected(&inject(&case, &bad, Some(&id)).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b08_body_two_elements() {
    once("b08_body_two_elements", |case| async move {
        let id = new_id();
        let bad = edited(&id, |e| e["body"] = json!(b64(b"[[1, 2], {}]")));
        // §10: reject; store FAILURE (InvalidTaskError) when the id is known.
        let stored = inject(&case, &bad, Some(&id)).await;
        let m = stored.expect("a FAILURE stored for a known id");
        assert_eq!(m["status"], "FAILURE", "{m}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b09_kwargs_not_an_object() {
    once("b09_kwargs_not_an_object", |case| async move {
        let id = new_id();
        let bad = edited(&id, |e| e["body"] = json!(b64(b"[[1, 2], [], {}]")));
        rejected(&inject(&case, &bad, Some(&id)).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b10_wrong_argument_count() {
    once("b10_wrong_argument_count", |case| async move {
        let id = new_id();
        let bad = Envelope::call("tasks.add", &id, json!([1]), json!({}), "q");
        failed_with(
            &inject(&case, bad.to_string().as_bytes(), Some(&id)).await,
            "TypeError",
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b11_unknown_task_name() {
    once("b11_unknown_task_name", |case| async move {
        let id = new_id();
        let bad = Envelope::call("tasks.nope", &id, json!([]), json!({}), "q");
        let stored = inject(&case, bad.to_string().as_bytes(), Some(&id)).await;
        failed_with(&stored, "NotRegistered");
        assert_eq!(stored.unwrap()["result"]["exc_module"], "celery.exceptions");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b12_untrusted_content_type() {
    once("b12_untrusted_content_type", |case| async move {
        for ct in [
            "application/x-python-serialize",
            "application/x-yaml",
            "application/x-unknown",
        ] {
            let id = new_id();
            let bad = edited(&id, |e| e["content-type"] = json!(ct));
            rejected(&inject(&case, &bad, Some(&id)).await);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b15_unparseable_eta() {
    once("b15_unparseable_eta", |case| async move {
        let id = new_id();
        let bad = edited(&id, |e| e["headers"]["eta"] = json!("not-a-date"));
        rejected(&inject(&case, &bad, Some(&id)).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b16_naive_eta_in_the_past() {
    once("b16_naive_eta_in_the_past", |case| async move {
        let id = new_id();
        let bad = edited(&id, |e| e["headers"]["eta"] = json!("2020-01-01T00:00:00"));
        succeeded(&inject(&case, &bad, Some(&id)).await, json!(3));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b17_expires_in_the_past() {
    once("b17_expires_in_the_past", |case| async move {
        let id = new_id();
        let bad = edited(&id, |e| {
            e["headers"]["expires"] = json!("2020-01-01T00:00:00+00:00")
        });
        let m = inject(&case, &bad, Some(&id))
            .await
            .expect("REVOKED stored");
        assert_eq!(m["status"], "REVOKED", "{m}");
        assert_eq!(m["result"]["exc_type"], "TaskRevokedError");
        assert_eq!(m["result"]["exc_message"], json!(["expired"]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b18_minimal_headers_null_retries() {
    once("b18_minimal_headers_null_retries", |case| async move {
        let id = new_id();
        let bad = edited(&id, |e| {
            e["headers"] = json!({"task": "tasks.add", "id": id, "retries": null})
        });
        succeeded(&inject(&case, &bad, Some(&id)).await, json!(3));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b19_protocol_v1_body() {
    once("b19_protocol_v1_body", |case| async move {
        let id = new_id();
        let body = json!({"task": "tasks.add", "id": id, "args": [2, 3], "kwargs": {}, "retries": 0,
                          "eta": null, "expires": null, "utc": true, "callbacks": null,
                          "errbacks": null, "timelimit": [null, null], "taskset": null, "chord": null});
        let bad = Envelope::with_body(json!({}), body.to_string().as_bytes(), "q");
        // Converted (SUCCESS 5) or rejected cleanly (FAILURE).
        let stored = inject(&case, bad.to_string().as_bytes(), Some(&id)).await;
        if let Some(m) = &stored {
            assert!(m["status"] == "FAILURE" || m["result"] == 5, "{m}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b20_object_body_without_task() {
    once("b20_object_body_without_task", |case| async move {
        let bad = Envelope::with_body(json!({}), br#"{"args": [1, 2], "kwargs": {}}"#, "q");
        assert!(inject(&case, bad.to_string().as_bytes(), None)
            .await
            .is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b21_time_limits_from_the_message() {
    once("b21_time_limits_from_the_message", |case| async move {
        for (limit, exc) in [
            (json!([1, null]), "TimeLimitExceeded"),
            (json!([null, 1]), "SoftTimeLimitExceeded"),
        ] {
            let id = new_id();
            let mut h = Envelope::headers("tasks.sleep", &id);
            h["timelimit"] = limit;
            let bad =
                Envelope::with_body(h, Envelope::body(&json!([3]), &json!({})).as_bytes(), "q");
            failed_with(
                &inject(&case, bad.to_string().as_bytes(), Some(&id)).await,
                exc,
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b22_nan_and_infinity_in_the_body() {
    once("b22_nan_and_infinity_in_the_body", |case| async move {
        let id = new_id();
        let body = br#"[[NaN, Infinity, -Infinity], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;
        let mut h = Envelope::headers("tasks.echo", &id);
        h["argsrepr"] = json!("(nan, inf, -inf)");
        let bad = Envelope::with_body(h, body, "q");
        // A lenient parse or a clean FAILURE; never a crash.
        let stored = inject(&case, bad.to_string().as_bytes(), Some(&id)).await;
        let m = stored.expect("an outcome stored");
        assert!(m["status"] == "SUCCESS" || m["status"] == "FAILURE", "{m}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b23_unknown_tagged_type() {
    once("b23_unknown_tagged_type", |case| async move {
        let id = new_id();
        let tagged = json!({"__type__": "nope", "__value__": 1});
        let bad = Envelope::call("tasks.echo", &id, json!([tagged]), json!({}), "q");
        // FAILURE, or passed through as a plain object.
        let m = inject(&case, bad.to_string().as_bytes(), Some(&id))
            .await
            .expect("an outcome stored");
        if m["status"] == "SUCCESS" {
            assert_eq!(m["result"], json!([[tagged], {}]));
        } else {
            assert_eq!(m["status"], "FAILURE", "{m}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b24_duplicate_delivery_tags() {
    once("b24_duplicate_delivery_tags", |case| async move {
        let (a, b) = (new_id(), new_id());
        let tag = new_id();
        let first = edited(&a, |e| e["properties"]["delivery_tag"] = json!(tag));
        let second = edited(&b, |e| e["properties"]["delivery_tag"] = json!(tag));
        case.wire.lpush("q", &first).await;
        let stored = inject(&case, &second, Some(&b)).await;
        succeeded(&stored, json!(3));
        succeeded(&case.wire.meta(&a).await, json!(3));
    })
    .await;
}
